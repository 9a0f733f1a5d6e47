"""The trigger core: validations in, decisions recorded, runs started and followed.

No Kafka and no HTTP: the adapter feeds validations and manual requests and
passes a ``publish`` port for the events this produces. Redis holds the state
per model, the run claims (a redelivered validation never starts a second run)
and the decision log.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis

from services.trigger import policy as pol
from services.trigger.backends import Backend
from services.trigger.config import TriggerConfig
from services.trigger.metrics import TriggerMetrics
from services.trigger.runs import ClaimedElsewhere, Publish, Runs, run_id_of
from services.trigger.store import StateConflict, TriggerStore, candidate_key, text
from shared import keys
from shared.artifacts import ArtifactStore
from shared.events import (
    MemberWindow,
    ModelCandidate,
    PromotionEvent,
    WindowScored,
    WindowValidated,
)
from shared.lease import Fenced, Lease
from shared.relay import Relay

__all__ = ["Trigger", "TriggerConfig", "period_info", "serving_model_key"]
log = logging.getLogger(__name__)
# How many times one decision is taken again after another replica saved first.
_DECIDE_TRIES = 50
T = TypeVar("T")


def serving_model_key(model: str) -> str:
    """The model directory now serving; written by the promoter."""
    return keys.serving_model_uri(model)


def _epoch(t: datetime | None) -> float:
    return t.timestamp() if t else 0.0


def period_info(v: WindowValidated) -> pol.WindowInfo:
    """A judged period as the policy sees it: verdict, crossings, member shards, its end."""
    members = v.members or (
        [MemberWindow(window_id=v.window_id, data_uri=v.data_uri, example_count=v.example_count)]
        if v.data_uri
        else []
    )
    crossed = tuple(
        f"{f.name} {kind} {d.measure} {d.value:.4g} > {d.threshold:.4g}"
        for f in v.features
        for kind, d in (("drift", f.drift), ("skew", f.skew))
        if d is not None and d.crossed and d.value is not None
    )
    return pol.WindowInfo(
        window_id=v.window_id,
        start=(v.window_start.isoformat() if v.window_start else v.produced_at.isoformat()),
        example_count=v.example_count,
        verdict=v.verdict,
        blocking=any(a.severity == "blocking" for a in v.anomalies),
        crossed=crossed,
        drift=any(f.drift is not None and f.drift.crossed for f in v.features),
        skew=any(f.skew is not None and f.skew.crossed for f in v.features),
        end_s=_epoch(v.window_end) or _epoch(v.window_start),
        members=tuple(m.window_id for m in members),
        data_uris=tuple(m.data_uri for m in members),
        member_counts=tuple(m.example_count for m in members),
    )


class Trigger:
    """One model's decisions; its state in a :class:`TriggerStore`, its runs' lives in
    :class:`Runs`."""

    def __init__(
        self,
        *,
        redis: Redis,
        store: ArtifactStore,
        backend: Backend,
        metrics: TriggerMetrics,
        config: TriggerConfig,
        publish: Publish,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
        outage_backoff_s: float = 0.5,
        lease: Lease | None = None,
    ) -> None:
        self.redis = redis
        self.backend = backend
        self.metrics = metrics.for_model(config.model)
        self.config = config
        self.publish = publish
        self.clock = clock
        self.state = TriggerStore(redis, config.model, store)
        self._lock = asyncio.Lock()
        self._pending: list[dict[str, str]] = []  # decision log entries for the next save
        self._read_sha = ""  # sha1 of the state this decision read ("" none)
        # Only the replica holding the model's lease starts runs (None: a lone trigger).
        self.lease = lease
        # Who holds a run's claim while it is being submitted (two replicas, one run).
        # The host name by default: a restarted trigger finds its own claim and submits.
        owner = (owner or socket.gethostname() or uuid.uuid4().hex[:12]).replace(":", "_")
        self.runs_ = Runs(
            store=self.state,
            artifacts=store,
            backend=backend,
            metrics=self.metrics,
            config=config,
            publish=publish,
            clock=clock,
            owner=owner,
            fence=self._fence,
            deposed=self._deposed,
            on_finished=self._on_finished,
            outage_backoff_s=outage_backoff_s,
        )
        # Manual requests made of a replica that does not lead, for the leader.
        self.requests = Relay(redis, self.state.key("requests"))

    @property
    def followers(self) -> dict[str, asyncio.Task[None]]:
        """The runs this process follows, by run id."""
        return self.runs_.followers

    # ------------------------------------------------------------ state
    async def load_state(self) -> pol.ModelState:
        return await self.state.load()

    def leads(self) -> bool:
        """Whether this replica may start runs for the model now."""
        return self.lease is None or self.lease.leads()

    def _deposed(self) -> Fenced:
        if self.lease is None:  # no lease, no fence: a token was never sent
            return Fenced(f"model {self.config.model}: refused without a lease")
        return self.lease.deposed()

    def _fence(self) -> tuple[str, str]:
        """(lease key, token) a write that acts carries; ("", "") for a lone trigger."""
        return ("", "") if self.lease is None else (self.lease.key, self.lease.fence())

    async def _locked_state(self) -> pol.ModelState:
        """The state, read under the lock at the start of a decision (nothing pending)."""
        self._pending.clear()
        state, self._read_sha = await self.state.read()
        return state

    async def _decide(self, body: Callable[[], Awaitable[T]]) -> T:
        """One decision under this process's lock, taken again from the saved state when
        another replica saved first or this one stopped leading while it decided."""
        for _ in range(_DECIDE_TRIES):
            async with self._lock:
                try:
                    return await body()
                except (StateConflict, Fenced, ClaimedElsewhere) as e:
                    self.runs_.to_follow.clear()
                    self.metrics.retried.labels(type(e).__name__).inc()
                    last: Exception = e
            if isinstance(last, ClaimedElsewhere):
                await asyncio.sleep(0.2)  # back-off while the other replica submits
        raise last

    async def _save(self, state: pol.ModelState) -> None:
        """The state and the decision log entries taken with it, in one script: a decision
        handled again after an outage is logged once, never lost or doubled. It is refused
        when another replica saved the state since it was read (StateConflict), and, for a
        decision that started a run, when this replica no longer leads (Fenced)."""
        lease_key, token = self._fence() if self.runs_.to_follow else ("", "")
        if not await self.state.save(state, self._read_sha, self._pending, lease_key, token):
            raise self._deposed()
        for entry in self._pending:
            self.metrics.decisions.labels(entry["trigger"] or "none", entry["taken"]).inc()
            if entry["guard"]:
                self.metrics.blocked.labels(entry["guard"]).inc()
        self._pending.clear()
        self.metrics.armed.set(1 if state.armed and not state.in_flight else 0)
        self.metrics.streak.labels("drift").set(state.consecutive_drift)
        self.metrics.streak.labels("skew").set(state.consecutive_skew)
        self.metrics.streak.labels("quality").set(state.consecutive_quality)
        self.metrics.attempts.set(state.attempts)

    def _record(self, d: pol.Decision, run_id: str | None, source: str) -> None:
        """Log a decision with the next save of the state."""
        self._pending.append(
            {
                "taken": str(d.take).lower(),
                "reason": d.reason,
                "trigger": d.trigger or "",
                "run_id": run_id or "",
                "guard": d.guard or "",
                "source": source,
                "inputs": orjson.dumps(d.inputs).decode(),
                "at": str(self.clock()),
            }
        )

    async def decisions(self, count: int = 50) -> list[dict[str, str]]:
        return await self.state.decisions(count)

    async def runs(self, count: int = 20) -> list[dict[str, Any]]:
        """The latest runs, newest first, each with its components' progress."""
        return await self.state.runs(count)

    async def run_ids_with_prefix(self, prefix: str) -> list[str]:
        """This model's run ids that start with ``prefix`` (a short id, as git takes)."""
        return await self.state.run_ids_with_prefix(prefix)

    async def run(self, run_id: str) -> dict[str, Any] | None:
        return await self.state.run(run_id)

    # ------------------------------------------------------------ entry
    def now(self, state: pol.ModelState) -> float:
        return pol.now_of(state, self.config.policy, self.clock())

    async def _label_counts(self, state: pol.ModelState) -> None:
        """Each period's labelled examples and the labels' clock, as the label join has
        them now (labels from their own stream only)."""
        if not self.config.policy.label_stream:
            return
        members = [m for w in state.windows for m in w.members]
        count: dict[str, int] = {}
        for key in (keys.labels_count, keys.labels_inline):  # joined, and carried inline
            got = await self.redis.hmget(key(self.config.model), members) if members else []
            for m, v in zip(members, got, strict=True):
                if v is not None:
                    count[m] = count.get(m, 0) + int(v)
        clock = await self.redis.get(keys.labels_clock(self.config.model))
        known = [
            x for x in (state.event_now, int(clock) / 1000 if clock else None) if x is not None
        ]
        state.label_now = max(known) if known else None
        state.windows = [
            replace(w, labelled=sum(count.get(m, 0) for m in w.members)) for w in state.windows
        ]

    def _labels_param(self, d: pol.Decision, state: pol.ModelState) -> str:
        if not self.config.policy.label_stream:
            return ""
        p = self.config.policy
        matured = [
            u
            for w in (*d.train, *d.evaluation)
            if w.matured(p, state.label_now)
            for u in w.data_uris
        ]
        return orjson.dumps(
            {
                "features": list(self.config.label_features),
                "default": self.config.label_default if p.label_default else None,
                "matured": matured,
            }
        ).decode()

    async def on_validation(self, v: WindowValidated) -> pol.Decision | None:
        """Fold one judged period in; maybe start a run. None if already seen or not a period."""
        if v.scope != "period":
            return None  # one partition's window: the period it belongs to is judged whole
        received = time.perf_counter()
        info = period_info(v)
        d, run_id = await self._decide(lambda: self._validation(v, info))
        if run_id:
            self.metrics.submit_latency.observe(time.perf_counter() - received)
        return d

    async def _validation(
        self, v: WindowValidated, info: pol.WindowInfo
    ) -> tuple[pol.Decision | None, str | None]:
        state = await self._locked_state()
        if info.window_id in state.seen:
            # Handled before. If this process's attempt saved its run but met an
            # outage before following it, follow it now (a run another replica
            # started is that replica's to follow).
            self._follow_started()
            return None, None
        serving = text(await self.redis.get(serving_model_key(self.config.model)))
        if pol.new_episode(state, serving, self.now(state)):
            self._note(f"new episode: {serving or 'nothing'} serves; counts start afresh")
        if pol.amends(state, info):
            # A period judged again with a late window: its data is replaced, nothing
            # new happened to decide on.
            pol.observe(state, info)
            self._record(
                pol.Decision(False, "a late window amended an earlier period: no new decision"),
                None,
                f"validation:{v.window_id}",
            )
            await self._save(state)
            return None, None
        pol.observe(state, info)
        await self._label_counts(state)
        d = pol.decide(state, self.now(state), self.config.policy, newest=info)
        run_id = await self._maybe_start(state, d, f"validation:{v.window_id}")
        await self._save(state)
        self._follow_started()
        return d, run_id

    async def tick(self) -> pol.Decision | None:
        """Decide again without a new period: a condition that still holds after a rejection
        or a failed run starts the next attempt once the cooldown is over, even when no
        data arrives. Only a run started here is logged (a decline repeats every tick).
        Only the leading replica ticks."""
        if not self.leads():
            return None
        return await self._decide(self._tick)

    async def _tick(self) -> pol.Decision | None:
        state = await self._locked_state()
        if state.in_flight or state.disarmed_by or not state.windows:
            return None
        await self._label_counts(state)
        d = pol.decide(state, self.now(state), self.config.policy, newest=state.windows[-1])
        if not d.take:
            return d
        run_id = await self._maybe_start(state, d, "tick")
        await self._save(state)
        self._follow_started()
        return d if run_id else None

    async def on_promotion(self, ev: PromotionEvent) -> bool:
        """The promoter decided on a candidate: a rejection or failure re-arms the trigger; a
        promotion or rollback names the version serving now (what live quality is about)."""
        if ev.model != self.config.model:
            return False
        promoted = ev.decision in ("auto", "approved")
        return await self._decide(lambda: self._promotion(ev, promoted))

    async def _promotion(self, ev: PromotionEvent, promoted: bool) -> bool:
        state = await self._locked_state()
        moved = await self._serving_moved(state, ev, promoted)
        resolved = pol.resolved(state, ev.candidate_id, promoted)
        if not resolved and not moved:
            return False
        if resolved and not promoted:
            self._note(f"re-armed: candidate {ev.candidate_id} {ev.decision} ({ev.reason})")
        await self._save(state)
        return resolved

    async def _serving_moved(
        self, state: pol.ModelState, ev: PromotionEvent, promoted: bool
    ) -> bool:
        version = (
            ev.labels.get("stable", ev.version) if ev.decision == "rolled_back" else ev.version
        )
        if not (promoted or ev.decision == "rolled_back") or version is None:
            return False
        if state.serving_version == version:
            return False
        own: dict[str, float] = {}
        if promoted:
            raw = await self.redis.get(candidate_key(ev.candidate_id))
            if raw:
                own = dict(ModelCandidate.model_validate_json(raw).metrics.overall)
        state.serving_version = version
        state.serving_eval = own
        state.consecutive_quality = 0
        return True

    async def on_quality(self, ev: WindowScored) -> pol.Decision | None:
        """Fold one scored window into the quality streak; maybe start a run. None when the
        window does not count (another role or version, too few labels, already judged)."""
        if ev.model != self.config.model or ev.role != "stable":
            return None
        info = pol.QualityInfo(
            ev.window_id,
            ev.version,
            ev.label_coverage,
            dict(ev.metrics.realized),
            dict(ev.metrics.estimated),
        )
        return await self._decide(lambda: self._quality(ev, info))

    async def _quality(self, ev: WindowScored, info: pol.QualityInfo) -> pol.Decision | None:
        state = await self._locked_state()
        if pol.observe_quality(state, info, self.config.policy) is None:
            return None
        newest = state.windows[-1] if state.windows else None
        await self._label_counts(state)
        d = pol.decide(state, self.now(state), self.config.policy, newest=newest)
        await self._maybe_start(state, d, f"quality:{ev.window_id}")
        await self._save(state)
        self._follow_started()
        return d

    def _note(self, text: str) -> None:
        self._record(pol.Decision(False, text), None, "state")

    async def manual(
        self, reason: str = "manual", wait_s: float = 30.0
    ) -> tuple[pol.Decision, str | None]:
        """Decide now as an operator asked. A replica that does not lead hands the request
        to the leader and returns its decision (or, after ``wait_s`` without one, a
        decision not taken saying the request is recorded)."""
        if not self.leads():
            answer = await self.requests.ask({"reason": reason}, wait_s)
            if answer is None:
                why = f"recorded: the leading replica decides (no answer in {wait_s:.0f} s)"
                return pol.Decision(False, why, guard="leader"), None
            d = pol.Decision(bool(answer["take"]), str(answer["reason"]), guard=answer["guard"])
            return d, answer["run_id"]
        return await self._decide(lambda: self._manual(reason))

    async def serve_requests(self) -> int:
        """As the leader: decide on the manual requests other replicas recorded."""

        async def one(req: dict[str, Any]) -> dict[str, Any]:
            d, run_id = await self._decide(lambda: self._manual(str(req["reason"])))
            return {"take": d.take, "reason": d.reason, "guard": d.guard, "run_id": run_id}

        return await self.requests.serve(one, self.leads)

    async def _manual(self, reason: str) -> tuple[pol.Decision, str | None]:
        state = await self._locked_state()
        await self._label_counts(state)
        d = pol.decide(state, self.now(state), self.config.policy, manual=True)
        run_id = await self._maybe_start(state, d, f"manual:{reason}")
        await self._save(state)
        self._follow_started()
        return d, run_id

    async def state_view(self) -> dict[str, Any]:
        """What an operator asks first: armed or not and why, streaks, time and budget left."""
        state = await self.load_state()
        p = self.config.policy
        now = self.now(state)
        left = 0.0
        if state.last_run_at is not None:
            left = max(0.0, p.wait_s(state.attempts) - (now - state.last_run_at))
        recent = [t for t in state.run_times if now - t < pol.BUDGET_PERIOD_S]
        why = "armed"
        if state.in_flight:
            why = f"run {state.in_flight} in flight"
        elif state.disarmed_by:
            why = f"disarmed since run {state.disarmed_by}" + (
                f": candidate {state.awaiting} awaits a decision" if state.awaiting else ""
            )
        return {
            "model": self.config.model,
            "armed": state.armed and not state.in_flight,
            "why": why,
            "episode": state.episode,
            "episode_started": state.episode_started,
            "consecutive_drift": state.consecutive_drift,
            "consecutive_skew": state.consecutive_skew,
            "consecutive_needed": p.consecutive,
            "consecutive_quality": state.consecutive_quality,
            "quality": state.quality_last or None,
            "serving_version": state.serving_version,
            "attempts": state.attempts,
            "in_flight": state.in_flight,
            "awaiting": state.awaiting,
            "cooldown_left_s": round(left, 1),
            "budget_left": max(0, p.daily_budget - len(recent)),
            "new_examples": state.new_examples,
            "clock": p.clock,
            "now": now,
            "periods": len(state.windows),
        }

    async def _maybe_start(self, state: pol.ModelState, d: pol.Decision, source: str) -> str | None:
        self.runs_.to_follow.clear()  # what an attempt that failed before its save left
        if not d.take:
            self._record(d, None, source)
            return None
        if not self.leads():
            # Folded in here; the leading replica's tick decides the same and starts it.
            self._record(
                replace(d, take=False, guard="leader", reason=f"{d.reason}; the leader starts it"),
                None,
                source,
            )
            return None
        run_id = run_id_of(self.config.model, d, state)
        held = await self.runs_.claim(run_id)
        if held is not None:
            meta = await self.runs_.adoptable(state, run_id, held)
            if meta is not None:
                self._record(d, run_id, source)  # its first attempt's entry was not saved
                return await self._started(state, meta, held)
            # The same decision was taken before (a redelivery): never a second run.
            self._record(pol.Decision(False, f"{d.reason}: run {run_id} exists"), run_id, source)
            return None
        self._record(d, run_id, source)
        meta = await self.runs_.prepare(state, d, run_id, self._labels_param(d, state))
        return await self._started(state, meta, await self.runs_.submit(meta))

    async def _started(self, state: pol.ModelState, meta: dict[str, Any], backend_id: str) -> str:
        run_id = str(meta["run_id"])
        pol.started(state, run_id, self.now(state))
        await self.runs_.announce(meta, backend_id)
        return run_id

    def _follow_started(self) -> None:
        """Follow the runs started under the lock, once their decision is saved."""
        self.runs_.follow_started()

    async def resume(self) -> None:
        """On taking the lead (a start, or a leader gone): follow the run in flight."""
        await self.runs_.ensure_following((await self.load_state()).in_flight)

    def stop_following(self) -> None:
        """Another replica leads now: it follows the runs."""
        self.runs_.stop_following()

    async def _on_finished(self, run_id: str, ok: bool, blessed: str | None) -> None:
        await self._decide(lambda: self._finished(run_id, ok, blessed))

    async def _finished(self, run_id: str, ok: bool, blessed: str | None) -> None:
        state = await self._locked_state()
        pol.finished(state, run_id, ok, self.now(state), blessed)
        await self._save(state)
