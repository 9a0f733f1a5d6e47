"""The console page in a real browser (Debian's chromium) against the promoter's real app
and read proxy, with the validator and trigger behind it answering in their own format:
the page raises no script error and no CSP violation, an expired token is refused with
its reason, a viewer's heat map draws every cell, and a cell opens its feature from the
keyboard. (The whole loop in the browser is tests/e2e/test_console.py.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from ctrain.commands.console import browser
from services.promoter.app import create_app
from services.promoter.settings import PromoterSettings
from shared.settings import CommonSettings
from tests.integration.support import free_port

pytestmark = pytest.mark.integration
TOKENS = (
    '{"view": {"identity": "vera", "role": "viewer"},'
    ' "old": {"identity": "olga", "role": "approver", "expires": "2020-01-01T00:00:00+00:00"}}'
)
WINDOWS, FEATURES = 40, 12


def upstream() -> FastAPI:
    periods = []
    for i in range(WINDOWS):
        dists = [
            {
                "feature": f"f{f:02d}",
                "kind": kind,
                "measure": "linf",
                "value": 0.2 if (f == 3 and kind == "skew" and i % 4 == 0) else 0.01,
                "threshold": 0.1,
                "crossed": f == 3 and kind == "skew" and i % 4 == 0,
            }
            for f in range(FEATURES)
            for kind in ("drift", "skew")
        ]
        periods.append(
            {
                "window_id": f"period-{i:03d}",
                "start": f"2024-{1 + i // 28:02d}-{1 + i % 28:02d}T00:00:00+00:00",
                "end": None,
                "example_count": 1000 + i,
                "verdict": "skew" if i % 4 == 0 else "ok",
                "anomalies": [],
                "distances": dists,
                "members": [f"win-{i:03d}"],
            }
        )
    periods.reverse()
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"models": [{"model": "m", "stream": "s", "module": "m.py"}]}

    @app.get("/v1/periods")
    async def list_periods(stream: str, limit: int = 20) -> dict[str, Any]:
        return {"stream": stream, "periods": periods[:limit]}

    @app.get("/v1/windows/{wid}/features/{name}")
    async def feature(wid: str, name: str, baseline: str = "drift") -> dict[str, Any]:
        side = {"summary": {"present": "10"}, "histogram": [], "categories": {"a": 0.7, "b": 0.3}}
        return {
            "window_id": wid,
            "baseline_id": "base-x",
            "feature": name,
            "kind": "categorical",
            "window": side,
            "baseline": {**side, "categories": {"a": 0.4, "b": 0.6}},
        }

    return app


def serve(app: Any) -> tuple[uvicorn.Server, str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)  # uvicorn's own start flag, polled
    assert server.started
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture()
def console() -> Iterator[str]:
    up, up_url = serve(upstream())
    settings = PromoterSettings(tokens=TOKENS, validator_url=up_url, trigger_url=up_url)
    promoter, url = serve(create_app(CommonSettings(), settings))
    yield url + "/"
    promoter.should_exit = up.should_exit = True


def test_the_page_runs_under_its_csp_and_refuses_an_expired_token(console: str) -> None:
    problems: list[str] = []
    with browser() as b:
        page = b.new_page()
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on(
            "console",
            lambda m: (
                problems.append(m.text) if m.type == "error" and "401" not in m.text else None
            ),
        )
        page.goto(console)
        page.fill("#token", "old")
        page.press("#token", "Enter")
        page.wait_for_selector("#message:not([hidden])")
        msg = page.inner_text("#message")
        assert "That token was refused" in msg and "olga expired at 2020-01-01" in msg
        assert page.locator("#app").is_hidden()
        # A viewer: every cell drawn, the crossed ones marked, coloured through the CSSOM.
        page.fill("#token", "view")
        page.press("#token", "Enter")
        page.wait_for_selector("#heatmap table.heat")
        assert page.locator("#heatmap td.cell").count() == WINDOWS * FEATURES
        crossed = page.locator("#heatmap tr[data-feature=f03] td.crossed")
        assert crossed.count() == WINDOWS // 4
        color = crossed.first.evaluate("td => getComputedStyle(td).backgroundColor")
        assert color not in ("", "rgba(0, 0, 0, 0)"), color
        # The keyboard opens a feature: Tab reaches the cells, Enter opens one.
        crossed.first.focus()
        page.keyboard.press("Enter")
        page.wait_for_selector("#feature-card svg")
        assert "f03 in period-" in page.inner_text("#feature-card")
        assert "skew baseline: base-x" in page.inner_text("#feature-card")
        # The token lives in this tab's session storage only, never in the URL.
        assert page.evaluate("sessionStorage.getItem('ctrain.token')") == "view"
        assert "view" not in page.url
    assert problems == [], problems
