"""Fixtures: real servers on free ports, ready when a probe says so (never a sleep)."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TAXI_CSV = ROOT / "examples" / "taxi" / "data" / "taxi_2013_2014.csv"
TAXI_SCHEMA = ROOT / "examples" / "taxi" / "data" / "schema.pbtxt"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's CTRAIN_* variables must not leak into tests."""
    for k in list(os.environ):
        if k.startswith("CTRAIN_"):
            monkeypatch.delenv(k)


@pytest.fixture(autouse=True)
def _no_leftover_services() -> Iterator[None]:
    """A failed test must not leave its service processes running."""
    yield
    from tests.integration.support import stop_leftovers

    stop_leftovers()


@pytest.fixture
def kafka(tmp_path: Path) -> Iterator[str]:
    """A fresh Tansu broker (memory storage) per test: topics start empty."""
    from ctrain.devstack import start_tansu

    proc = start_tansu(tmp_path)
    try:
        yield proc.address
    finally:
        _kill(proc.pid)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from ctrain.devstack import start_redis

    proc = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield proc.address
    finally:
        _kill(proc.pid)


@pytest.fixture
def empty_redis_url(redis_url: str) -> str:
    """The session's Redis with its database emptied first: for a test whose services
    would read what an earlier test left (a promoter reads every model's layout)."""
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_url).flushdb()
    return redis_url


@pytest.fixture
def redis(empty_redis_url: str) -> Any:
    """An asyncio client of the emptied database, for the test's one event loop."""
    from redis.asyncio import Redis

    return Redis.from_url(empty_redis_url)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


@pytest.fixture
def python() -> str:
    return sys.executable


def run_ctrain(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "ctrain.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


# The kind of test each folder holds: every test carries its folder's marker (deploy
# tests render or start real tools and say which kind they are).
KINDS = {"unit": "unit", "integration": "integration", "e2e": "e2e"}


def unmarked(items: list[pytest.Item]) -> list[str]:
    """Tests without their folder's kind marker (or, in tests/deploy, without any kind)."""
    out = []
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        have = {m.name for m in item.iter_markers()}
        want = {KINDS[folder]} if folder in KINDS else set(KINDS.values())
        if not have & want:
            out.append(item.nodeid)
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`-m unit` must select every unit test: one without its kind is an error."""
    missing = unmarked(items)
    if missing:
        raise pytest.UsageError(f"tests without their kind marker: {', '.join(missing[:10])}")


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Keep the interpreter's last garbage collection off the objects the tests made.

    Tests run TensorFlow Transform, Keras and TFMA in this process; collecting their
    objects after TensorFlow's runtime is torn down crashed the interpreter at exit
    (SIGSEGV in "Garbage-collecting", after every test passed; reproduced with
    bench/promoter.py's in-process training). Frozen objects are left to the process's
    end; the exit is the interpreter's own, so any other crash still shows.
    """
    gc.freeze()
