"""The trigger core: validations in, decisions recorded, runs started and followed.

No Kafka and no HTTP: the adapter feeds validations and manual requests and
passes a ``publish`` port for the events this produces. Redis holds the state
per model, the run claims (a redelivered validation never starts a second run)
and the decision log.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis

from services.trigger import policy as pol
from services.trigger.backends import Backend, Outcome, components_of
from services.trigger.metrics import TriggerMetrics
from shared import keys
from shared.artifacts import ArtifactStore
from shared.consume import Outage, retry_outages
from shared.events import (
    CandidateMetrics,
    Event,
    MemberWindow,
    ModelCandidate,
    PromotionEvent,
    SliceMetrics,
    TrainingRun,
    WindowScored,
    WindowValidated,
)
from shared.ids import stable_id
from shared.lease import Fenced, Lease
from shared.relay import Relay

log = logging.getLogger(__name__)

CLAIMED = "claimed:"
# A claim older than this that never got a backend run id is taken over: its trigger
# stopped between claim and submit. Longer than any submit takes (KFP answers in seconds).
CLAIM_LEASE_S = 120.0
# A run is claimed only by the replica that leads the model (KEYS[1] its lease, ARGV[1]
# its token; "" without leases): new (ARGV[3] empty), or replacing what we read.
_CLAIM = """
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return -1 end
if ARGV[3] == '' then
  if redis.call('SET', KEYS[2], ARGV[2], 'NX') then return 1 end
  return 0
end
if redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0
"""
# The state is saved only if it is still what this decision read (another replica may
# have folded an event in meanwhile: 0), with the decision log entries; a decision that
# started a run saves only while this replica leads (KEYS[3] its lease, ARGV[3] its token: -1).
_SAVE = """
local cur = redis.call('GET', KEYS[1])
local sha = ''
if cur then sha = redis.sha1hex(cur) end
if sha ~= ARGV[1] then return 0 end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[3], 'token') ~= ARGV[3] then return -1 end
redis.call('SET', KEYS[1], ARGV[2])
for _, entry in ipairs(cjson.decode(ARGV[4])) do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', unpack(entry))
end
return 1
"""
# How many times one decision is taken again after another replica saved first.
_DECIDE_TRIES = 50
T = TypeVar("T")


class StateConflict(Exception):
    """Another replica saved the model's state after this decision read it."""

    retryable = True


class ClaimedElsewhere(Outage):
    """Another replica is submitting the run this decision would start: decide again once
    it has saved (its claim lapses after CLAIM_LEASE_S if it stopped)."""


Publish = Callable[[Event], Awaitable[None]]


@dataclass(frozen=True)
class TriggerConfig:
    model: str
    module_path: str
    schema_path: str
    policy: pol.Policy
    epochs: int = 3
    blocking: tuple[str, ...] = ("SCHEMA_MISSING_COLUMN", "UNEXPECTED_DATA_TYPE")
    task: str = "binary"
    # Labels from their own stream: the label features and the default at maturity.
    label_features: tuple[str, ...] = ()
    label_default: dict[str, Any] | None = None


