"""Live quality in the promoter: challengers for the monitor, their comparison with stable,
and the watch after a promotion that rolls back by itself.

- A candidate waiting for approval is *offered* to the monitor (``keys.challengers``); the
  monitor scores it on every window newer than its evaluation window and writes the
  comparison (``keys.challenger_scores``), which the approval API summarizes.
- After a promotion that replaced a version, the promoter *watches* (``keys.rollback_watch``):
  the monitor scores both the new ``stable`` and ``previous`` on each window; once K windows
  have both versions' realized metric, the new one stays unless it was worse than the one
  it replaced by more than the margin on **all** K, in which case it is rolled back.

The judgement is a pure function (:func:`judge`); Redis holds the watch between events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson
from redis.asyncio import Redis

from shared import keys
from shared.events import ModelCandidate, WindowScored

LOWER_IS_BETTER = frozenset({"rmse", "mae", "log_loss", "brier", "ece"})


@dataclass(frozen=True)
class RollbackPolicy:
    """How a promotion is watched (per model; docs/monitor.md)."""

    enabled: bool = False
    windows: int = 3
    margin: float = 0.02
    metric: str = "auc"
    min_coverage: float = 0.5


Verdict = Literal["rollback", "keep"]


def _worse(metric: str, new: float, old: float, margin: float) -> bool:
    if metric in LOWER_IS_BETTER:
        return new > old + margin
    return new < old - margin


def judge(watch: dict[str, Any], policy: RollbackPolicy) -> tuple[Verdict, str] | None:
    """('rollback' | 'keep', evidence) once ``policy.windows`` windows have both versions'
    metric (oldest first); None before that."""
    pairs = sorted(
        (w.get("start") or "", wid, float(w["stable"]), float(w["previous"]))
        for wid, w in watch.get("windows", {}).items()
        if "stable" in w and "previous" in w
    )[: policy.windows]
    if len(pairs) < policy.windows:
        return None
    m = policy.metric
    worse = [_worse(m, s, p, policy.margin) for _, _, s, p in pairs]
    lines = "; ".join(f"{wid}: {m} {s:.4f} vs {p:.4f} ({s - p:+.4f})" for _, wid, s, p in pairs)
    head = (
        f"version {watch['stable']} worse than version {watch['previous']} by more than "
        f"{policy.margin:g} {m} on all {len(pairs)} labelled windows since its promotion"
        if all(worse)
        else f"version {watch['stable']} kept: not worse than version {watch['previous']} by "
        f"more than {policy.margin:g} {m} on {worse.count(False)} of {len(pairs)} windows"
    )
    return ("rollback" if all(worse) else "keep"), f"{head}: {lines}"


def comparison(entries: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """A challenger beside stable on the windows since its evaluation (label-weighted)."""
    both = [
        e
        for e in entries
        if metric in e.get("challenger", {}) and metric in e.get("stable", {}) and e["labelled"]
    ]
    out: dict[str, Any] = {"metric": metric, "windows": sorted(entries, key=_start)}
    if not both:
        out["summary"] = (
            f"no labelled window since its evaluation yet ({len(entries)} scored)"
            if entries
            else "not scored on live data yet"
        )
        return out
    w = sum(e["labelled"] for e in both)
    c = sum(e["challenger"][metric] * e["labelled"] for e in both) / w
    s = sum(e["stable"][metric] * e["labelled"] for e in both) / w
    n = len(both)
    out.update(
        challenger=c,
        stable=s,
        labelled=w,
        summary=f"on {n} window{'s' if n != 1 else ''} since its evaluation: "
        f"{metric.upper() if len(metric) <= 4 else metric} {c:.3f} vs {s:.3f} (stable)",
    )
    return out


def _start(e: dict[str, Any]) -> str:
    return str(e.get("start") or "")


class QualityGate:
    """The promoter's side of live quality, over the keys it shares with the monitor."""

    def __init__(self, redis: Redis, policies: dict[str, RollbackPolicy]) -> None:
        self.redis = redis
        self.policies = policies

    def policy(self, model: str) -> RollbackPolicy:
        return self.policies.get(model, RollbackPolicy())

    async def offer(self, c: ModelCandidate) -> None:
        entry = {"model_uri": c.model_uri, "eval_window": c.eval_window}
        await self.redis.hset(keys.challengers(c.model), c.candidate_id, orjson.dumps(entry))

    async def withdraw(self, model: str, candidate_id: str) -> None:
        await self.redis.hdel(keys.challengers(model), candidate_id)

    async def live(self, model: str, candidate_id: str) -> dict[str, Any]:
        raw = await self.redis.hgetall(keys.challenger_scores(model, candidate_id))
        entries = [orjson.loads(v) for v in raw.values()]
        return comparison(entries, self.policy(model).metric)

    async def start_watch(self, model: str, stable: int, previous: int, candidate: str) -> bool:
        if not self.policy(model).enabled:
            return False
        watch = {"stable": stable, "previous": previous, "candidate": candidate, "windows": {}}
        await self.redis.set(keys.rollback_watch(model), orjson.dumps(watch))
        return True

    async def end_watch(self, model: str) -> None:
        await self.redis.delete(keys.rollback_watch(model))

    async def watch(self, model: str) -> dict[str, Any] | None:
        raw = await self.redis.get(keys.rollback_watch(model))
        return dict(orjson.loads(raw)) if raw else None

    async def observe(self, ev: WindowScored) -> tuple[dict[str, Any], Verdict, str] | None:
        """Record a scored window of a watched promotion; the verdict once it is due."""
        if ev.role not in ("stable", "previous"):
            return None
        watch = await self.watch(ev.model)
        if watch is None or int(watch[ev.role]) != ev.version:
            return None
        p = self.policy(ev.model)
        value = ev.metrics.realized.get(p.metric)
        if value is None or ev.label_coverage < p.min_coverage:
            return None
        w = watch["windows"].setdefault(ev.window_id, {})
        w[ev.role] = value
        w["start"] = ev.window_start.isoformat() if ev.window_start else ""
        await self.redis.set(keys.rollback_watch(ev.model), orjson.dumps(watch))
        verdict = judge(watch, p)
        return None if verdict is None else (watch, verdict[0], verdict[1])
