"""Every service's /docs works without a network: Swagger UI is served by the app."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("service", ["ingest", "validator", "trigger", "promoter", "monitor"])
def test_docs_page_and_its_assets_come_from_the_service(
    service: str, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    import importlib

    from tests.conftest import ROOT

    monkeypatch.setenv("CTRAIN_CONFIG", str(ROOT / "examples/taxi/ctrain.yaml"))
    monkeypatch.setenv("CTRAIN_ARTIFACT_ROOT", str(tmp_path))
    monkeypatch.setenv("CTRAIN_PROMOTER_TOKENS", '{"t": {"identity": "a", "role": "viewer"}}')
    app_mod = importlib.import_module(f"services.{service}.app")
    settings_mod = importlib.import_module(f"services.{service}.settings")
    common, settings = settings_mod.load_settings()
    app = app_mod.create_app(common, settings)
    client = TestClient(app)  # no lifespan: nothing connects
    page = client.get("/docs")
    assert page.status_code == 200
    srcs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert srcs and all(s.startswith("/") for s in srcs), srcs  # nothing from elsewhere
    assert "cdn" not in page.text.lower()
    for src in srcs:
        asset = client.get(src)
        assert asset.status_code == 200 and len(asset.content) > 100, src
    assert client.get("/openapi.json").json()["info"]["title"].startswith(f"ctrain {service}")
    assert client.get("/redoc").status_code == 404
