"""The console's page, assets, identity and read proxy, on the promoter's real app.

The upstream services are real ASGI apps reached through httpx's ASGI transport (the
browser tests in tests/e2e/test_console.py drive the same routes over sockets).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.promoter.app import create_app
from services.promoter.console import CSP, Upstreams
from services.promoter.settings import PromoterSettings
from shared.settings import CommonSettings
from tests.conftest import ROOT

pytestmark = pytest.mark.unit
TOKENS = (
    '{"v": {"identity": "vera", "role": "viewer"}, "a": {"identity": "al", "role": "approver"},'
    ' "old": {"identity": "olga", "role": "approver", "expires": "2020-01-01T00:00:00+00:00"}}'
)


def client(tmp_path: Path, upstream: FastAPI | None = None, **settings: Any) -> TestClient:
    common = CommonSettings(
        config_path=str(ROOT / "examples/taxi/ctrain.yaml"), artifact_root=str(tmp_path)
    )
    app = create_app(common, PromoterSettings(tokens=TOKENS, **settings))
    if upstream is not None:
        ups: Upstreams = app.state.upstreams
        ups.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=upstream))
    return TestClient(app)  # no lifespan: nothing connects


def test_the_page_and_its_assets_come_from_the_promoter_under_a_strict_csp(
    tmp_path: Path,
) -> None:
    c = client(tmp_path)
    page = c.get("/")
    assert page.status_code == 200 and "ctrain console" in page.text
    assert page.headers["content-security-policy"] == CSP
    assert "connect-src 'self'" in CSP and "script-src 'self'" in CSP
    assert "unsafe-inline" not in CSP
    assert page.headers["x-frame-options"] == "DENY"
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and all(r.startswith("/console/assets/") or r == "data:," for r in refs), refs
    assert "<script>" not in page.text and " style=" not in page.text  # nothing inline
    for ref in refs:
        if ref.startswith("/"):
            asset = c.get(ref)
            assert asset.status_code == 200 and len(asset.content) > 1000, ref
            assert asset.headers["content-security-policy"] == CSP
    js = c.get("/console/assets/console.js").text
    assert "http://" not in js.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in js
    # The console's routes stay out of the approval API's OpenAPI document.
    paths = c.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/console")]


def test_whoami_names_the_role_and_refuses_bad_tokens_clearly(tmp_path: Path) -> None:
    c = client(tmp_path)
    assert c.get("/console/whoami", headers={"Authorization": "Bearer v"}).json() == {
        "identity": "vera",
        "role": "viewer",
        "expires": None,
    }
    none = c.get("/console/whoami")
    assert none.status_code == 401 and "missing bearer token" in none.json()["detail"]
    wrong = c.get("/console/whoami", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "unknown bearer token"
    old = c.get("/console/whoami", headers={"Authorization": "Bearer old"})
    assert old.status_code == 401 and "olga expired at 2020-01-01" in old.json()["detail"]
    # An expired token is refused by the API itself too, not only by the page.
    assert c.get("/v1/audit", headers={"Authorization": "Bearer old"}).status_code == 401


def test_the_proxy_forwards_reads_with_a_viewer_token_only(tmp_path: Path) -> None:
    upstream = FastAPI()
    seen: list[str] = []

    @upstream.get("/v1/windows")
    async def windows(stream: str, limit: int = 20) -> dict[str, Any]:
        seen.append(f"{stream}:{limit}")
        return {"stream": stream, "windows": []}

    @upstream.get("/v1/windows/{wid}")
    async def window(wid: str) -> Any:
        from fastapi.responses import JSONResponse

        return JSONResponse({"error": "UnknownWindow", "detail": f"window {wid!r}"}, 404)

    c = client(tmp_path, upstream, validator_url="http://validator:8082")
    h = {"Authorization": "Bearer v"}
    ok = c.get("/console/api/validator/v1/windows?stream=taxi&limit=200", headers=h)
    assert ok.status_code == 200 and ok.json() == {"stream": "taxi", "windows": []}
    assert seen == ["taxi:200"]
    assert ok.headers["content-security-policy"] == CSP
    missing = c.get("/console/api/validator/v1/windows/win-x", headers=h)
    assert missing.status_code == 404 and missing.json()["detail"] == "window 'win-x'"
    assert c.get("/console/api/validator/v1/windows?stream=taxi").status_code == 401
    # Reads of /v1 only, of the three services only.
    assert c.get("/console/api/validator/metrics", headers=h).status_code == 404
    assert c.get("/console/api/validator/v1/../metrics", headers=h).status_code == 404
    other = c.get("/console/api/redis/v1/x", headers=h)
    assert other.status_code == 404 and "not 'redis'" in other.json()["detail"]
    assert c.post("/console/api/validator/v1/windows", headers=h).status_code == 405


def test_an_unconfigured_or_unreachable_service_is_named(tmp_path: Path) -> None:
    h = {"Authorization": "Bearer v"}
    c = client(tmp_path)
    r = c.get("/console/api/monitor/v1/quality", headers=h)
    assert r.status_code == 503 and "CTRAIN_PROMOTER_MONITOR_URL" in r.json()["detail"]
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connection refused
        c = client(tmp_path, trigger_url=f"http://127.0.0.1:{port}")
        r = c.get("/console/api/trigger/v1/models", headers=h)
    assert r.status_code == 502
    assert f"the trigger at http://127.0.0.1:{port} did not answer" in r.json()["detail"]


def test_a_token_with_a_malformed_expiry_is_refused_at_start() -> None:
    from services.promoter.auth import TokenBook

    with pytest.raises(ValueError, match="is not an ISO 8601 time"):
        TokenBook({"x": {"identity": "eve", "role": "viewer", "expires": "soon"}})
