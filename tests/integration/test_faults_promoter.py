"""The promoter's gate under faults, against a real Redis: an outage at any await point
of its handler (Redis, publish; before or after the call takes effect) still ends with
each candidate in the right state, each audit entry written once, each decision's event
sent (once in effect: the same id) and the record committed once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from services.promoter.core import Promoter, PromoterConfig
from services.promoter.serving import ServingClient
from shared import topics
from shared.consume import Consumer, ConsumerMetrics, Record, decode
from shared.events import ModelCandidate, PromotionEvent
from tests.faults import Faults, Flaky, flaky_fn, msg
from tests.integration.test_promoter_api import cand

pytestmark = pytest.mark.integration


def _no_smoke(c: ModelCandidate, n: int) -> list[bytes]:
    raise AssertionError("no promotion in this test")


async def scenario(redis_url: str, faults: Faults, tag: str) -> dict[str, Any]:
    """An older candidate waits; a newer one of its model and an unblessed one of another
    model are consumed with ``faults`` armed."""
    events: list[PromotionEvent] = []
    letters: list[str] = []

    async def publish(ev: PromotionEvent) -> None:
        events.append(ev)

    async def sink(rec: Record, reason: str, message: str) -> None:
        letters.append(reason)

    redis = Flaky(Redis.from_url(redis_url), faults, "redis")
    p = Promoter(
        redis=redis,  # type: ignore[arg-type]
        serving=ServingClient("127.0.0.1:1"),
        config=PromoterConfig(serving_base="/nowhere"),
        publish=flaky_fn(publish, faults, "publish"),
        smoke=_no_smoke,
        outage_backoff_s=0.001,
    )
    old, new, bad = f"{tag}-c0", f"{tag}-c1", f"{tag}-c2"
    faults.armed = False
    await p.on_candidate(cand(old, f"{tag}-a"))
    faults.armed = True
    consumer = Consumer(
        topics.CANDIDATES, ConsumerMetrics(CollectorRegistry(), "p"), sink, backoff_s=0.001
    )

    async def handle(body: bytes) -> None:
        await p.on_candidate(decode(ModelCandidate, body))

    msgs = [
        msg(cand(new, f"{tag}-a").to_bytes(), topics.CANDIDATES),
        msg(cand(bad, f"{tag}-b", False).to_bytes(), topics.CANDIDATES),
    ]
    for m in msgs:
        await consumer.consume(m, handle)
    faults.armed = False
    audit = [e for e in await p.store.audit_log(2000) if e["candidate_id"].startswith(f"{tag}-")]
    short = {old: "c0", new: "c1", bad: "c2"}
    states = {}
    for cid, name in short.items():
        rec = await p.store.get(cid)
        states[name] = rec.state if rec else None
    return {
        "states": states,
        "audit": sorted((short[e["candidate_id"]], e["before"], e["after"]) for e in audit),
        "events": sorted({(short[e.candidate_id], e.decision, e.id) for e in events}),
        "acks": [m.acks for m in msgs],
        "letters": letters,
    }


@pytest.mark.parametrize("mode", ["before", "after"])
def test_a_fault_at_any_await_point_of_the_gate_loses_and_doubles_nothing(
    redis_url: str, mode: str
) -> None:
    clean = Faults()
    want = asyncio.run(scenario(redis_url, clean, f"{mode}-clean"))
    assert want["states"] == {"c0": "superseded", "c1": "pending_approval", "c2": "rejected"}
    assert want["audit"] == [
        ("c0", "new", "pending_approval"),
        ("c0", "pending_approval", "superseded"),
        ("c1", "new", "pending_approval"),
        ("c2", "new", "rejected"),
    ]
    assert [(c, d) for c, d, _ in want["events"]] == [("c0", "superseded"), ("c2", "rejected")]
    assert clean.calls >= 10, clean.where
    for k in range(1, clean.calls + 1):
        f = Faults(fail_at=k, mode=mode)
        got = asyncio.run(scenario(redis_url, f, f"{mode}-{k}"))
        assert f.fired is not None, k
        # Event ids are deterministic per candidate and decision; the tag changes them.
        got_events = [(c, d) for c, d, _ in got["events"]]
        assert got_events == [("c0", "superseded"), ("c2", "rejected")], (k, f.fired, got)
        assert {**got, "events": None} == {**want, "events": None}, (k, f.fired, got)


def test_a_request_that_meets_a_redis_outage_gets_503_naming_it(tmp_path: Any) -> None:
    import json

    from fastapi.testclient import TestClient

    from services.promoter.app import create_app
    from services.promoter.settings import PromoterSettings
    from shared.settings import CommonSettings

    common = CommonSettings(
        redis_url="redis://127.0.0.1:1/0",  # nothing listens: Redis is down
        serving_grpc="127.0.0.1:1",
        serving_base=str(tmp_path),
    )
    settings = PromoterSettings(tokens=json.dumps({"t": {"identity": "v", "role": "viewer"}}))
    client = TestClient(create_app(common, settings))  # no lifespan: nothing else connects
    r = client.get("/v1/candidates", headers={"Authorization": "Bearer t"})
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "DependencyUnavailable" and "try again" in r.json()["detail"]
    assert client.get("/livez").status_code == 200


def test_an_approval_interrupted_by_an_outage_is_finished_by_the_same_approver(
    redis_url: str, tmp_path: Any
) -> None:
    """The approval was recorded but the state did not move (Redis went away in between):
    the approver's retry finishes it instead of answering "already approved"."""
    from services.promoter.auth import Identity
    from services.promoter.errors import Conflict

    async def go() -> None:
        events: list[PromotionEvent] = []

        async def publish(ev: PromotionEvent) -> None:
            events.append(ev)

        u = tmp_path.name[-6:]
        p = Promoter(
            redis=Redis.from_url(redis_url),
            serving=ServingClient("127.0.0.1:1"),
            config=PromoterConfig(serving_base=str(tmp_path), two_approvers=frozenset({f"two{u}"})),
            publish=publish,
            smoke=_no_smoke,
        )
        alice, bob = Identity("alice", "approver"), Identity("bob", "approver")
        await p.on_candidate(cand(f"one{u}", f"one{u}"))
        await p.store.set_fields(f"one{u}", approvals=["alice"])  # the interrupted request
        rec = await p.approve(f"one{u}", alice, "again")
        assert rec.state in ("approved", "promoting")
        # Two approvers: the first approval is recorded with its audit entry; the same
        # identity twice is still refused; a second identity approves.
        await p.on_candidate(cand(f"two{u}", f"two{u}"))
        rec = await p.approve(f"two{u}", alice, "one of two")
        assert rec.state == "pending_approval" and rec.approvals == ["alice"]
        audit = [e for e in await p.store.audit_log(50) if e["candidate_id"] == f"two{u}"]
        assert [(e["actor"], e["action"]) for e in audit][:1] == [("alice", "approve")]
        with pytest.raises(Conflict, match="already approved"):
            await p.approve(f"two{u}", alice, "again")
        assert (await p.approve(f"two{u}", bob, "two of two")).state in ("approved", "promoting")
        for task in list(p.tasks):
            task.cancel()  # the promotions wait for a serving that is not there

    asyncio.run(go())


