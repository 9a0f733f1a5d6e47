"""Leases and fencing against a real Redis (shared/lease.py; docs/deploy.md "Two replicas").

Two replicas of the trigger share one model's state: either folds a period in, only
the one holding the lease starts runs, and a replica deposed while it decided writes
nothing that acts.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from services.trigger.backends import BackendUnavailable
from shared.lease import Fenced, Leadership, Lease
from tests.integration.test_trigger_core import ScriptedBackend, make, validation

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_one_holder_at_a_time_and_every_new_leader_has_a_larger_token(
    redis_url: str, tmp_path: Path
) -> None:
    async def go() -> None:
        redis = Redis.from_url(redis_url)
        model = f"m-{tmp_path.name}"
        clock = Clock()
        a = Lease(redis, "svc", model, "a", ttl_s=1.0, clock=clock)
        b = Lease(redis, "svc", model, "b", ttl_s=1.0)
        assert await a.hold() and not await b.hold()
        first = a.fence()
        assert await a.leader() == "a"
        await a.release()
        assert not a.leads() and await b.hold()
        second = b.fence()
        assert int(second) > int(first)
        # b stops renewing (killed): after the TTL a takes the lease with a newer token.
        for _ in range(100):  # poll until Redis has expired b's lease (its TTL, 1 s)
            if not await redis.exists(b.key):
                break
            await asyncio.sleep(0.05)
        assert not await redis.exists(b.key)
        assert not b.leads()  # by b's own clock too
        assert await a.hold() and int(a.fence()) > int(second)
        # b comes back believing it leads (its clock says so): its write is refused.
        b._valid_until = float("inf")
        with pytest.raises(Fenced):
            await b.hset(f"{model}:layouts", "x", "late")
        assert not await redis.hexists(f"{model}:layouts", "x")
        with pytest.raises(Fenced):
            await b.check()
        await a.hset(f"{model}:layouts", "x", "mine")
        assert await redis.hget(f"{model}:layouts", "x") == b"mine"
        # A leader that cannot renew stops counting itself leader before the TTL ends.
        clock.t += 0.95
        assert not a.leads()
        with pytest.raises(Fenced):
            a.fence()

    asyncio.run(go())


def test_leadership_hooks_run_on_gain_and_loss(redis_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        redis = Redis.from_url(redis_url)
        events: list[tuple[str, str]] = []

        async def gain(m: str) -> None:
            events.append(("gain", m))

        async def loss(m: str) -> None:
            events.append(("loss", m))

        model = f"h-{tmp_path.name}"
        one = Leadership(redis, "svc", [model], ttl_s=5, holder="one", on_gain=gain, on_loss=loss)
        two = Leadership(redis, "svc", [model], ttl_s=5, holder="two")
        await one.step()
        await two.step()
        assert one.leads(model) and not two.leads(model)
        assert await two.leaders() == {model: "one"}
        await one.release()  # SIGTERM: the other leads at its next step
        await two.step()
        assert two.leads(model)
        assert events == [("gain", model), ("loss", model)]

    asyncio.run(go())


def test_an_outage_in_the_gain_hook_is_retried_at_the_next_step_not_raised(
    redis_url: str, tmp_path: Path
) -> None:
    """A trigger that takes the lead at start and meets a refusing pipeline backend in its
    first tick must start all the same (it crashed its startup once, in the chaos test)."""

    async def go() -> None:
        redis = Redis.from_url(redis_url)
        calls: list[str] = []

        async def gain(m: str) -> None:
            calls.append(m)
            if len(calls) == 1:
                raise BackendUnavailable("local backend refuses submits")

        model = f"g-{tmp_path.name}"
        one = Leadership(redis, "svc", [model], ttl_s=5, holder="one", on_gain=gain)
        await one.step()  # does not raise
        assert one.leads(model) and calls == [model]
        await one.step()  # the hook again: the lead was not fully taken
        assert calls == [model, model]
        await one.step()  # complete now: not again
        assert calls == [model, model]

        async def broken(m: str) -> None:
            raise ValueError("a bug, not an outage")

        other = f"b-{tmp_path.name}"
        bug = Leadership(redis, "svc", [other], ttl_s=5, holder="one", on_gain=broken)
        with pytest.raises(ValueError):
            await bug.step()

    asyncio.run(go())


def test_a_replica_that_does_not_lead_folds_the_period_in_and_the_leader_starts_the_run(
    redis_url: str, tmp_path: Path
) -> None:
    async def go() -> None:
        redis = Redis.from_url(redis_url)
        model = f"f-{tmp_path.name}"
        backend = ScriptedBackend()
        leads = Leadership(redis, "trigger", [model], holder="leader")
        other = Leadership(redis, "trigger", [model], holder="follower")
        await leads.step()
        await other.step()
        a, _ = await make(redis_url, tmp_path, backend, model)
        a.lease = leads.lease(model)
        b, _ = await make(redis_url, tmp_path, backend, model)
        b.lease = other.lease(model)
        for i, verdict in enumerate(["ok", "drift", "drift"]):
            await b.on_validation(validation(i, verdict))
        assert backend.submitted == []  # the follower starts nothing
        last = (await b.decisions(1))[0]
        assert last["guard"] == "leader" and "the leader starts it" in last["reason"]
        assert await b.tick() is None  # a follower never ticks
        # Nobody answers in time: the request stays recorded, and the caller is told so.
        d, run_id = await b.manual("operator asked", wait_s=0.2)
        assert not d.take and d.guard == "leader" and run_id is None
        assert await b.serve_requests() == 0  # a follower answers nothing
        # The leader answers it (it starts the run) and a second request asked while it
        # serves: that asker gets the leader's own decision (a run is out already).
        (d2, run_id2), served = await asyncio.gather(
            b.manual("again", wait_s=10), a.serve_requests()
        )
        assert served == 2 and len(backend.submitted) == 1
        assert not d2.take and run_id2 is None and d2.guard in ("in_flight", "disarmed"), d2
        await asyncio.gather(*a.followers.values())
        assert (await a.decisions(1))[0]["guard"] in ("in_flight", "disarmed")

    asyncio.run(go())


def test_a_leader_deposed_while_it_submits_saves_nothing_and_the_new_leader_adopts_the_run(
    redis_url: str, tmp_path: Path
) -> None:
    """The fault lands at the submit's await point: the lease moves to the other replica
    while the old leader's run is being submitted. Its state save is refused (Fenced), it
    decides again as a follower, and the new leader's tick adopts the submitted run: one
    run in the backend, followed once."""

    async def go() -> None:
        redis = Redis.from_url(redis_url)
        model = f"d-{tmp_path.name}"
        old = Leadership(redis, "trigger", [model], holder="old", ttl_s=30)
        new = Leadership(redis, "trigger", [model], holder="new", ttl_s=30)
        await old.step()

        class Deposing(ScriptedBackend):
            async def submit(self, run_id: str, params: dict[str, Any]) -> str:
                got = await super().submit(run_id, params)
                await redis.delete(old.lease(model).key)  # its lease lapsed ...
                await new.step()  # ... and the other replica took it
                return got

        backend = Deposing()
        a, events = await make(redis_url, tmp_path, backend, model)
        a.lease = old.lease(model)
        b, _ = await make(redis_url, tmp_path, backend, model)
        b.lease = new.lease(model)
        for i, verdict in enumerate(["ok", "drift", "drift"]):
            await a.on_validation(validation(i, verdict))
        assert len(backend.submitted) == 1
        state = await a.load_state()
        assert state.in_flight is None and "per-2" in state.seen  # folded in, nothing started
        assert a.followers == {}
        d = await b.tick()
        assert d is not None and d.take
        assert len(backend.submitted) == 1  # adopted, not submitted again
        assert (await b.load_state()).in_flight == backend.submitted[0][0]
        await asyncio.gather(*b.followers.values())
        assert (await b.load_state()).in_flight is None
        taken = [x for x in await b.decisions(20) if x["taken"] == "true"]
        assert [x["source"] for x in taken] == ["tick"], taken
        assert a.metrics.retried.labels("Fenced")._value.get() == 1
        assert [e for e in events if getattr(e, "state", "") == "submitted"]

    asyncio.run(go())
