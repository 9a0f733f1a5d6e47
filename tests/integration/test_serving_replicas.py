"""Serving at several replicas: the promoter's one client over every model server.

Two real model servers (``python -m ctrain.modelserver``, the TF-Serving stand-in)
serve a tiny real SavedModel. A config is applied to both (and written to the file
they read at start); a version is AVAILABLE only when both say so; a label reads as
the version both agree on; a replica restarted with an older config is found behind
and brought to the layout by the promoter, which reports not-ready meanwhile.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import text_format
from redis.asyncio import Redis
from tensorflow_serving.config import model_server_config_pb2

from services.promoter.core import Promoter, PromoterConfig
from services.promoter.serving import ModelLayout, ServingFleet, replicas
from tests.conftest import ROOT
from tests.integration.support import free_port
from tests.integration.test_modelserver import (
    MODEL,
    WEIGHTS,
    _save_tiny_model,
    _spawn,
    _wait_ready,
    config_text,
    example,
)

pytestmark = pytest.mark.integration


@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    grpc_port: int
    rest_port: int
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def start(config: Path, work: Path, name: str, grpc_port: int | None = None) -> Replica:
    grpc_port, rest_port = grpc_port or free_port(), free_port()
    log = work / f"{name}.log"
    proc = _spawn(
        [
            f"--model_config_file={config}",
            f"--port={grpc_port}",
            f"--rest_api_port={rest_port}",
            "--bind_address=127.0.0.1",
            # A startup config names labels (the layout it restarts with), as TF Serving
            # allows with this flag.
            "--allow_version_labels_for_unavailable_models",
        ],
        log,
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    try:
        _wait_ready(proc, f"http://127.0.0.1:{rest_port}", channel, log)
    finally:
        channel.close()
    return Replica(proc, grpc_port, rest_port, log)


def stop(r: Replica, sig: int = signal.SIGTERM) -> None:
    if r.proc.poll() is None:
        r.proc.send_signal(sig)
    r.proc.wait(timeout=60)


def test_replicas_from_a_list_or_a_headless_service() -> None:
    from shared.tfserving import channel_target

    assert channel_target("localhost:1,127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert channel_target("dns:///svc:8500") == "dns:///svc:8500"
    assert replicas("127.0.0.1:1, 127.0.0.1:2") == ["127.0.0.1:1", "127.0.0.1:2"]
    assert replicas("dns:///localhost:8500") in (["127.0.0.1:8500"], ["127.0.0.1:8500", "::1:8500"])


def test_a_layout_reaches_every_replica_and_a_restarted_one_is_brought_to_it(
    redis: Redis, tmp_path: Path
) -> None:
    base = tmp_path / "models" / MODEL
    for version, (w, b) in WEIGHTS.items():
        _save_tiny_model(base / str(version), w, b)
    config = tmp_path / "models.config"
    config.write_text(config_text({MODEL: (base, [1], {"stable": 1})}))
    a, b = start(config, tmp_path, "a"), start(config, tmp_path, "b")
    fleet = ServingFleet(f"{a.address},{b.address}", config_file=str(config))
    promoter = Promoter(
        redis=redis,
        serving=fleet,
        config=PromoterConfig(serving_base=str(tmp_path / "models")),
        publish=lambda e: asyncio.sleep(0),  # type: ignore[arg-type, return-value]
        smoke=lambda c, n: [],
    )
    two = [ModelLayout(MODEL, str(base), (1, 2), {"stable": 2})]
    said: list[str | None] = []

    async def go() -> None:
        nonlocal b
        # As a promotion does: load beside, wait until every replica has it, move.
        await fleet.reload([ModelLayout(MODEL, str(base), (1, 2), {"stable": 1})])
        await fleet.wait_available(MODEL, 2, 60)
        await fleet.reload(two)
        assert await fleet.status(MODEL) == {1: "AVAILABLE", 2: "AVAILABLE"}
        assert await fleet.label_version(MODEL, "stable") == 2
        got = await fleet.predict_examples(MODEL, [example(1.0)], label="stable")
        assert got["probabilities"][0] == pytest.approx(0.3208, abs=1e-3)
        await promoter.layout.save(MODEL, {"versions": [1, 2], "labels": {"stable": 2}})
        assert await promoter.health() is None
        # Version 3 on one replica only: not AVAILABLE for the fleet.
        _save_tiny_model(base / "3", 0.5, 0.0)
        three = [ModelLayout(MODEL, str(base), (1, 2, 3), {"stable": 2})]
        await fleet.clients()[0].reload(three)
        await fleet.clients()[0].wait_available(MODEL, 3, 60)
        assert (await fleet.status(MODEL))[3] == "START"
        await fleet.reload(two)
        # The file every replica reads at start has the applied layout: a replica that
        # restarts serves it before it answers.
        written = text_format.Parse(config.read_text(), model_server_config_pb2.ModelServerConfig())
        [entry] = written.model_config_list.config
        assert dict(entry.version_labels) == {"stable": 2}
        await asyncio.to_thread(stop, b, signal.SIGKILL)
        b = await asyncio.to_thread(start, config, tmp_path, "b2", b.grpc_port)
        assert await fleet.label_version(MODEL, "stable") == 2
        # One restarted with an older config (as from an older file): behind, found and
        # brought to the layout; the promoter says so until it is, then is ready.
        await asyncio.to_thread(stop, b, signal.SIGKILL)
        old = tmp_path / "old.config"
        old.write_text(config_text({MODEL: (base, [1], {"stable": 1})}))
        b = await asyncio.to_thread(start, old, tmp_path, "b3", b.grpc_port)
        assert await fleet.label_version(MODEL, "stable") is None  # they disagree
        for _ in range(100):  # the readiness check's calls, without its 5 s period
            said.append(await promoter.health())
            if said[-1] is None:
                break
            await asyncio.sleep(0.2)
        assert await fleet.label_version(MODEL, "stable") == 2
        await fleet.close()

    try:
        asyncio.run(go())
    finally:
        stop(a)
        stop(b)
    assert said[0] is not None and f"{b.address} behind the layout" in said[0]
    assert said[-1] is None and len(said) >= 2


def test_steady_traffic_through_stable_loses_no_request_across_a_promotion_and_a_rollback() -> None:
    """bench/serving_load.py, short: a client process sends Predict on ``stable``
    round-robin over two replicas while the promoter promotes version 2 and rolls back."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("serving_load", ROOT / "bench/serving_load.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.run(rate=100.0, idle_s=1.5)
    assert r["failed"] == 0, r["errors"]
    assert r["versions"] == [1, 2] and r["requests"] >= 1000


def test_a_replica_that_refuses_the_layout_keeps_the_promoter_unready(
    redis: Redis, tmp_path: Path
) -> None:
    """The fault injected where the promoter brings a replica to the layout."""
    from services.promoter.errors import ServingError

    class Refusing(ServingFleet):
        async def probe(self, timeout_s: float = 2.0) -> str | None:
            return None

        async def behind(self, model: str, labels: dict[str, int]) -> list[str]:
            return ["127.0.0.1:9"]  # never dialled: behind() is this stub's answer

        async def catch_up(self, address: str, models: list[ModelLayout]) -> None:
            raise ServingError(f"reload on {address}: INVALID_ARGUMENT: no such base path")

    promoter = Promoter(
        redis=redis,
        serving=Refusing("127.0.0.1:1"),
        config=PromoterConfig(serving_base=str(tmp_path)),
        publish=lambda e: asyncio.sleep(0),  # type: ignore[arg-type, return-value]
        smoke=lambda c, n: [],
    )

    async def go() -> str | None:
        await promoter.layout.save(MODEL, {"versions": [1], "labels": {"stable": 1}})
        return await promoter.health()

    why = asyncio.run(go())
    assert why is not None and why.startswith("serving replica not brought to the layout")
    assert "no such base path" in why
