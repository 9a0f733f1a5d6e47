"""The promoter core: the gate, approvals, promotion into TF Serving, rollback.

No Kafka and no HTTP here. ``publish`` is the port for PromotionEvents; the
serving client speaks TF Serving's gRPC API.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from services.promoter.auth import Identity, TokenBook
from services.promoter.errors import (
    Ambiguous,
    Conflict,
    Forbidden,
    NotFound,
    PromoterError,
    ServingError,
    ServingUnavailable,
)
from services.promoter.layout import Layouts
from services.promoter.metrics import PromoterMetrics
from services.promoter.quality import QualityGate, RollbackPolicy
from services.promoter.serving import ServingClient, ServingFleet
from services.promoter.store import TO_PROMOTE, CandidateStore, Record
from shared import keys
from shared.consume import outage_of, retry_outages
from shared.events import ModelCandidate, PromotionEvent, WindowScored
from shared.ids import stable_id
from shared.lease import Fenced, Lease
from shared.relay import Relay

log = logging.getLogger(__name__)
# Who the audit trail names for what the promoter does on live quality by itself.
AUTO_ACTOR = "ctrain-monitor"
Publish = Callable[[PromotionEvent], Awaitable[None]]
# Rollbacks asked of a replica that does not lead, for the leader; each answer goes to
# ``<ROLLBACKS>:<request id>``.
ROLLBACKS = "ctrain:promoter:rollback_requests"
# One lease for the promoter: every model shares the model server's config, so one
# replica writes it (two leaders of two models would each drop the other's new version).
SERVING_LEASE = "serving"
_RELAYED: dict[str, type[PromoterError]] = {
    c.__name__: c for c in (Conflict, NotFound, Forbidden, ServingError, Ambiguous)
}


@dataclass(frozen=True)
class PromoterConfig:
    serving_base: str
    policies: dict[str, str] = field(default_factory=dict)  # model -> auto | manual
    default_policy: str = "manual"
    two_approvers: frozenset[str] = frozenset()
    # model -> identities allowed to decide on it (absent: any approver; an admin always may)
    approvers: dict[str, frozenset[str]] = field(default_factory=dict)
    available_timeout_s: float = 120.0
    smoke_examples: int = 4
    # model -> how a promotion is watched on live quality (absent: not watched)
    rollback: dict[str, RollbackPolicy] = field(default_factory=dict)
    # How long a replica that does not lead waits for the leader to carry out a rollback.
    relay_timeout_s: float = 30.0


class Promoter:
    def __init__(
        self,
        *,
        redis: Redis,
        serving: ServingClient | ServingFleet,
        config: PromoterConfig,
        publish: Publish,
        smoke: Callable[[ModelCandidate, int], list[bytes]],
        metrics: PromoterMetrics | None = None,
        outage_backoff_s: float = 0.5,
        lease: Lease | None = None,
    ) -> None:
        self.redis = redis
        self.store = CandidateStore(redis)
        self.serving = serving
        self.config = config
        self.publish = publish
        self.smoke = smoke
        self.metrics = metrics or PromoterMetrics(CollectorRegistry())
        self.quality = QualityGate(redis, config.rollback)
        self.tasks: set[asyncio.Task[None]] = set()
        self._promoting: set[str] = set()
        self.outage_backoff_s = outage_backoff_s  # first wait when a promotion meets an outage
        # Why a promotion waits (serving or Redis unreachable), for /healthz; None if none.
        self.outage: str | None = None
        # Only the replica holding it writes serving's config (None: a lone promoter).
        self.lease = lease
        self.rollbacks = Relay(redis, ROLLBACKS)
        self.layout = Layouts(redis, serving, config.serving_base, lease, self.leads)

    def leads(self) -> bool:
        return self.lease is None or self.lease.leads()

    async def layouts(self) -> dict[str, dict[str, Any]]:
        """Every model's serving layout (services/promoter/layout.py)."""
        return await self.layout.all()

    # ------------------------------------------------------------- gate
    async def on_candidate(self, c: ModelCandidate) -> Record | None:
        if not await self.store.add(c):
            # Gated before (handled again after an outage, or redelivered): say again what
            # the gate said, under the same event id, in case the event was not sent.
            rec = await self._get(c.candidate_id)
            if rec.state == "rejected":
                await self._event(rec, "rejected", "gate", rec.reason, count=False)
            elif rec.state == "approved" and rec.approvals == []:
                await self._to_promote(c.candidate_id, "gate", "auto")
            return None
        why = f"newer candidate {c.candidate_id}"
        for old in await self.store.find(model=c.model):
            if old.candidate.candidate_id == c.candidate_id:
                continue
            if old.state in ("pending_approval", "approved"):
                done, _ = await self.store.transition(
                    old.candidate.candidate_id, "supersede", "gate", why
                )
                if done:
                    await self._event(old, "superseded", "gate", why)
            elif old.state == "superseded" and old.reason == why:
                # Superseded by an earlier attempt that may have stopped before its event.
                await self._event(old, "superseded", "gate", why, count=False)
        policy = self.config.policies.get(c.model, self.config.default_policy)
        if not c.blessed:
            reason = "not blessed: " + "; ".join(c.failed_checks or ["TFMA gate failed"])
            await self.store.transition(c.candidate_id, "reject", "gate", reason)
            rec = await self._get(c.candidate_id)
            await self._event(rec, "rejected", "gate", reason)
            return rec
        if policy == "auto":
            await self.store.set_fields(c.candidate_id, promote_by="gate", promote_as="auto")
            await self.store.transition(c.candidate_id, "auto", "gate", "blessed; policy auto")
            await self._to_promote(c.candidate_id, "gate", "auto")
        else:
            done, _ = await self.store.transition(
                c.candidate_id, "await_approval", "gate", "blessed; policy manual"
            )
            rec = await self._get(c.candidate_id)
            if rec.state == "pending_approval":
                # Scored on live data beside stable while it waits (the monitor).
                await self.quality.offer(c)
        return await self._get(c.candidate_id)

    async def _get(self, cid: str) -> Record:
        """The candidate ``cid`` names: its id, or a unique prefix of one (as git does)."""
        rec = await self.store.get(cid)
        if rec is not None:
            return rec
        matches = await self.store.ids_with_prefix(cid) if len(cid) >= 4 else []
        if len(matches) > 1:
            shown = ", ".join(matches[:5]) + (" ..." if len(matches) > 5 else "")
            raise Ambiguous(f"{cid!r} is ambiguous: it starts {len(matches)} candidates ({shown})")
        rec = await self.store.get(matches[0]) if matches else None
        if rec is None:
            raise NotFound(f"candidate {cid!r} not found")
        return rec

    # -------------------------------------------------------- approvals
    def _may_decide(self, model: str, who: Identity) -> None:
        allowed = self.config.approvers.get(model)
        if allowed and who.role != "admin" and who.name not in allowed:
            raise Forbidden(
                f"{who.name} is not an approver of model {model!r} "
                f"(its approvers: {', '.join(sorted(allowed))})"
            )

    async def approve(self, cid: str, who: Identity, reason: str) -> Record:
        TokenBook.require(who, "approver")  # a viewer learns nothing, not even a 404
        rec = await self._get(cid)
        cid = rec.candidate.candidate_id  # a unique prefix names it too
        if rec.state == "rejected":
            TokenBook.require(who, "admin")  # only an admin overrides the gate
        else:
            TokenBook.require(who, "approver")
        self._may_decide(rec.candidate.model, who)
        if rec.state not in ("pending_approval", "rejected"):
            raise Conflict(f"candidate {cid} is {rec.state}; only pending_approval can be approved")
        needed = 2 if rec.candidate.model in self.config.two_approvers else 1
        again = who.name in rec.approvals
        if again and (len(rec.approvals) < needed or rec.state == "rejected"):
            raise Conflict(f"{who.name} already approved candidate {cid}")
        # ``again`` with enough approvals: this approver's earlier request recorded the
        # approval but met an outage before the state moved; finish it now.
        approvals = rec.approvals if again else [*rec.approvals, who.name]
        if len(approvals) < needed and rec.state != "rejected":
            # The approval and its audit entry in one transaction: neither without the other.
            await self.store.approve_partly(cid, rec, who.name, reason, approvals)
            return await self._get(cid)
        await self.store.set_fields(
            cid, approvals=approvals, promote_by=who.name, promote_as="approved"
        )
        done, before = await self.store.transition(cid, "approve", who.name, reason, rec.state)
        if not done:
            raise Conflict(f"candidate {cid} is {before}; it cannot be approved")
        if before == "pending_approval":
            wait = max(0.0, time.time() - rec.updated_at)
            self.metrics.approval_wait.labels(rec.candidate.model).observe(wait)
        await self._to_promote(cid, who.name, "approved")
        return await self._get(cid)

    async def reject(self, cid: str, who: Identity, reason: str) -> Record:
        TokenBook.require(who, "approver")
        rec = await self._get(cid)
        cid = rec.candidate.candidate_id
        self._may_decide(rec.candidate.model, who)
        done, before = await self.store.transition(cid, "reject", who.name, reason)
        if not done:
            raise Conflict(f"candidate {cid} is {before}; it cannot be rejected")
        rec = await self._get(cid)
        await self._event(rec, "rejected", who.name, reason)
        return rec

    # -------------------------------------------------------- promotion
    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _to_promote(self, cid: str, actor: str, decision: str) -> None:
        """An approved candidate: recorded for the leader (which may be this replica)."""
        await self.redis.sadd(TO_PROMOTE, cid)
        if self.leads():
            self._spawn(self.promote(cid, actor, decision))

    async def promote(self, cid: str, actor: str, decision: str) -> None:
        """Move ``stable`` to the candidate. An outage (serving or Redis unreachable)
        holds the promotion where it is and it resumes there once they answer; only a
        refusal (a model that does not load, a bad prediction) fails the candidate.
        Only the leader promotes; one deposed on the way stops, the next one resumes."""
        if cid in self._promoting or not self.leads():
            return  # already under way in this process, or another replica's to do
        self._promoting.add(cid)
        try:
            await retry_outages(
                lambda: self._promote(cid, actor, decision),
                f"promoting {cid}",
                backoff_s=self.outage_backoff_s,
                on_outage=self._serving_outage,
            )
        except Fenced as e:
            log.warning("promotion left to the new leader", extra={"candidate": cid, "why": str(e)})
        finally:
            self._promoting.discard(cid)

    def _serving_outage(self, why: str | None) -> None:
        self.outage = why
        self.metrics.promotion_outage.set(0 if why is None else 1)

    async def _promote(self, cid: str, actor: str, decision: str) -> None:
        rec = await self._get(cid)
        model = rec.candidate.model
        done, before = await self.store.transition(
            cid, "promote", actor, f"promoting ({decision})", lease=self.lease
        )
        if not done:
            log.warning("not promoting", extra={"candidate": cid, "state": before})
            await self.redis.srem(TO_PROMOTE, cid)
            return
        started = time.perf_counter()
        fence_key = f"ctrain:promoter:{model}:fence"
        fence = await self.redis.incr(fence_key)
        # The layout before this promotion, kept with the candidate: a promotion resumed
        # after an outage starts from the same one, not from a half-written successor.
        prior = rec.prior_layout
        if prior is None:
            layouts = await self.layouts()
            prior = layouts.get(model, {"versions": [], "labels": {}, "by_version": {}})
            await self.store.set_fields(cid, prior_layout=orjson.dumps(prior))
        try:
            await self._load_and_label(rec, prior, fence, fence_key, actor, decision, started)
        except Fenced:
            raise  # deposed: the candidate stays promoting for the new leader
        except Exception as e:
            if outage_of(e) is not None:
                raise  # waited out by promote(); the candidate stays promoting
            log.exception("promotion failed", extra={"candidate": cid})
            if prior["versions"]:
                try:
                    await self.layout.apply(model, prior)  # the labels as they were
                except ServingError:
                    log.exception("restoring the previous config failed")
            await self.store.transition(
                cid, "fail", actor, f"{type(e).__name__}: {e}", lease=self.lease
            )
            await self.redis.srem(TO_PROMOTE, cid)
            await self._event(await self._get(cid), "failed", actor, f"{type(e).__name__}: {e}")

    async def _load_and_label(
        self,
        rec: Record,
        prior: dict[str, Any],
        fence: int,
        fence_key: str,
        actor: str,
        decision: str,
        started: float,
    ) -> None:
        """Every step is safe to repeat (a resumed promotion runs them again)."""
        cid = rec.candidate.candidate_id
        model = rec.candidate.model
        version = rec.version or self.layout.next_version(model, prior)
        await self.store.set_fields(cid, version=version)
        await asyncio.to_thread(self.layout.copy, rec.candidate.model_uri, model, version)
        stable = prior["labels"].get("stable")
        previous = prior["labels"].get("previous")
        # While N+1 loads: N+1, the current stable and its previous stay loaded.
        around = [int(v) for v in (stable, previous) if v is not None]
        loading = {**prior, "versions": sorted({version, *around})}
        # Afterwards: N+1 and the old stable (the new "previous", for rollback).
        keep = sorted({version, *(int(v) for v in [stable] if v is not None)})
        await self.layout.apply(model, loading)
        await self.serving.wait_available(model, version, self.config.available_timeout_s)
        examples = await asyncio.to_thread(self.smoke, rec.candidate, self.config.smoke_examples)
        out = await self.serving.predict_examples(model, examples, version=version)
        values = [x for v in out.values() for x in v]
        if not values or any(x != x for x in values):  # NaN check
            raise ServingError(f"smoke prediction on version {version} returned {out}")
        if int(await self.redis.get(fence_key) or 0) != fence:
            raise ServingError("a newer promotion of this model started; this one stops")
        # The label moves only in a config whose versions serving just reported
        # AVAILABLE (a server restarted since loads them again before it answers).
        await self.serving.wait_available(model, version, self.config.available_timeout_s)
        labels = {"stable": version}
        if stable is not None:
            labels["previous"] = int(stable)
        final = {
            "versions": keep,
            "labels": labels,
            "by_version": {**prior.get("by_version", {}), str(version): cid},
        }
        await self.layout.apply(model, final)
        await self.layout.save(model, final)
        await self.redis.set(keys.serving_model_uri(model), rec.candidate.model_uri)
        await self.redis.set(keys.serving_windows(model), orjson.dumps(rec.candidate.windows))
        old_cid = prior.get("by_version", {}).get(str(stable)) if stable is not None else None
        if old_cid:
            await self.store.transition(
                old_cid, "retire", actor, f"version {version} took stable", lease=self.lease
            )
        await self.store.transition(
            cid, "served", actor, f"stable -> version {version}", lease=self.lease
        )
        await self.redis.srem(TO_PROMOTE, cid)
        self.metrics.promotion_seconds.observe(time.perf_counter() - started)
        self._label_gauges(model, labels)
        if stable is not None and int(stable) != version:
            await self.quality.start_watch(model, version, int(stable), cid)
        await self._event(await self._get(cid), decision, actor, "promoted", version, labels)

    async def resume(self) -> None:
        """On taking the lead (a start, or a leader gone): finish the promotions under way
        and start the approved ones, as whoever approved them."""
        for state in ("promoting", "approved"):
            for rec in await self.store.find(state=state):
                await self._to_promote(
                    rec.candidate.candidate_id,
                    rec.promote_by or "recovery",
                    rec.promote_as or "approved",
                )

    async def sweep(self) -> None:
        """The leader acts on what any replica recorded: approved candidates to promote,
        rollbacks asked of a replica that does not lead."""
        if not self.leads():
            return
        members: Any = await self.redis.smembers(TO_PROMOTE)
        for raw in members:
            cid = raw.decode()
            rec = await self.store.get(cid)
            if rec is None or rec.state not in ("approved", "promoting"):
                await self.redis.srem(TO_PROMOTE, cid)
            else:
                self._spawn(self.promote(cid, rec.promote_by or "recovery", rec.promote_as))
        await self.rollbacks.serve(self._relayed_rollback, self.leads)

    async def _relayed_rollback(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            done = await self._roll_back(req["model"], req["actor"], req["reason"], req["target"])
        except PromoterError as e:
            return {"error": type(e).__name__, "detail": str(e)}
        return {"ok": done}

    async def _relay_rollback(
        self, model: str, actor: str, reason: str, target: int | None, wait: bool
    ) -> dict[str, Any]:
        """A rollback asked of a replica that does not lead: recorded for the leader, and
        its answer awaited (``wait``) so the caller sees what the leader did."""
        req = {"model": model, "actor": actor, "reason": reason, "target": target}
        answer = await self.rollbacks.ask(req, self.config.relay_timeout_s if wait else None)
        leader = await self.lease.leader() if self.lease is not None else None
        if answer is None:
            detail = (
                f"recorded; leader {leader} has not answered in {self.config.relay_timeout_s:.0f} s"
                if wait
                else "recorded for the leader"
            )
            return {"model": model, "requested": True, "leader": leader, "detail": detail}
        if "error" in answer:
            raise _RELAYED.get(answer["error"], Conflict)(answer["detail"])
        return dict(answer["ok"])

    # ---------------------------------------------------------- rollback
    async def rollback(
        self, model: str, who: Identity, reason: str, target: int | None
    ) -> dict[str, Any]:
        TokenBook.require(who, "approver")
        self._may_decide(model, who)
        if not self.leads():
            await self._rollable(model)  # what any replica can tell is said at once
            return await self._relay_rollback(model, who.name, reason, target, wait=True)
        return await self._roll_back(model, who.name, reason, target)

    async def _rollable(self, model: str) -> dict[str, Any]:
        layout = (await self.layouts()).get(model)
        if not layout or "stable" not in layout["labels"]:
            raise NotFound(f"model {model!r} has no stable version to roll back")
        return layout

    async def on_quality(self, ev: WindowScored) -> str | None:
        """A scored window of a watched promotion: roll back when the new stable was worse
        than the version it replaced on all the watched windows ("rollback"), end the
        watch when it was not ("keep"); None while the watch goes on."""
        got = await self.quality.observe(ev)
        if got is None:
            return None
        watch, verdict, evidence = got
        model = ev.model
        if verdict == "rollback" and not self.leads():
            await self._relay_rollback(
                model, AUTO_ACTOR, f"automatic rollback: {evidence}", int(watch["previous"]), False
            )
        elif verdict == "rollback":
            try:
                await self._roll_back(
                    model, AUTO_ACTOR, f"automatic rollback: {evidence}", int(watch["previous"])
                )
            except Conflict as e:
                # Rolled back already (this event handled again), or by an operator.
                log.warning("automatic rollback not needed", extra={"model": model, "why": str(e)})
            else:
                self.metrics.auto_rollbacks.labels(model).inc()
        else:
            await self.store.note(
                str(watch.get("candidate", "")), model, AUTO_ACTOR, "keep", evidence
            )
        await self.quality.end_watch(model)
        self.metrics.watches.labels(model, verdict).inc()
        log.info("promotion watch ended", extra={"model": model, "verdict": verdict})
        return verdict

    async def _roll_back(
        self, model: str, actor: str, reason: str, target: int | None
    ) -> dict[str, Any]:
        layout = await self._rollable(model)
        current = int(layout["labels"]["stable"])
        goal = target if target is not None else layout["labels"].get("previous")
        if goal is None:
            raise Conflict(f"model {model} has no previous version loaded to roll back to")
        goal = int(goal)
        if goal not in [int(v) for v in layout["versions"]]:
            raise Conflict(f"version {goal} of {model} is not loaded; loaded: {layout['versions']}")
        if goal == current:
            raise Conflict(f"version {goal} is already stable")
        status = await self.serving.status(model)
        if status.get(goal) != "AVAILABLE":
            raise Conflict(f"version {goal} is {status.get(goal, 'not loaded')}, not AVAILABLE")
        new = {**layout, "labels": {"stable": goal, "previous": current}}
        await self.layout.apply(model, new)
        await self.layout.save(model, new)
        self._label_gauges(model, new["labels"])
        by_version = layout.get("by_version", {})
        if by_version.get(str(current)):
            await self.store.transition(
                by_version[str(current)], "roll_back", actor, reason, lease=self.lease
            )
        target_cid = by_version.get(str(goal))
        if target_cid:
            await self.store.transition(target_cid, "restore", actor, reason, lease=self.lease)
            tgt = await self.store.get(target_cid)
            if tgt is not None:
                await self.redis.set(keys.serving_model_uri(model), tgt.candidate.model_uri)
                await self.redis.set(
                    keys.serving_windows(model), orjson.dumps(tgt.candidate.windows)
                )
        await self.quality.end_watch(model)
        self.metrics.promotions.labels("rolled_back").inc()
        await self.publish(
            PromotionEvent(
                id=stable_id("promo", model, "rollback", current, goal, reason),
                candidate_id=by_version.get(str(current), ""),
                model=model,
                decision="rolled_back",
                actor=actor,
                reason=reason,
                version=goal,
                labels=new["labels"],
            )
        )
        return {"model": model, "stable": goal, "previous": current}

    def _label_gauges(self, model: str, labels: dict[str, int]) -> None:
        for label, version in labels.items():
            self.metrics.serving_version.labels(model, label).set(version)

    async def refresh_gauges(self) -> None:
        """Candidates by state and the oldest pending age, from the store."""
        counts: dict[tuple[str, str], int] = {}
        oldest: dict[str, float] = {}
        for rec in await self.store.find():
            m = rec.candidate.model
            counts[(m, rec.state)] = counts.get((m, rec.state), 0) + 1
            if rec.state == "pending_approval":
                oldest[m] = min(oldest.get(m, rec.updated_at), rec.updated_at)
        self.metrics.candidates.clear()
        for (m, st), n in counts.items():
            self.metrics.candidates.labels(m, st).set(n)
        self.metrics.pending_oldest.clear()
        for m, since in oldest.items():
            self.metrics.pending_oldest.labels(m).set(since)
        for m, lay in (await self.layouts()).items():
            self._label_gauges(m, {k: int(v) for k, v in lay["labels"].items()})
            for label in lay["labels"]:
                # What serving actually answers for the label (the alert compares both).
                # Unreachable is not "no label": the gauge keeps its value, the
                # reachability gauge says why.
                try:
                    observed = await self.serving.label_version(m, label)
                except ServingUnavailable:
                    self.metrics.serving_reachable.set(0)
                    return
                self.metrics.serving_reachable.set(1)
                self.metrics.observed_version.labels(m, label).set(observed or 0)

    async def model_view(self, model: str) -> dict[str, Any]:
        layout = (await self.layouts()).get(model)
        if layout is None:
            raise NotFound(f"model {model!r} has never been promoted")
        return {
            "model": model,
            "versions": layout["versions"],
            "labels": layout["labels"],
            "candidates": layout.get("by_version", {}),
            # A promotion being watched on live quality (None: none).
            "watch": await self.quality.watch(model),
            **await self._serving_view(model),
        }

    async def _serving_view(self, model: str) -> dict[str, Any]:
        """What serving reports per version, or that it cannot be reached (never an empty
        report that would read as "nothing loaded")."""
        try:
            reports = await self.serving.status(model)
        except ServingUnavailable as e:
            self.metrics.serving_reachable.set(0)
            return {"serving_reachable": False, "serving_error": str(e), "serving_reports": None}
        self.metrics.serving_reachable.set(1)
        return {
            "serving_reachable": True,
            "serving_reports": {str(k): v for k, v in reports.items()},
        }

    async def health(self) -> str | None:
        """Why the promoter cannot do its job now (serving unreachable, a replica behind
        the layout: brought to it now, ready at the next check), or None."""
        why = await self.serving.probe()
        self.metrics.serving_reachable.set(0 if why else 1)
        if why is None:
            try:
                behind = await self.layout.reconcile()
            except ServingError as e:  # unreachable, or it refused the layout
                return f"serving replica not brought to the layout: {e}"
            if behind:
                return f"serving replica(s) {', '.join(behind)} behind the layout: config applied"
        return why or self.outage

    async def _event(
        self,
        rec: Record,
        decision: str,
        actor: str,
        reason: str,
        version: int | None = None,
        labels: dict[str, int] | None = None,
        count: bool = True,
    ) -> None:
        c = rec.candidate
        await self.quality.withdraw(c.model, c.candidate_id)  # decided: no challenger now
        if count:
            self.metrics.promotions.labels(decision).inc()
        await self.publish(
            PromotionEvent(
                id=stable_id("promo", c.candidate_id, decision),
                candidate_id=c.candidate_id,
                model=c.model,
                decision=decision,  # type: ignore[arg-type]
                actor=actor,
                reason=reason,
                version=version,
                labels=labels or {},
            )
        )
