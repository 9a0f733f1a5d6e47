"""The shell every service shares: its error body, outages and a lost lease as 503."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.lease import Fenced
from shared.serve import service_routes

pytestmark = pytest.mark.unit


class Boom(Exception):
    status_code = 409


def app_raising(exc: Exception) -> TestClient:
    app = FastAPI()

    async def ready() -> str | None:
        return None

    service_routes(app, CollectorRegistry(), ready, Boom)

    @app.get("/act")
    async def act() -> None:
        raise exc

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize(
    ("exc", "status", "error"),
    [
        (Boom("candidate c1 is rejected"), 409, "Boom"),
        (RedisConnectionError("connection refused"), 503, "DependencyUnavailable"),
        # The lease moved while the replica acted (a deposed leader): retry, not a 500.
        (Fenced("the lease of 'm' moved to another replica"), 503, "NotLeader"),
    ],
)
def test_errors_map_to_their_status_with_a_body_that_says_why(
    exc: Exception, status: int, error: str
) -> None:
    r = app_raising(exc).get("/act")
    assert r.status_code == status
    body = r.json()
    assert body["error"] == error and str(exc) in body["detail"]


def test_the_shell_serves_liveness_readiness_and_metrics() -> None:
    c = app_raising(Boom("x"))
    assert c.get("/livez").json() == {"status": "alive"}
    assert c.get("/healthz").json() == {"status": "ok"}
    assert c.get("/metrics").status_code == 200