def _text(raw: bytes | str | None) -> str:
    if raw is None:
        return ""
    return raw.decode() if isinstance(raw, bytes) else raw


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
        self.store = store
        self.backend = backend
        self.metrics = metrics.for_model(config.model)
        self.config = config
        self.publish = publish
        self.clock = clock
        self._lock = asyncio.Lock()
        self.followers: dict[str, asyncio.Task[None]] = {}
        self._to_follow: dict[str, tuple[dict[str, Any], str]] = {}
        self._pending: list[dict[str, str]] = []  # decision log entries for the next save
        # Who holds a run's claim while it is being submitted (two replicas, one run).
        # The host name by default: a restarted trigger finds its own claim and submits.
        self.outage_backoff_s = outage_backoff_s  # first wait when a follower meets an outage
        self.owner = (owner or socket.gethostname() or uuid.uuid4().hex[:12]).replace(":", "_")
        # Only the replica holding the model's lease starts runs (None: a lone trigger).
        self.lease = lease
        self._base_sha = ""  # sha1 of the state this decision read ("" none)
        self._save_script = redis.register_script(_SAVE)
        self._claim_script = redis.register_script(_CLAIM)
        # Manual requests made of a replica that does not lead, for the leader.
        self.requests = Relay(redis, self._key("requests"))

    # ------------------------------------------------------------ state
    def _key(self, suffix: str) -> str:
        return f"ctrain:trigger:{self.config.model}:{suffix}"

    async def load_state(self) -> pol.ModelState:
        raw = await self.redis.get(self._key("state"))
        return pol.ModelState.from_json(orjson.loads(raw)) if raw else pol.ModelState()

    def leads(self) -> bool:
        """Whether this replica may start runs for the model now."""
        return self.lease is None or self.lease.leads()

    def _deposed(self) -> Fenced:
        if self.lease is None:  # no lease, no fence: a token was never sent
            return Fenced(f"model {self.config.model}: refused without a lease")
        return self.lease.deposed()

    def _token(self) -> str:
        return "" if self.lease is None else self.lease.fence()

    async def _locked_state(self) -> pol.ModelState:
        """The state, read under the lock at the start of a decision (nothing pending)."""
        self._pending.clear()
        raw: Any = await self.redis.get(self._key("state"))
        # sha1: what Redis's Lua can compute (redis.sha1hex); a tag, not a secret.
        self._base_sha = hashlib.sha1(raw).hexdigest() if raw else ""
        return pol.ModelState.from_json(orjson.loads(raw)) if raw else pol.ModelState()

    async def _decide(self, body: Callable[[], Awaitable[T]]) -> T:
        """One decision under this process's lock, taken again from the saved state when
        another replica saved first or this one stopped leading while it decided."""
        for _ in range(_DECIDE_TRIES):
            async with self._lock:
                try:
                    return await body()
                except (StateConflict, Fenced, ClaimedElsewhere) as e:
                    self._to_follow.clear()
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
        entries = [[x for kv in entry.items() for x in kv] for entry in self._pending]
        token = self._token() if self._to_follow and self.lease is not None else ""
        saved = await self._save_script(
            keys=[
                self._key("state"),
                self._key("decisions"),
                self.lease.key if self.lease else self._key("lease"),
            ],
            args=[self._base_sha, orjson.dumps(state.to_json()), token, orjson.dumps(entries)],
        )
        if saved == 0:
            raise StateConflict(f"model {self.config.model}: another replica saved first")
        if saved == -1:
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
        rows: Any = await self.redis.xrevrange(self._key("decisions"), count=count)
        return [{_text(k): _text(v) for k, v in fields.items()} for _, fields in rows or []]

    async def runs(self, count: int = 20) -> list[dict[str, Any]]:
        """The latest runs, newest first, each with its components' progress."""
        ids: Any = await self.redis.zrevrange(self._key("runs"), 0, count - 1)
        views = [await self.run(_text(i)) for i in ids or []]
        return [v for v in views if v is not None]

    async def run_ids_with_prefix(self, prefix: str) -> list[str]:
        """This model's run ids that start with ``prefix`` (a short id, as git takes)."""
        out = []
        async for member, _ in self.redis.zscan_iter(self._key("runs")):
            rid = member.decode() if isinstance(member, bytes) else str(member)
            if rid.startswith(prefix):
                out.append(rid)
        return sorted(out)

    async def run(self, run_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(f"ctrain:trigger:run:{run_id}:meta")
        if raw is None:
            return None
        meta = orjson.loads(raw)
        outcome_raw = await self.redis.get(f"ctrain:trigger:run:{run_id}:outcome")
        outcome = orjson.loads(outcome_raw) if outcome_raw else {}
        run_dir = meta["params"]["run_dir"]
        log_path = f"{run_dir}/run.log"
        log = (
            self.store.read_bytes(log_path).decode(errors="replace")
            if (self.store.exists(log_path))
            else ""
        )
        return {
            "run_id": run_id,
            "model": self.config.model,
            "state": outcome.get("state") or ("running" if log else "submitted"),
            "reason": meta["reason"],
            "windows": meta["windows"],
            "eval_window": meta["eval_window"],
            "eval_windows": meta.get("eval_windows", [meta["eval_window"]]),
            "train_examples": meta.get("train_examples"),
            "eval_examples": meta.get("eval_examples"),
            # Per period: examples and labels joined when decided (-1: inside the
            # examples); and what the gather step kept (labels from their own stream).
            "labels": meta.get("labels"),
            "gathered_labels": self._gathered_labels(meta),
            "module": meta["params"]["module_path"],
            "module_sha256": meta.get("module_sha256"),
            "why": meta.get("why", meta["reason"]),
            "candidate_id": meta["candidate_id"],
            "submitted_at": meta["submitted_at"],
            "finished_at": outcome.get("finished_at"),
            "failed_component": outcome.get("failed_component"),
            "error": outcome.get("error"),
            "components": components_of(log),
        }

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
        serving = _text(await self.redis.get(serving_model_key(self.config.model)))
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
            raw = await self.redis.get(f"ctrain:trigger:candidate:{ev.candidate_id}")
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
        self._to_follow.clear()  # what an attempt that failed before its save left
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
        run_id = stable_id(
            "run",
            self.config.model,
            [w.window_id for w in d.train],
            [w.window_id for w in d.evaluation],
            d.trigger,
            state.episode,
            state.attempts,
        )
        held = await self._claim(run_id)
        if held is not None and held.startswith(CLAIMED):
            raise ClaimedElsewhere(f"run {run_id} is being submitted by {held[len(CLAIMED) :]}")
        if held is not None:
            adopted = await self._adopt(state, run_id, held)
            if adopted is not None:
                self._record(d, run_id, source)  # its first attempt's entry was not saved
            else:
                # The same decision was taken before (a redelivery): never a second run.
                self._record(
                    pol.Decision(False, f"{d.reason}: run {run_id} exists"), run_id, source
                )
            return adopted
        self._record(d, run_id, source)
        train_uris = [u for w in d.train for u in w.data_uris]
        eval_uris = [u for w in d.evaluation for u in w.data_uris]
        baseline = await self.redis.get(serving_model_key(self.config.model))
        candidate_id = stable_id("cand", run_id)
        run_dir = self.store.uri("runs", run_id)
        # The run reads its own copy of the module and schema from the artifact store
        # (a KFP pod has no access to the trigger's disk), and the copy is the lineage.
        module_uri, module_sha = await asyncio.to_thread(
            self._snapshot, self.config.module_path, run_dir
        )
        schema_uri, _ = await asyncio.to_thread(self._snapshot, self.config.schema_path, run_dir)
        params = {
            "run_dir": run_dir,
            "windows_json": orjson.dumps(train_uris).decode(),
            "eval_json": orjson.dumps(eval_uris).decode(),
            "schema_path": schema_uri,
            "module_path": module_uri,
            "model_dir": self.store.uri("models", self.config.model, candidate_id),
            "baseline_model": _text(baseline),
            "blocking_json": orjson.dumps(list(self.config.blocking)).decode(),
            "epochs": self.config.epochs,
            "task": self.config.task,
            "labels_json": self._labels_param(d, state),
        }
        # The evidence behind the decision, shown to the approver with the candidate.
        evidence = {
            w.window_id: list(w.crossed)
            for w in state.windows[-2 * self.config.policy.consecutive :]
            if w.crossed and not w.blocking
        }
        meta = {
            "evidence": evidence,
            "run_id": run_id,
            "candidate_id": candidate_id,
            "reason": d.trigger,
            "why": d.reason,
            "windows": list(d.train_windows),
            "eval_windows": list(d.eval_windows),
            "eval_window": d.eval_windows[-1],
            "train_periods": [w.window_id for w in d.train],
            "eval_periods": [w.window_id for w in d.evaluation],
            "train_examples": d.train_examples,
            "eval_examples": d.eval_examples,
            # Per period: examples, labelled (joined so far; -1: inside the examples).
            "labels": {
                w.window_id: {"examples": w.example_count, "labelled": w.labelled}
                for w in (*d.train, *d.evaluation)
            },
            "module_sha256": module_sha,
            "params": params,
            "submitted_at": self.clock(),
        }
        await self.redis.set(f"ctrain:trigger:run:{run_id}:meta", orjson.dumps(meta))
        await self.redis.zadd(self._key("runs"), {run_id: self.clock()})
        # The claim stays "claimed" until the backend has the run: a submit that fails
        # (KFP answers 503, the worker cannot start) is submitted again when the
        # validation is handled again; the backends find a run by its name first.
        backend_run_id = await self.backend.submit(run_id, params)
        await self.redis.set(f"ctrain:trigger:run:{run_id}", backend_run_id.encode())
        self.metrics.triggers.labels(d.trigger or "none").inc()
        return await self._started(state, meta, backend_run_id)

    async def _claim(self, run_id: str) -> str | None:
        """Claim ``run_id`` for this trigger: None when the claim is ours to submit (new,
        left by this trigger's own failed attempt, or stale), else what holds it: a
        backend run id, or "claimed:<owner>:<since>" of another trigger submitting now."""
        key = f"ctrain:trigger:run:{run_id}"
        mine = f"{CLAIMED}{self.owner}:{self.clock()}".encode()
        if await self._claim_as(key, mine, ""):
            return None
        held = _text(await self.redis.get(key))
        if not held.startswith(CLAIMED):
            return held
        owner, _, since = held[len(CLAIMED) :].partition(":")
        fresh = self.clock() - float(since or 0) < CLAIM_LEASE_S
        if owner != self.owner and fresh:
            return held
        # Ours, or a claimant that stopped before it submitted: take it over, unless
        # another trigger took it over at the same instant.
        took = await self._claim_as(key, mine, held)
        return None if took else _text(await self.redis.get(key))

    async def _claim_as(self, key: str, mine: bytes, held: str) -> bool:
        """Claim ``key`` (new when ``held`` is "", else replacing ``held``), fenced by the
        lease: a replica deposed since it decided claims nothing (Fenced)."""
        got = await self._claim_script(
            keys=[self.lease.key if self.lease else self._key("lease"), key],
            args=[self._token(), mine, held],
        )
        if got == -1:
            raise self._deposed()
        return bool(got)

    async def _adopt(self, state: pol.ModelState, run_id: str, held: str) -> str | None:
        """A run the backend has (``held`` is its backend id) but whose decision was not
        saved (an outage or crash after the submit): follow it now. Anything else (a run
        that finished, or another trigger submitting it) is not started again."""
        if held.startswith(CLAIMED) or state.in_flight == run_id:
            return None
        if await self.redis.exists(f"ctrain:trigger:run:{run_id}:outcome"):
            return None
        raw = await self.redis.get(f"ctrain:trigger:run:{run_id}:meta")
        if not raw:
            return None
        return await self._started(state, orjson.loads(raw), held)

    async def _started(self, state: pol.ModelState, meta: dict[str, Any], backend_id: str) -> str:
        run_id = str(meta["run_id"])
        pol.started(state, run_id, self.now(state))
        await self.publish(self._run_event(meta, "submitted", backend_id))
        self._to_follow[run_id] = (meta, backend_id)
        return run_id

    def _follow_started(self) -> None:
        """Follow the runs started under the lock, once their decision is saved."""
        for run_id, (meta, backend_id) in self._to_follow.items():
            if run_id not in self.followers:
                self.metrics.in_flight.inc()
                self.followers[run_id] = asyncio.create_task(self._follow(meta, backend_id))
        self._to_follow.clear()

    def _snapshot(self, path: str, run_dir: str) -> tuple[str, str]:
        """Copy ``path`` into the run's directory; (its URI there, sha256 of its bytes)."""
        data = Path(path).read_bytes()
        uri = f"{run_dir}/inputs/{Path(path).name}"
        if not self.store.exists(uri):
            self.store.write_bytes(uri, data)
        return uri, hashlib.sha256(data).hexdigest()

    def _run_event(
        self, meta: dict[str, Any], state: str, backend_run_id: str | None, **kw: Any
    ) -> TrainingRun:
        return TrainingRun(
            run_id=meta["run_id"],
            model=self.config.model,
            reason=meta["reason"],
            windows=[*meta["windows"], *meta.get("eval_windows", [meta["eval_window"]])],
            state=state,  # type: ignore[arg-type]
            backend=self.backend.name,  # type: ignore[arg-type]
            backend_run_id=backend_run_id,
            **kw,
        )

    async def resume(self) -> None:
        """After a restart: follow the run still in flight, if any."""
        await self._ensure_following(await self.load_state())

    async def _ensure_following(self, state: pol.ModelState) -> None:
        """The run the saved state has in flight is followed by this process."""
        run_id = state.in_flight
        if not run_id or run_id in self.followers:
            return
        raw = await self.redis.get(f"ctrain:trigger:run:{run_id}:meta")
        backend_id = _text(await self.redis.get(f"ctrain:trigger:run:{run_id}"))
        if not raw or not backend_id or backend_id.startswith(CLAIMED):
            return
        self.metrics.in_flight.inc()
        self.followers[run_id] = asyncio.create_task(self._follow(orjson.loads(raw), backend_id))

    async def _follow(self, meta: dict[str, Any], backend_run_id: str) -> None:
        """Wait for the run and record its end. An outage (Redis, broker, the KFP API)
        holds the follower where it is and it resumes there: every step is safe to repeat."""
        run_id = meta["run_id"]
        started = time.perf_counter()
        try:
            await retry_outages(
                lambda: self.publish(self._run_event(meta, "running", backend_run_id)),
                f"announcing run {run_id}",
                backoff_s=self.outage_backoff_s,
            )
            outcome = await retry_outages(
                lambda: self.backend.wait(run_id, backend_run_id, meta["params"]["run_dir"]),
                f"waiting for run {run_id}",
                backoff_s=self.outage_backoff_s,
            )
            await retry_outages(
                lambda: self._finish(meta, backend_run_id, outcome),
                f"recording run {run_id}",
                backoff_s=self.outage_backoff_s,
            )
            self.metrics.runs.labels(outcome.state).inc()
            self.metrics.duration.observe(time.perf_counter() - started)
        except Exception:
            log.exception("following run failed", extra={"run_id": run_id})
            raise
        finally:
            self.metrics.in_flight.dec()
            self.followers.pop(run_id, None)

    async def _finish(self, meta: dict[str, Any], backend_run_id: str, outcome: Outcome) -> None:
        run_id = meta["run_id"]
        ok = outcome.state == "succeeded"
        blessed: str | None = None
        if ok:
            candidate = self._candidate(meta)
            blessed = candidate.candidate_id if candidate.blessed else None
            await self.redis.set(
                f"ctrain:trigger:candidate:{candidate.candidate_id}", candidate.to_bytes()
            )
            await self.publish(self._run_event(meta, "succeeded", backend_run_id))
            await self.publish(candidate)
        else:
            await self.publish(
                self._run_event(
                    meta,
                    "failed",
                    backend_run_id,
                    failed_component=outcome.failed_component,
                    log_tail=outcome.log_tail,
                )
            )
        await self.redis.set(
            f"ctrain:trigger:run:{run_id}:outcome",
            orjson.dumps(
                {
                    "state": outcome.state,
                    "failed_component": outcome.failed_component,
                    # The failed component's last log lines, for the console and `runs`.
                    "error": (outcome.log_tail or "")[-4000:] or None,
                    "finished_at": self.clock(),
                }
            ),
        )
        await self._decide(lambda: self._finished(run_id, ok, blessed))

    async def _finished(self, run_id: str, ok: bool, blessed: str | None) -> None:
        state = await self._locked_state()
        pol.finished(state, run_id, ok, self.now(state), blessed)
        await self._save(state)

    def _candidate(self, meta: dict[str, Any]) -> ModelCandidate:
        result = orjson.loads(self.store.read_bytes(f"{meta['params']['run_dir']}/result.json"))
        ev = result["evaluated"]

        def metrics(m: dict[str, Any] | None) -> CandidateMetrics | None:
            if not m:
                return None
            return CandidateMetrics(
                overall={k: float(v) for k, v in m.get("overall", {}).items()},
                slices=[
                    SliceMetrics(
                        slice=s["slice"], metrics={k: float(v) for k, v in s["metrics"].items()}
                    )
                    for s in m.get("slices", [])
                ],
            )

        return ModelCandidate(
            candidate_id=meta["candidate_id"],
            model=self.config.model,
            run_id=meta["run_id"],
            model_uri=str(result["trained"]["model"]),
            eval_uri=str(ev.get("eval_uri", "")),
            blessed=bool(ev["blessed"]),
            failed_checks=[str(c) for c in ev.get("failed_checks", [])],
            metrics=metrics(ev.get("metrics")) or CandidateMetrics(),
            baseline_metrics=metrics(ev.get("baseline_metrics")),
            windows=list(meta["windows"]),
            eval_window=meta["eval_window"],
            eval_data_uri=orjson.loads(meta["params"]["eval_json"])[-1],
            eval_windows=list(meta.get("eval_windows", [])),
            train_examples=meta.get("train_examples"),
            module_sha256=meta.get("module_sha256"),
            eval_examples=meta.get("eval_examples"),
            reason=meta["reason"],
            trigger_evidence=meta.get("evidence", {}),
            labels=self._gathered_labels(meta),
        )

    def _gathered_labels(self, meta: dict[str, Any]) -> dict[str, Any] | None:
        """What the run's gather step counted: labelled, defaulted and left-out examples of
        its training and evaluation data and of each shard (labels from their own stream)."""
        uri = f"{meta['params']['run_dir']}/gather/labels.json"
        if not meta["params"].get("labels_json") or not self.store.exists(uri):
            return None
        return dict(orjson.loads(self.store.read_bytes(uri)))
