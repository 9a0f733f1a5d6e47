"""Prometheus helpers. Every service owns a registry; nothing is global."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

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


class Readiness:
    """What ``/healthz`` answers, also kept in ``ctrain_<service>_ready``: an outage shows
    in the metrics while it lasts (refreshed on a timer), not only when someone probes."""

    def __init__(
        self,
        registry: CollectorRegistry,
        service: str,
        check: Callable[[], Awaitable[str | None]],
    ) -> None:
        from prometheus_client import Gauge

        self.gauge = Gauge(
            f"{PREFIX}{service}_ready",
            "1 when the service can do its work now (its /healthz answers 200); 0 while a "
            "dependency (Redis, the broker, serving) does not answer",
            registry=registry,
        )
        self.gauge.set(1)
        self.check = check

    async def __call__(self) -> str | None:
        """None when ready, else why not; the gauge follows."""
        why = await self.check()
        self.gauge.set(0 if why else 1)
        return why
