"""The dev stack's embedded broker keeps every topic in memory (the Tansu build it ships
has no disk storage engine): when it dies and comes back empty under running services,
every service says so on /healthz, `ctrain dev status` says so with the command that
recovers, and `ctrain dev reset` brings the stack back to a consistent state."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from ctrain import cli, devstack
from ctrain.commands import common as cli_common
from ctrain.demo import BUNDLED
from ctrain.replay import read_table, replay
from shared.settings import CommonSettings
from tests.poll import until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _healthz(address: str) -> tuple[int, str]:
    try:
        r = httpx.get(f"{address}/healthz", timeout=5)
    except httpx.HTTPError as e:
        return 0, type(e).__name__
    return r.status_code, str(r.json().get("reason", ""))


def _services(state: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["address"] for p in state["procs"] if p["name"] in devstack.SERVICES}


def _until(what: str, timeout: float, ok: Any) -> Any:
    # Once a second: readiness is checked every 5 s.
    return until(ok, timeout, what, interval=1.0)


@pytest.mark.timeout(900)
def test_a_dev_broker_that_comes_back_empty_is_noticed_and_reset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CTRAIN_DEV_STATE_DIR", str(tmp_path / "dev"))
    screen = io.StringIO()
    monkeypatch.setattr(cli_common, "console", Console(file=screen, width=300))
    state = devstack.up(echo=lambda m: None)
    try:
        services = _services(state)
        _until(
            "every service healthy",
            180,
            lambda: all(_healthz(a)[0] == 200 for a in services.values()),
        )
        trips = read_table(BUNDLED).slice(0, 500)
        common = CommonSettings(kafka_bootstrap=state["kafka"], kafka_idempotent=False)
        asyncio.run(replay(common, trips, time_column="trip_start_timestamp"))
        kafka = next(p for p in state["procs"] if p["name"] == "kafka")
        os.kill(kafka["pid"], signal.SIGKILL)
        _until("the broker reaped", 30, lambda: not devstack.Proc(**kafka).alive())
        devstack.restart_kafka()
        t0 = time.monotonic()

        def all_say_so() -> dict[str, tuple[int, str]] | None:
            got = {n: _healthz(a) for n, a in services.items()}
            return got if all(c == 503 and "lost its data" in w for c, w in got.values()) else None

        said = _until("every service to notice the empty broker", 120, all_say_so)
        noticed = time.monotonic() - t0
        assert all("ctrain dev reset" in why for _, why in said.values()), said
        assert cli.main(["dev", "status"]) == 1
        assert "LOST ITS DATA: run `ctrain dev reset`" in screen.getvalue()
        print(f"\nevery service said the broker lost its data within {noticed:.1f} s: {said}")

        assert cli.main(["dev", "reset"]) == 0
        state = devstack.load_state()
        assert state is not None
        services = _services(state)
        _until(
            "every service healthy after the reset",
            180,
            lambda: all(_healthz(a)[0] == 200 for a in services.values()),
        )
        assert all(ok for _, _, ok in devstack.status()), devstack.status()
        assert not (tmp_path / "dev" / "artifacts" / "windows").exists()
    finally:
        devstack.down(echo=lambda m: None)
