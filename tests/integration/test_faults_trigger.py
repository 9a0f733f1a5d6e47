"""The trigger under faults, against a real Redis: an outage at any await point of its
handler (Redis, publish, the backend; before or after the call takes effect) still ends
in exactly one run, one candidate and one committed record; a submit that fails is
submitted again; two replicas deciding the same window at the same instant start one run.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from services.trigger import policy as pol
from services.trigger.backends import BackendUnavailable, LocalBackend
from services.trigger.core import Trigger, TriggerConfig
from services.trigger.metrics import TriggerMetrics
from shared import topics
from shared.artifacts import ArtifactStore
from shared.consume import Consumer, ConsumerMetrics, Record, decode
from shared.events import Event, ModelCandidate, PromotionEvent, TrainingRun, WindowValidated
from tests.conftest import ROOT, TAXI_SCHEMA
from tests.faults import Faults, Flaky, flaky_fn, msg
from tests.integration.test_trigger_core import ScriptedBackend, validation

pytestmark = pytest.mark.integration


class NamedBackend(ScriptedBackend):
    """Finds a run by its id before creating it, as both real backends do."""

    def __init__(self, fail_submits: int = 0) -> None:
        super().__init__()
        self.created: list[str] = []
        self.fail_submits = fail_submits

    async def submit(self, run_id: str, params: dict[str, Any]) -> str:
        if self.fail_submits:
            self.fail_submits -= 1
            raise BackendUnavailable("KFP API answered 503")
        if run_id not in self.created:
            self.created.append(run_id)
            self.submitted.append((run_id, params))
        return f"b-{run_id}"


def trigger(
    redis: Any, tmp: Path, backend: Any, model: str, publish: Any, owner: str = "t1"
) -> Trigger:
    return Trigger(
        redis=redis,
        store=ArtifactStore(str(tmp)),
        backend=backend,
        metrics=TriggerMetrics(CollectorRegistry()),
        config=TriggerConfig(
            model=model,
            module_path=str(ROOT / "examples/taxi/model.py"),
            schema_path=str(TAXI_SCHEMA),
            policy=pol.Policy(
                consecutive=2,
                cooldown_s=0,
                min_train_examples=2000,
                min_eval_examples=1000,
                post_change_share=0,  # the training choice is not what this tests
            ),
        ),
        publish=publish,
        owner=owner,
        outage_backoff_s=0.001,
    )


async def scenario(
    redis_url: str, tmp: Path, faults: Faults, model: str, backend: NamedBackend | None = None
) -> dict[str, Any]:
    """Two periods arrive cleanly; the third (which starts a run) is consumed with
    ``faults`` armed over Redis, publish and the backend; the run is followed to its end."""
    backend = backend or NamedBackend()
    out: list[Event] = []
    letters: list[str] = []

    async def publish(e: Event) -> None:
        out.append(e)

    async def sink(rec: Record, reason: str, message: str) -> None:
        letters.append(reason)

    t = trigger(
        Flaky(Redis.from_url(redis_url), faults, "redis"),
        tmp,
        Flaky(backend, faults, "backend"),
        model,
        flaky_fn(publish, faults, "publish"),
    )
    faults.armed = False
    for v in [validation(0, "ok"), validation(1, "drift")]:
        await t.on_validation(v)
    faults.armed = True

    async def handle(body: bytes) -> None:
        await t.on_validation(decode(WindowValidated, body))

    consumer = Consumer(
        topics.VALIDATIONS, ConsumerMetrics(CollectorRegistry(), "t"), sink, backoff_s=0.001
    )
    record = msg(validation(2, "drift").to_bytes(), topics.VALIDATIONS)
    await consumer.consume(record, handle)
    while t.followers:
        await asyncio.gather(*t.followers.values())
    faults.armed = False
    state = await t.load_state()
    awaiting = state.awaiting is not None
    # The operator rejects the candidate: the promotion event re-arms the trigger.
    rejected = PromotionEvent(
        id=f"promo-{model}",
        candidate_id=state.awaiting or "",
        model=model,
        decision="rejected",
        actor="op",
        reason="not now",
    )

    async def handle_promotion(body: bytes) -> None:
        await t.on_promotion(decode(PromotionEvent, body))

    faults.armed = True
    promo = msg(rejected.to_bytes(), topics.PROMOTIONS)
    await consumer.consume(promo, handle_promotion)
    faults.armed = False
    state = await t.load_state()
    log = await t.decisions(100)
    return {
        "created": len(backend.created),
        "run_states": sorted({e.state for e in out if isinstance(e, TrainingRun)}),
        "run_ids": len({e.run_id for e in out if isinstance(e, TrainingRun)}),
        "candidates": len({e.candidate_id for e in out if isinstance(e, ModelCandidate)}),
        "acks": record.acks + promo.acks,
        "letters": letters,
        "in_flight": state.in_flight,
        "awaiting": awaiting,
        "rearmed": state.disarmed_by is None and state.awaiting is None,
        "listed_runs": len(await t.runs()),
        "seen": "per-2" in state.seen,
        # The decision log: every decision once (a retried one is not logged twice).
        "log": sorted((d["source"].split(":")[0], d["taken"], d["reason"][:9]) for d in log),
    }


EXPECTED = {
    "created": 1,
    "run_states": ["running", "submitted", "succeeded"],
    "run_ids": 1,
    "candidates": 1,
    "acks": 2,
    "letters": [],
    "in_flight": None,
    "awaiting": True,
    "rearmed": True,
    "listed_runs": 1,
    "seen": True,
}


@pytest.mark.parametrize("mode", ["before", "after"])
def test_a_fault_at_any_await_point_still_starts_exactly_one_run(
    redis_url: str, tmp_path: Path, mode: str
) -> None:
    clean = Faults()
    want = asyncio.run(scenario(redis_url, tmp_path / "clean", clean, f"c{mode}-{tmp_path.name}"))
    assert {k: v for k, v in want.items() if k != "log"} == EXPECTED
    assert [e for e in want["log"] if e[0] == "state" and e[2] == "re-armed:"] != []
    assert clean.calls >= 15, clean.where  # the handlers and the follower really await this much
    points = clean.calls
    for k in range(1, points + 1):
        f = Faults(fail_at=k, mode=mode)
        got = asyncio.run(scenario(redis_url, tmp_path / str(k), f, f"{mode}{k}-{tmp_path.name}"))
        assert f.fired is not None, k
        assert got == want, (k, f.fired, got)


def test_a_submit_that_fails_twice_is_submitted_again_and_starts_one_run(
    redis_url: str, tmp_path: Path
) -> None:
    backend = NamedBackend(fail_submits=2)
    got = asyncio.run(scenario(redis_url, tmp_path, Faults(), f"s-{tmp_path.name}", backend))
    assert {k: v for k, v in got.items() if k != "log"} == EXPECTED
    assert [e for e in got["log"] if e[1] == "true"] == [("validation", "true", "drift: dr")]
    assert backend.fail_submits == 0 and len(backend.submitted) == 1


def test_a_claim_left_by_a_failed_submit_is_taken_by_the_next_start(
    redis_url: str, tmp_path: Path
) -> None:
    """The trigger stopped after its claim, before the backend had the run (a crash, or a
    submit that failed on the way down): the restarted trigger submits that run."""

    async def go() -> None:
        model = f"r-{tmp_path.name}"
        first = NamedBackend(fail_submits=1)
        t = trigger(Redis.from_url(redis_url), tmp_path, first, model, _drop)
        for v in [validation(0, "ok"), validation(1, "drift")]:
            await t.on_validation(v)
        with pytest.raises(BackendUnavailable):
            await t.on_validation(validation(2, "drift"))
        # Restarted on the same host: the validation is delivered again.
        second = NamedBackend()
        t2 = trigger(Redis.from_url(redis_url), tmp_path, second, model, _drop)
        d = await t2.on_validation(validation(2, "drift"))
        assert d is not None and d.take
        assert len(second.created) == 1 and (await t2.load_state()).in_flight is not None
        await asyncio.gather(*t2.followers.values())

    asyncio.run(go())


def test_two_replicas_deciding_the_same_window_at_the_same_instant_start_one_run(
    redis_url: str, tmp_path: Path
) -> None:
    async def go() -> None:
        model = f"two-{tmp_path.name}"
        backend = NamedBackend()
        a = trigger(Redis.from_url(redis_url), tmp_path, backend, model, _drop, owner="pod-a")
        b = trigger(Redis.from_url(redis_url), tmp_path, backend, model, _drop, owner="pod-b")
        for v in [validation(0, "ok"), validation(1, "drift")]:
            await a.on_validation(v)
        # Both load the state before either saves it: the claim stops the second run, and
        # the second save finds the state changed since it read it, so that replica
        # decides again on the saved state, where the window is seen: one decision.
        both = await asyncio.gather(
            a.on_validation(validation(2, "drift")), b.on_validation(validation(2, "drift"))
        )
        assert sorted(d is None for d in both) == [False, True], both
        assert len(backend.created) == 1, backend.created
        decisions = [*(await a.decisions(10))]
        taken = [d for d in decisions if d["taken"] == "true"]
        assert len(taken) == 1 and taken[0]["source"] == "validation:per-2", decisions
        await asyncio.gather(*a.followers.values(), *b.followers.values())
        assert len(backend.created) == 1
        assert (await a.load_state()).seen.count("per-2") == 1

    asyncio.run(go())


def test_the_local_backend_fault_switch_refuses_submits_while_set(tmp_path: Path) -> None:
    switch = tmp_path / "fault"
    backend = LocalBackend(fault_file=str(switch))
    params = {"run_dir": str(tmp_path / "run")}
    switch.write_text("9999999999")
    with pytest.raises(BackendUnavailable, match="refuses submits"):
        asyncio.run(backend.submit("r1", params))
    switch.write_text("1")  # in the past: off
    assert not backend._faulty()


async def _drop(_: Event) -> None:
    return None


def test_a_refused_submit_shows_as_a_backend_outage_whichever_path_met_it(
    redis_url: str, tmp_path: Path
) -> None:
    """The validation's decision meets a refusing backend (gauge 1, and still 1 when it is
    delivered again and refused again); once the backend answers, the run starts and the
    gauge clears (0). The tick's path is the chaos test's (a restarted trigger taking the
    decision over): the gauge is set in the submit both paths share (Runs.submit)."""

    async def go() -> None:
        model = f"o-{tmp_path.name}"
        backend = NamedBackend(fail_submits=2)
        t = trigger(Redis.from_url(redis_url), tmp_path, backend, model, _drop)
        outage = t.metrics.backend_outage
        for v in [validation(0, "ok"), validation(1, "drift")]:
            await t.on_validation(v)
        assert outage._value.get() == 0
        with pytest.raises(BackendUnavailable):
            await t.on_validation(validation(2, "drift"))
        assert outage._value.get() == 1
        with pytest.raises(BackendUnavailable):  # delivered again: still refused
            await t.on_validation(validation(2, "drift"))
        assert outage._value.get() == 1
        d = await t.on_validation(validation(2, "drift"))
        assert d is not None and d.take and len(backend.created) == 1
        assert outage._value.get() == 0
        await asyncio.gather(*t.followers.values())

    asyncio.run(go())
