"""A run's life after the decision to start it (docs/trigger.md, "Exactly one run per
decision"): the claim, fenced by the model's lease; the submission; adoption of a run
an earlier attempt submitted but never recorded; following it to its end; and the
candidate it produced.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from services.trigger import policy as pol
from services.trigger.backends import Backend, BackendUnavailable, Outcome
from services.trigger.config import TriggerConfig
from services.trigger.metrics import ModelMetrics
from services.trigger.store import TriggerStore, candidate_key, run_key, text
from shared import keys
from shared.artifacts import ArtifactStore
from shared.consume import Outage, retry_outages
from shared.events import CandidateMetrics, Event, ModelCandidate, SliceMetrics, TrainingRun
from shared.ids import stable_id

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
Publish = Callable[[Event], Awaitable[None]]


class ClaimedElsewhere(Outage):
    """Another replica is submitting the run this decision would start: decide again once
    it has saved (its claim lapses after CLAIM_LEASE_S if it stopped)."""


def run_id_of(model: str, d: pol.Decision, state: pol.ModelState) -> str:
    train = [w.window_id for w in d.train]
    evaluation = [w.window_id for w in d.evaluation]
    return stable_id("run", model, train, evaluation, d.trigger, state.episode, state.attempts)


class Runs:
    def __init__(
        self,
        *,
        store: TriggerStore,
        artifacts: ArtifactStore,
        backend: Backend,
        metrics: ModelMetrics,
        config: TriggerConfig,
        publish: Publish,
        clock: Callable[[], float],
        owner: str,
        fence: Callable[[], tuple[str, str]],
        deposed: Callable[[], Exception],
        on_finished: Callable[[str, bool, str | None], Awaitable[None]],
        outage_backoff_s: float,
    ) -> None:
        self.store = store
        self.redis = store.redis
        self.artifacts = artifacts
        self.backend = backend
        self.metrics = metrics
        self.config = config
        self.publish = publish
        self.clock = clock
        self.owner = owner
        self.fence = fence  # (lease key, token) of the model's lease; ("", "") without
        self.deposed = deposed
        self.on_finished = on_finished
        self.outage_backoff_s = outage_backoff_s
        self.followers: dict[str, asyncio.Task[None]] = {}
        # Runs started (or adopted) by the decision being taken: followed once it is saved.
        self.to_follow: dict[str, tuple[dict[str, Any], str]] = {}
        self._claim = self.redis.register_script(_CLAIM)

    # ------------------------------------------------------------ claim
    async def claim(self, run_id: str) -> str | None:
        """Claim ``run_id`` for this trigger: None when the claim is ours to submit (new,
        left by this trigger's own failed attempt, or stale), else what holds it: a
        backend run id. Another replica submitting it now: ClaimedElsewhere."""
        key = run_key(run_id)
        mine = f"{CLAIMED}{self.owner}:{self.clock()}".encode()
        if await self._claim_as(key, mine, ""):
            return None
        held = text(await self.redis.get(key))
        if not held.startswith(CLAIMED):
            return held
        owner, _, since = held[len(CLAIMED) :].partition(":")
        fresh = self.clock() - float(since or 0) < CLAIM_LEASE_S
        if owner != self.owner and fresh:
            raise ClaimedElsewhere(f"run {run_id} is being submitted by {owner}")
        # Ours, or a claimant that stopped before it submitted: take it over, unless
        # another trigger took it over at the same instant.
        if await self._claim_as(key, mine, held):
            return None
        raise ClaimedElsewhere(f"run {run_id} was taken over by another replica")

    async def _claim_as(self, key: str, mine: bytes, held: str) -> bool:
        """Claim ``key`` (new when ``held`` is "", else replacing ``held``), fenced by the
        lease: a replica deposed since it decided claims nothing (Fenced)."""
        lease_key, token = self.fence()
        got = await self._claim(keys=[lease_key or key, key], args=[token, mine, held])
        if got == -1:
            raise self.deposed()
        return bool(got)

    async def adoptable(
        self, state: pol.ModelState, run_id: str, held: str
    ) -> dict[str, Any] | None:
        """A run the backend has (``held`` is its backend id) but whose decision was not
        saved (an outage or crash after the submit): its meta, to follow it now. Anything
        else (a run in flight or finished) is not started again: None."""
        if state.in_flight == run_id:
            return None
        if await self.redis.exists(run_key(run_id, "outcome")):
            return None
        return await self.store.meta(run_id)

    # ----------------------------------------------------------- submit
    async def prepare(
        self, state: pol.ModelState, d: pol.Decision, run_id: str, labels_json: str
    ) -> dict[str, Any]:
        """What the run gets (params) and what the trigger keeps about it (meta)."""
        train_uris = [u for w in d.train for u in w.data_uris]
        eval_uris = [u for w in d.evaluation for u in w.data_uris]
        baseline = await self.redis.get(keys.serving_model_uri(self.config.model))
        candidate_id = stable_id("cand", run_id)
        run_dir = self.artifacts.uri("runs", run_id)
        # The run reads its own copy of the module and schema from the artifact store
        # (a KFP pod has no access to the trigger's disk), and the copy is the lineage.
        module_uri, module_sha = await asyncio.to_thread(
            self.snapshot, self.config.module_path, run_dir
        )
        schema_uri, _ = await asyncio.to_thread(self.snapshot, self.config.schema_path, run_dir)
        params = {
            "run_dir": run_dir,
            "windows_json": orjson.dumps(train_uris).decode(),
            "eval_json": orjson.dumps(eval_uris).decode(),
            "schema_path": schema_uri,
            "module_path": module_uri,
            "model_dir": self.artifacts.uri("models", self.config.model, candidate_id),
            "baseline_model": text(baseline),
            "blocking_json": orjson.dumps(list(self.config.blocking)).decode(),
            "epochs": self.config.epochs,
            "task": self.config.task,
            "labels_json": labels_json,
            "beam_args_json": orjson.dumps(list(self.config.beam_args)).decode(),
        }
        # The evidence behind the decision, shown to the approver with the candidate.
        evidence = {
            w.window_id: list(w.crossed)
            for w in state.windows[-2 * self.config.policy.consecutive :]
            if w.crossed and not w.blocking
        }
        return {
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

    async def submit(self, meta: dict[str, Any]) -> str:
        """Record the run, hand it to the backend; its backend run id. The claim stays
        "claimed" until the backend has the run: a submit that fails (KFP answers 503,
        the worker cannot start) is submitted again when the decision is taken again;
        the backends find a run by its name first."""
        run_id = str(meta["run_id"])
        await self.store.add_run(run_id, meta, self.clock())
        try:
            backend_run_id = await self.backend.submit(run_id, meta["params"])
        except BackendUnavailable:
            # Whichever path met it (a validation's decision or the tick), it shows.
            self.metrics.backend_outage.set(1)
            raise
        self.metrics.backend_outage.set(0)
        await self.redis.set(run_key(run_id), backend_run_id.encode())
        self.metrics.triggers.labels(meta["reason"] or "none").inc()
        return backend_run_id

    async def announce(self, meta: dict[str, Any], backend_id: str) -> None:
        """A run this decision started (or adopted): said, and followed once it is saved."""
        await self.publish(self.run_event(meta, "submitted", backend_id))
        self.to_follow[str(meta["run_id"])] = (meta, backend_id)

    def snapshot(self, path: str, run_dir: str) -> tuple[str, str]:
        """Copy ``path`` into the run's directory; (its URI there, sha256 of its bytes)."""
        data = Path(path).read_bytes()
        uri = f"{run_dir}/inputs/{Path(path).name}"
        if not self.artifacts.exists(uri):
            self.artifacts.write_bytes(uri, data)
        return uri, hashlib.sha256(data).hexdigest()

    def run_event(
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

    # ----------------------------------------------------------- follow
    def follow_started(self) -> None:
        """Follow the runs the saved decision started."""
        for run_id, (meta, backend_id) in self.to_follow.items():
            if run_id not in self.followers:
                self.metrics.in_flight.inc()
                self.followers[run_id] = asyncio.create_task(self.follow(meta, backend_id))
        self.to_follow.clear()

    async def ensure_following(self, in_flight: str | None) -> None:
        """The run the saved state has in flight is followed by this process."""
        if not in_flight or in_flight in self.followers:
            return
        meta = await self.store.meta(in_flight)
        backend_id = text(await self.redis.get(run_key(in_flight)))
        if meta is None or not backend_id or backend_id.startswith(CLAIMED):
            return
        self.metrics.in_flight.inc()
        self.followers[in_flight] = asyncio.create_task(self.follow(meta, backend_id))

    def stop_following(self) -> None:
        """Another replica leads now: it follows the runs (cancelled here)."""
        for task in self.followers.values():
            task.cancel()

    async def follow(self, meta: dict[str, Any], backend_run_id: str) -> None:
        """Wait for the run and record its end. An outage (Redis, broker, the KFP API)
        holds the follower where it is and it resumes there: every step is safe to repeat."""
        run_id = meta["run_id"]
        started = time.perf_counter()
        try:
            await retry_outages(
                lambda: self.publish(self.run_event(meta, "running", backend_run_id)),
                f"announcing run {run_id}",
                backoff_s=self.outage_backoff_s,
            )
            outcome = await retry_outages(
                lambda: self.backend.wait(run_id, backend_run_id, meta["params"]["run_dir"]),
                f"waiting for run {run_id}",
                backoff_s=self.outage_backoff_s,
            )
            await retry_outages(
                lambda: self.finish(meta, backend_run_id, outcome),
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

    async def finish(self, meta: dict[str, Any], backend_run_id: str, outcome: Outcome) -> None:
        run_id = meta["run_id"]
        ok = outcome.state == "succeeded"
        blessed: str | None = None
        if ok:
            candidate = self.candidate(meta)
            blessed = candidate.candidate_id if candidate.blessed else None
            await self.redis.set(candidate_key(candidate.candidate_id), candidate.to_bytes())
            await self.publish(self.run_event(meta, "succeeded", backend_run_id))
            await self.publish(candidate)
        else:
            await self.publish(
                self.run_event(
                    meta,
                    "failed",
                    backend_run_id,
                    failed_component=outcome.failed_component,
                    log_tail=outcome.log_tail,
                )
            )
        await self.redis.set(
            run_key(run_id, "outcome"),
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
        await self.on_finished(run_id, ok, blessed)

    def candidate(self, meta: dict[str, Any]) -> ModelCandidate:
        result = orjson.loads(self.artifacts.read_bytes(f"{meta['params']['run_dir']}/result.json"))
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
            labels=self.store.gathered_labels(meta),
        )