def test_two_models_promoted_at_once_keep_each_others_versions_loaded(redis_url: str) -> None:
    """Serving unloads every model a config leaves out. Two promotions of different models
    at once: each config submitted must hold the other's version being loaded (it is not
    yet saved as a layout), or that version unloads before its label can move."""
    from services.promoter.serving import ModelLayout

    class Recording:
        def __init__(self) -> None:
            self.configs: list[dict[str, tuple[int, ...]]] = []

        async def reload(self, layouts: list[ModelLayout]) -> None:
            await asyncio.sleep(0.01)  # the RPC in flight: the other promotion goes on
            self.configs.append({lay.name: lay.versions for lay in layouts})

    async def go() -> None:
        serving = Recording()
        p = Promoter(
            redis=Redis.from_url(redis_url),
            serving=serving,  # type: ignore[arg-type]
            config=PromoterConfig(serving_base="/nowhere"),
            publish=lambda ev: asyncio.sleep(0),  # type: ignore[arg-type, return-value]
            smoke=_no_smoke,
        )
        a, b = "concurrent-a", "concurrent-b"
        await asyncio.gather(
            p.layout.apply(a, {"versions": [1], "labels": {}}),
            p.layout.apply(b, {"versions": [1], "labels": {}}),
        )
        assert len(serving.configs) == 2
        assert serving.configs[-1][a] == (1,) and serving.configs[-1][b] == (1,), serving.configs

    asyncio.run(go())
