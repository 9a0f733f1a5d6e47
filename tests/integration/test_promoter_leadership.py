"""Two promoter replicas over one real model server and a real Redis (docs/deploy.md,
"Two replicas"): any replica records an approval, only the leader promotes; a rollback
asked of the other is carried out by the leader and answered through Redis; a leader
deposed in the middle of a promotion moves no label, and the new leader finishes it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from services.promoter.auth import Identity
from services.promoter.core import SERVING_LEASE, Promoter, PromoterConfig
from services.promoter.errors import Conflict, NotFound
from services.promoter.serving import ServingFleet
from shared.events import PromotionEvent
from shared.lease import Leadership
from tests.integration.test_modelserver import (
    MODEL,
    WEIGHTS,
    _save_tiny_model,
    config_text,
    example,
)
from tests.integration.test_promoter_api import cand
from tests.integration.test_serving_replicas import Replica, start, stop

pytestmark = pytest.mark.integration
ALICE = Identity("alice", "approver")


class Replicas:
    """Two promoters (``a`` leads first) sharing Redis and one model server."""

    def __init__(self, redis_url: str, tmp: Path, server: Replica, config: Path) -> None:
        self.redis = Redis.from_url(redis_url)
        self.events: list[tuple[str, PromotionEvent]] = []
        self.lead = {
            n: Leadership(self.redis, "promoter", [SERVING_LEASE], holder=n, ttl_s=30)
            for n in ("a", "b")
        }
        self.p = {n: self._promoter(n, tmp, server, config) for n in ("a", "b")}

    def _promoter(self, name: str, tmp: Path, server: Replica, config: Path) -> Promoter:
        async def publish(ev: PromotionEvent) -> None:
            self.events.append((name, ev))

        return Promoter(
            redis=self.redis,
            serving=ServingFleet(server.address, config_file=str(config)),
            config=PromoterConfig(serving_base=str(tmp / "models"), relay_timeout_s=20),
            publish=publish,
            smoke=lambda c, n: [example(1.0)],
            lease=self.lead[name].lease(SERVING_LEASE),
        )

    async def settle(self, name: str) -> None:
        await asyncio.gather(*self.p[name].tasks)


@pytest.fixture
def setup(empty_redis_url: str, tmp_path: Path) -> Any:
    redis_url = empty_redis_url
    base = tmp_path / "models" / MODEL
    _save_tiny_model(base / "1", *WEIGHTS[1])
    _save_tiny_model(tmp_path / "src" / "2", *WEIGHTS[2])
    config = tmp_path / "models.config"
    config.write_text(config_text({MODEL: (base, [1], {"stable": 1})}))
    server = start(config, tmp_path, "serving")
    yield Replicas(redis_url, tmp_path, server, config)
    stop(server)


async def _first_layout(r: Replicas) -> None:
    for lead in r.lead.values():
        await lead.step()
    assert r.lead["a"].leads(SERVING_LEASE) and not r.lead["b"].leads(SERVING_LEASE)
    await r.p["a"].layout.save(MODEL, {"versions": [1], "labels": {"stable": 1}})


def test_an_approval_on_either_replica_is_promoted_by_the_leader_and_a_rollback_relayed(
    setup: Replicas, tmp_path: Path
) -> None:
    r = setup
    c = cand("lead-c2", MODEL, model_uri=str(tmp_path / "src" / "2"))

    async def go() -> None:
        await _first_layout(r)
        await r.p["b"].on_candidate(c)
        rec = await r.p["b"].approve(c.candidate_id, ALICE, "looks good")
        assert rec.state == "approved" and not r.p["b"].tasks  # recorded, not acted on
        await r.p["a"].sweep()
        await r.settle("a")
        rec = await r.p["a"].store.get(c.candidate_id)
        assert rec is not None and rec.state == "serving"
        assert await r.p["a"].serving.label_version(MODEL, "stable") == 2
        assert [(n, e.decision, e.actor) for n, e in r.events] == [("a", "approved", "alice")]

        # A rollback asked of the follower: the leader carries it out and answers.
        async def leader_sweeps() -> None:
            for _ in range(400):
                if await r.redis.exists("ctrain:promoter:rollback_requests"):
                    break
                await asyncio.sleep(0.05)  # until the follower has recorded the request
            await r.p["a"].sweep()

        got, _ = await asyncio.gather(r.p["b"].rollback(MODEL, ALICE, "bad", None), leader_sweeps())
        assert got == {"model": MODEL, "stable": 1, "previous": 2}
        assert await r.p["a"].serving.label_version(MODEL, "stable") == 1
        assert [e.decision for n, e in r.events if n == "b"] == []
        # What any replica can tell is answered at once, not relayed and waited for.
        with pytest.raises(NotFound, match="'nope' has no stable version"):
            await asyncio.wait_for(r.p["b"].rollback("nope", ALICE, "x", None), 5)
        assert not await r.redis.exists("ctrain:promoter:rollback_requests")
        # A refusal is relayed too, with the leader's reason.
        with pytest.raises(Conflict, match="version 9 of tiny is not loaded"):
            await asyncio.gather(r.p["b"].rollback(MODEL, ALICE, "x", 9), leader_sweeps())

    asyncio.run(go())


def test_a_leader_deposed_during_a_promotion_moves_no_label_and_the_new_leader_finishes_it(
    setup: Replicas, tmp_path: Path
) -> None:
    """The fault lands at the promotion's first await on serving (the new version
    loading): the lease moves to the other replica there. The old leader's next serving
    write and layout save are refused; the new leader resumes the promotion from the
    candidate's record: one promotion, one event, stable moved once."""
    r = setup
    c = cand("dep-c2", MODEL, model_uri=str(tmp_path / "src" / "2"))
    a = r.p["a"]
    fleet = a.serving
    assert isinstance(fleet, ServingFleet)
    real_wait = fleet.wait_available
    moved: list[bool] = []

    async def wait_and_lose_the_lease(model: str, version: int, limit: float) -> None:
        await real_wait(model, version, limit)
        if not moved:
            moved.append(True)
            await r.redis.delete(r.lead["a"].lease(SERVING_LEASE).key)  # a paused past its TTL
            await r.lead["b"].step()  # ... and b took the lease

    async def go() -> None:
        await _first_layout(r)
        await a.on_candidate(c)
        fleet.wait_available = wait_and_lose_the_lease  # type: ignore[method-assign]
        await a.approve(c.candidate_id, ALICE, "ship it")
        await r.settle("a")
        rec = await a.store.get(c.candidate_id)
        assert rec is not None and rec.state == "promoting"  # left for the new leader
        assert await fleet.label_version(MODEL, "stable") == 1
        assert (await a.layouts())[MODEL]["labels"] == {"stable": 1}
        assert r.events == []
        assert r.lead["b"].leads(SERVING_LEASE)
        await r.p["b"].resume()  # what taking the lead runs
        await r.settle("b")
        rec = await a.store.get(c.candidate_id)
        assert rec is not None and rec.state == "serving" and rec.version == 2
        assert await fleet.label_version(MODEL, "stable") == 2
        assert [(n, e.decision, e.actor) for n, e in r.events] == [("b", "approved", "alice")]

    asyncio.run(go())
