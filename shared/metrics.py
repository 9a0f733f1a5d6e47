"""Prometheus helpers. Every service owns a registry; nothing is global."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import Response

PREFIX = "ctrain_"


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


def metrics_endpoint(registry: CollectorRegistry):  # type: ignore[no-untyped-def]
    """A Starlette/FastAPI route handler serving ``registry`` in text format."""

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics
