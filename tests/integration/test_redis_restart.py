"""Redis restarted (AOF, as the dev stack, compose and k8s run it) under running services:
nothing they wrote is lost (candidates, approvals, audit, decisions, run claims), a
record that arrives while Redis is down is held (an outage, shown in /healthz and the
metrics, never dead-lettered) and handled once it is back, and every service reconnects
by itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from ctrain.devstack import free_port, start_redis
from services.trigger import policy as pol
from services.trigger.core import Trigger, TriggerConfig
from services.trigger.metrics import TriggerMetrics
from shared import topics
from shared.artifacts import ArtifactStore
from shared.kafka import ensure_topics
from shared.settings import CommonSettings
from tests import poll
from tests.conftest import ROOT, TAXI_SCHEMA
from tests.integration.support import ingest_env, read_topic, start_service
from tests.integration.test_faults_trigger import NamedBackend
from tests.integration.test_promoter_api import TOKENS, H, cand, send
from tests.integration.test_trigger_core import validation

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def until(fn: Callable[[], Any], timeout: float = 90, what: str = "") -> Any:
    """A service restarting (no answer yet) counts as "not yet"."""
    return poll.until(fn, timeout, what or "the condition", ignore=(httpx.HTTPError,))


def metric(url: str, line: str) -> bool:
    return line in httpx.get(f"{url}/metrics", timeout=5).text


def send_validations(kafka: str, *vs: Any) -> None:
    async def go() -> None:
        from aiokafka import AIOKafkaProducer

        p = AIOKafkaProducer(bootstrap_servers=kafka)
        await p.start()
        for v in vs:
            await p.send_and_wait(topics.VALIDATIONS, v.to_bytes(), key=v.key)
        await p.stop()

    asyncio.run(go())


def claim_a_run(redis_url: str, tmp: Path) -> str:
    """A run decided and claimed by the trigger core (a scripted backend: no pipeline)."""

    async def go() -> str:
        async def publish(_: Any) -> None:
            return None

        t = Trigger(
            redis=Redis.from_url(redis_url),
            store=ArtifactStore(str(tmp)),
            backend=NamedBackend(),
            metrics=TriggerMetrics(CollectorRegistry()),
            config=TriggerConfig(
                model="claimed",
                module_path=str(ROOT / "examples/taxi/model.py"),
                schema_path=str(TAXI_SCHEMA),
                policy=pol.Policy(
                    consecutive=2,
                    min_train_examples=2000,
                    min_eval_examples=1000,
                    post_change_share=0,
                ),
            ),
            publish=publish,
            owner="before-restart",
        )
        for v in [validation(0, "ok"), validation(1, "drift"), validation(2, "drift")]:
            await t.on_validation(v)
        run_id = (await t.load_state()).in_flight
        assert run_id is not None
        for task in t.followers.values():
            task.cancel()
        return run_id

    return asyncio.run(go())


@pytest.mark.timeout(600)
def test_a_redis_restart_loses_nothing_and_every_service_reconnects(
    kafka: str, tmp_path: Path
) -> None:
    port = free_port()
    redis = start_redis(tmp_path / "redis", port)
    asyncio.run(ensure_topics(CommonSettings(kafka_bootstrap=kafka, kafka_idempotent=False)))
    env = ingest_env(
        kafka,
        redis.address,
        tmp_path,
        CTRAIN_PROMOTER_TOKENS=json.dumps(TOKENS),
        CTRAIN_PROMOTER_TWO_APPROVERS=json.dumps(["m2"]),
        CTRAIN_SERVING_GRPC="127.0.0.1:1",
        CTRAIN_SERVING_BASE=str(tmp_path / "serving"),
        CTRAIN_TRIGGER_MODULE_PATH=str(ROOT / "examples/taxi/model.py"),
        CTRAIN_TRIGGER_MODEL="taxi",
        CTRAIN_TRIGGER_CONSECUTIVE="5",  # decisions, no run (no pipeline in this test)
    )
    promoter = start_service("promoter", env, tmp_path / "promoter.log")
    trigger = start_service("trigger", env, tmp_path / "trigger.log")
    validator = start_service("validator", env, tmp_path / "validator.log")
    promoter.wait_healthy(path="/livez")  # no serving here: its /healthz says so
    trigger.wait_healthy(timeout=180)
    validator.wait_healthy()
    try:
        # Before: a candidate half approved, a decision logged, a run claimed.
        send(kafka, cand("c1", "m2"))
        until(
            lambda: (
                httpx.get(f"{promoter.url}/v1/candidates/c1", headers=H("tok-viewer")).is_success
            )
        )
        r = httpx.post(f"{promoter.url}/v1/candidates/c1/approve", json={"reason": "one"},
                       headers=H("tok-alice"))  # fmt: skip
        assert r.status_code == 200 and r.json()["state"] == "pending_approval"
        send_validations(kafka, validation(0, "drift"))
        until(lambda: httpx.get(f"{trigger.url}/v1/decisions").json()["decisions"], what="decision")
        run_id = claim_a_run(redis.address, tmp_path / "claims")

        # Redis goes away; a candidate arrives meanwhile and is held, visibly.
        os.kill(redis.pid, signal.SIGTERM)
        os.waitpid(redis.pid, 0)
        send(kafka, cand("c2", "m3"))
        until(lambda: metric(promoter.url, 'ctrain_promoter_outage{topic="ctrain.candidates"} 1.0'),
              what="the promoter holds c2 and says why")  # fmt: skip
        down = httpx.get(f"{trigger.url}/healthz", timeout=10)
        assert down.status_code == 503 and down.json()["reason"]
        # The readiness gauge says so too, on the services' own timer.
        until(lambda: metric(validator.url, "ctrain_validator_ready 0.0"), 30, "ready 0")
        assert httpx.get(f"{validator.url}/healthz", timeout=10).status_code == 503
        started = time.monotonic()
        redis = start_redis(tmp_path / "redis", port)  # same data directory: the AOF

        # Every service reconnects by itself; the held candidate is handled once.
        until(lambda: httpx.get(f"{trigger.url}/healthz").status_code == 200, what="trigger")
        until(lambda: httpx.get(f"{validator.url}/healthz").status_code == 200, what="validator")
        until(lambda: metric(validator.url, "ctrain_validator_ready 1.0"), 30, "ready 1")
        until(lambda: metric(promoter.url, 'ctrain_promoter_outage{topic="ctrain.candidates"} 0.0'),
              what="promoter")  # fmt: skip
        recovered = time.monotonic() - started
        # The held candidate is handled once Redis is back. An HTTP read right after may
        # still meet a pooled connection from before the restart (idle for less than the
        # client's 30 s health check) and answer 503 once, which says to try again.
        until(
            lambda: (
                httpx.get(f"{promoter.url}/v1/candidates/c2", headers=H("tok-viewer")).status_code
                == 200
            ),
            what="c2 readable",
        )
        c2 = httpx.get(f"{promoter.url}/v1/candidates/c2", headers=H("tok-viewer")).json()
        assert c2["state"] == "pending_approval"
        c1 = httpx.get(f"{promoter.url}/v1/candidates/c1", headers=H("tok-viewer")).json()
        assert c1["state"] == "pending_approval" and c1["approvals"] == ["alice"]
        r = httpx.post(f"{promoter.url}/v1/candidates/c1/approve", json={"reason": "two"},
                       headers=H("tok-bob"))  # fmt: skip
        assert r.status_code == 200 and r.json()["state"] in ("approved", "promoting")
        audit = httpx.get(f"{promoter.url}/v1/audit", headers=H("tok-viewer")).json()["entries"]
        acts = [(e["candidate_id"], e["actor"], e["action"]) for e in reversed(audit)]
        assert acts[:4] == [
            ("c1", "gate", "await_approval"),
            ("c1", "alice", "approve"),
            ("c2", "gate", "await_approval"),
            ("c1", "bob", "approve"),
        ]
        # The trigger: its decision log survived and it decides again after the restart.
        send_validations(kafka, validation(1, "drift"))
        until(lambda: len(httpx.get(f"{trigger.url}/v1/decisions").json()["decisions"]) >= 2,
              what="a decision after the restart")  # fmt: skip

        async def claim_kept() -> tuple[Any, Any]:
            r = Redis.from_url(redis.address)
            got = (
                await r.get(f"ctrain:trigger:run:{run_id}"),
                await r.get(f"ctrain:trigger:run:{run_id}:meta"),
            )
            await r.aclose()
            return got

        claim, meta = asyncio.run(claim_kept())
        assert claim == f"b-{run_id}".encode() and meta is not None
        letters = asyncio.run(read_topic(kafka, topics.EVENTS_DLQ))
        assert letters == []  # an outage never dead-letters
        print(f"\nredis restart: services healthy again {recovered:.1f}s after Redis was back")
    finally:
        os.kill(redis.pid, signal.SIGTERM)
