"""Running real ingest processes against a real broker, and reading topics back."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from shared.events import DeadLetter, WindowClosed, parse_event
from shared.kafka import read_to_end
from tests.conftest import ROOT, TAXI_SCHEMA


def free_port() -> int:
    from ctrain.devstack import free_port as below_the_ephemeral_range

    return below_the_ephemeral_range()


@dataclass
class ServiceProc:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def wait_healthy(self, timeout: float = 120, path: str = "/healthz") -> None:
        """Until ``path`` answers 200 (``/livez`` where a dependency is down on purpose)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                if httpx.get(f"{self.url}{path}", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # probe interval, not a readiness wait
        raise AssertionError(f"not healthy after {timeout}s:\n{self.log.read_text()[-3000:]}")


def ingest_env(kafka: str, redis_url: str, root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTRAIN_")}
    env.update(
        CTRAIN_KAFKA_BOOTSTRAP=kafka,
        CTRAIN_REDIS_URL=redis_url,
        CTRAIN_ARTIFACT_ROOT=str(root / "artifacts"),
        CTRAIN_SCHEMA=str(TAXI_SCHEMA),
        CTRAIN_KAFKA_IDEMPOTENT="false",
        CTRAIN_LOG_JSON="true",
        CTRAIN_INGEST_STREAM="taxi",
        CTRAIN_INGEST_EVENT_TIME_FIELD="trip_start_timestamp",
    )
    env.update(extra)
    return env


# Every service a test starts; tests/conftest.py stops what a failed test left running.
RUNNING: list[subprocess.Popen[bytes]] = []


def stop_leftovers() -> None:
    for proc in RUNNING:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    RUNNING.clear()


def start_service(name: str, env: dict[str, str], log: Path) -> ServiceProc:
    port = free_port()
    env = {**env, f"CTRAIN_{name.upper()}_HTTP_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", f"services.{name}"],
        env=env,
        cwd=ROOT,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
    )
    RUNNING.append(proc)
    return ServiceProc(proc, f"http://127.0.0.1:{port}", log)


def start_ingest(env: dict[str, str], log: Path) -> ServiceProc:
    return start_service("ingest", env, log)


async def read_topic(bootstrap: str, topic: str) -> list[object]:
    """Every event on ``topic`` from the beginning up to its current end offsets."""
    return [parse_event(r.value) for r in await read_to_end(bootstrap, topic)]


def windows_and_dlq(
    kafka: str, done: object, timeout: float
) -> tuple[list[WindowClosed], list[DeadLetter]]:
    """Re-read both topics until ``done(windows, dlq)`` holds or ``timeout`` passes."""

    async def go() -> tuple[list[WindowClosed], list[DeadLetter]]:
        deadline = time.monotonic() + timeout
        while True:
            windows = [
                w
                for w in await read_topic(kafka, "ctrain.windows")
                if isinstance(w, WindowClosed)  # not ingest's partition-idle notices
            ]
            dlq = await read_topic(kafka, "ctrain.examples.dlq")
            if done(windows, dlq) or time.monotonic() > deadline:  # type: ignore[operator]
                return windows, dlq  # type: ignore[return-value]
            await asyncio.sleep(0.5)  # poll interval between full re-reads

    return asyncio.run(go())


def conserved_windows(
    kafka: str, produced: int, timeout: float, label: str = ""
) -> list[WindowClosed]:
    """docs/architecture.md §4 read back from the topics: wait until windows + dead letters account for
    ``produced``, then assert no window id has two contents and nothing is counted
    twice or lost. Returns the windows."""

    def done(windows: list[WindowClosed], dlq: list[DeadLetter]) -> bool:
        counts = {w.window_id: w.example_count for w in windows}
        return sum(counts.values()) + len({d.id for d in dlq}) >= produced

    windows, dlq = windows_and_dlq(kafka, done, timeout)
    contents: dict[str, tuple[str, int]] = {}
    for w in windows:
        first = contents.setdefault(w.window_id, (w.sha256, w.example_count))
        assert first == (w.sha256, w.example_count), f"{w.window_id} published with two contents"
    in_windows = sum(c for _, c in contents.values())
    dead = len({d.id for d in dlq})
    assert in_windows + dead == produced, (
        f"{label}windows {in_windows} + dlq {dead} != produced {produced}"
    )
    return windows
