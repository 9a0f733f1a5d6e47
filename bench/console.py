"""The console's load time with 200 windows and 50 features, in a real browser.

The promoter's real app serves the page and its read proxy (uvicorn, no lifespan:
nothing here needs Kafka or Redis); the validator and trigger behind it answer with
200 periods x 50 features x (drift, skew) in the validator's own format, generated
here. Timed: sign-in to the heat map drawn (the page's load as an operator sees it),
and a live refresh. Baseline in the same run: the same page fetching the same JSON
through the same proxy without drawing it. Medians of --repeat.

    uv run python bench/console.py [--windows 200] [--features 50] [--repeat 5]
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import uvicorn
from fastapi import FastAPI

from ctrain.commands.console import browser
from services.promoter.app import create_app
from services.promoter.settings import PromoterSettings
from shared.settings import CommonSettings

TOKEN = "bench-viewer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def upstream(n_windows: int, n_features: int) -> FastAPI:
    rng = random.Random(7)
    t0 = datetime(2020, 1, 1, tzinfo=UTC)
    periods = []
    for i in range(n_windows):
        dists = []
        for f in range(n_features):
            for kind in ("drift", "skew"):
                thr = 0.1 if f % 2 else 0.06
                v = abs(rng.gauss(0.04, 0.03))
                dists.append(
                    {
                        "feature": f"feature_{f:02d}",
                        "kind": kind,
                        "measure": "linf" if f % 2 else "jensen_shannon",
                        "value": v,
                        "threshold": thr,
                        "crossed": v > thr,
                    }
                )
        periods.append(
            {
                "window_id": f"period-{i:04d}",
                "start": (t0 + timedelta(days=7 * i)).isoformat(),
                "end": (t0 + timedelta(days=7 * i + 7)).isoformat(),
                "example_count": rng.randint(500, 5000),
                "verdict": "drift" if any(d["crossed"] for d in dists) else "ok",
                "anomalies": [],
                "distances": dists,
                "members": [f"win-{i:04d}"],
            }
        )
    periods.reverse()  # newest first, as the validator answers
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"models": [{"model": "bench", "stream": "bench", "module": "m.py"}]}

    @app.get("/v1/periods")
    async def list_periods(stream: str, limit: int = 20) -> dict[str, Any]:
        return {"stream": stream, "periods": periods[:limit]}

    return app


def serve(app: Any, port: int) -> uvicorn.Server:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)  # uvicorn's own start flag, polled
    return server


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=200)
    ap.add_argument("--features", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    up_port, port = free_port(), free_port()
    serve(upstream(a.windows, a.features), up_port)
    base = f"http://127.0.0.1:{up_port}"
    settings = PromoterSettings(
        tokens=f'{{"{TOKEN}": {{"identity": "bench", "role": "viewer"}}}}',
        validator_url=base,
        trigger_url=base,
    )
    serve(create_app(CommonSettings(), settings), port)
    url = f"http://127.0.0.1:{port}/"
    loads, refreshes, fetches = [], [], []
    with browser() as b:
        for _ in range(a.repeat):
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            t = time.perf_counter()
            page.goto(url)
            page.fill("#token", TOKEN)
            page.press("#token", "Enter")
            page.wait_for_selector("#heatmap table.heat", timeout=120_000)
            loads.append(time.perf_counter() - t)
            cells = page.locator("#heatmap td.cell").count()
            # A live refresh redraws it all (what the page does every few seconds).
            refreshes.append(
                page.evaluate(
                    """async () => { const t = performance.now(); await refresh();
                       return (performance.now() - t) / 1000; }"""
                )
            )
            fetches.append(
                page.evaluate(
                    """async (n) => { const t = performance.now();
                       await api(`/console/api/validator/v1/periods?stream=bench&limit=${n}`);
                       return (performance.now() - t) / 1000; }""",
                    a.windows,
                )
            )
            page.close()
    load, refresh, fetch = (statistics.median(x) for x in (loads, refreshes, fetches))
    print(f"console, {a.windows} windows x {a.features} features ({cells} heat-map cells)")
    print(f"  page load to heat map (sign-in included): median {load:.2f} s  {loads}")
    print(f"  live refresh (fetch + redraw):             median {refresh:.3f} s")
    print(f"  baseline, the same JSON fetched only:      median {fetch:.3f} s")
    print(f"  refresh / fetch ratio: {refresh / fetch:.1f}x")


if __name__ == "__main__":
    main()
