"""Backtests: replay a stream's history through the trigger's policy, offline and fast.

Two sources:

* **windows** (``windows/<stream>/*/window.json`` in the artifact store): periods are
  assembled as the validator assembles them (every partition's window of one period,
  small periods grouped), profiled with TFDV, and their drift and skew *recomputed*
  with the thresholds given. Skew is measured against the simulated serving model:
  the first judged period until a simulated promotion, then the periods that trained
  the promoted candidate, as the live loop does.
* **validations** (period verdicts recorded by the validator, from the artifact store
  or the topic): distances as measured live; thresholds given on the command line
  re-decide which of them crossed.

Runs are simulated: a run started on one period ends ``delay`` periods later with the
next outcome of a plan (``promote``, ``reject``, ``fail``; cycled). The policy always
runs on event time here (a backtest has no wall clock worth the name). With a label
delay, labels arrive that long after their example (spread evenly over each period):
a period counts the examples labelled by the newest period's end, and matures once it
is ``label_delay_s`` old, so the report shows when runs become possible.

The report says when runs would have started and why, the periods of each episode,
how many periods passed from the first crossing of an episode to its run, and false
alarms: runs whose trigger no longer held in the next judged period measured against
the same serving model (the shift did not persist).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from services.trigger import policy as pol
from services.validator import checks
from services.validator import periods as per
from shared.events import WindowClosed, WindowValidated

Outcome = Literal["promote", "reject", "fail"]


@dataclass(frozen=True)
class Judged:
    """One judged period as the backtest sees it."""

    unit_id: str
    start_s: float
    end_s: float
    count: int
    verdict: str
    drift: bool
    skew: bool
    blocking: bool
    crossed: tuple[str, ...]
    top: str  # the largest distance relative to its threshold, in words
    members: tuple[str, ...]

    def info(self) -> pol.WindowInfo:
        return pol.WindowInfo(
            window_id=self.unit_id,
            start=f"{self.start_s:020.3f}",
            example_count=self.count,
            verdict=self.verdict,
            blocking=self.blocking,
            crossed=self.crossed,
            drift=self.drift,
            skew=self.skew,
            end_s=self.end_s,
            members=self.members,
            data_uris=self.members,  # a backtest trains nothing: any non-empty marker
        )


@dataclass
class Run:
    index: int  # judged period at which it started
    unit_id: str
    trigger: str
    reason: str
    episode: int
    since_episode: int  # judged periods from the episode's start to this run
    since_crossing: int  # judged periods from the start of the streak that fired to this run
    train_examples: int
    eval_examples: int
    outcome: Outcome | None = None
    false_alarm: bool | None = None
    train_windows: tuple[str, ...] = ()
    eval_windows: tuple[str, ...] = ()
    # Event time from the start of the streak that fired to the end of this run's period.
    since_crossing_s: float = 0.0


@dataclass
class Report:
    periods: list[dict[str, Any]] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    episodes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def false_alarms(self) -> int:
        return sum(1 for r in self.runs if r.false_alarm)

    def to_json(self) -> dict[str, Any]:
        return {
            "periods": self.periods,
            "runs": [r.__dict__ for r in self.runs],
            "episodes": self.episodes,
            "false_alarms": self.false_alarms,
        }


# A judge measures a unit against the serving model's training units (None: nothing
# promoted yet) and returns its verdict.
Judge = Callable[[int, tuple[str, ...] | None], Judged]


def simulate(
    n_units: int,
    judge: Judge,
    policy: pol.Policy,
    outcomes: Sequence[Outcome] = ("promote",),
    delay: int = 1,
    label_delay_s: float | None = None,
) -> Report:
    """Feed ``n_units`` judged periods through the policy; runs end ``delay`` periods later.
    ``label_delay_s``: labels come on their own stream this long after their example."""
    policy = replace(policy, clock="event")
    if label_delay_s is not None:
        policy = replace(
            policy,
            label_stream=True,
            label_maturity_s=policy.label_maturity_s or label_delay_s,
        )
    state = pol.ModelState()
    report = Report()
    plan = itertools.cycle(outcomes)
    serving: tuple[str, ...] | None = None
    episode, episode_start = 0, 0
    # run index -> (due period, run id, the serving model it was decided under, its training)
    pending: dict[int, tuple[int, str, tuple[str, ...] | None, tuple[str, ...]]] = {}
    decided_under: dict[int, tuple[str, ...] | None] = {}
    streak_start: dict[str, int] = {}  # where the current drift / skew streak began
    report.episodes.append({"episode": 0, "start": 0, "serving": None})
    for i in range(n_units):
        # Runs whose outcome is due: a promotion starts a new episode before this period.
        for k in sorted(k for k, p in pending.items() if p[0] <= i):
            _, run_id, _, trained = pending.pop(k)
            run = next(r for r in report.runs if r.index == k)
            run.outcome = next(plan)
            now = state.event_now or 0.0
            pol.finished(state, run_id, run.outcome != "fail", now, run_id)
            if run.outcome == "promote":
                serving = trained
                episode += 1
                episode_start = i
                pol.new_episode(state, f"episode-{episode}", now)
                report.episodes.append({"episode": episode, "start": i, "serving": run.unit_id})
            elif run.outcome == "reject":
                pol.resolved(state, run_id, promoted=False)
        j = judge(i, serving)
        w = j.info()
        pol.observe(state, w)
        for kind, n in (("drift", state.consecutive_drift), ("skew", state.consecutive_skew)):
            if n == 1 and streak_start.get(kind) != i and j.verdict != "insufficient_data":
                streak_start[kind] = i
        if label_delay_s is not None:
            _labelled_by(state, label_delay_s)
        d = pol.decide(state, pol.now_of(state, policy, 0.0), policy, newest=w)
        report.periods.append(
            {
                "index": i,
                "unit": j.unit_id,
                "start_s": j.start_s,
                "examples": j.count,
                "members": list(j.members),
                "verdict": j.verdict,
                "top": j.top,
                "episode": episode,
                "decision": d.reason,
                "started": d.take,
            }
        )
        # A run whose trigger no longer holds in the next judged period, measured against
        # the same serving model, was a false alarm: the change did not persist.
        if j.verdict != "insufficient_data":
            for r in report.runs:
                if r.false_alarm is None and r.index < i:
                    base = decided_under[r.index]
                    again = j if base == serving else judge(i, base)
                    r.false_alarm = not (again.drift if r.trigger == "drift" else again.skew)
        if not d.take:
            continue
        run_id = f"bt-{i}"
        report.runs.append(
            Run(
                index=i,
                unit_id=j.unit_id,
                trigger=d.trigger or "",
                reason=d.reason,
                episode=episode,
                since_episode=i - episode_start,
                since_crossing=i - streak_start.get(d.trigger or "", i),
                train_examples=d.train_examples,
                eval_examples=d.eval_examples,
                false_alarm=None if d.trigger in ("drift", "skew") else False,
                train_windows=d.train_windows,
                eval_windows=d.eval_windows,
                since_crossing_s=j.end_s
                - report.periods[streak_start.get(d.trigger or "", i)]["start_s"],
            )
        )
        decided_under[i] = serving
        pol.started(state, run_id, pol.now_of(state, policy, 0.0))
        pending[i] = (i + delay, run_id, serving, tuple(m for u in d.train for m in u.members))
    for e in report.episodes:
        e["runs"] = [r.index for r in report.runs if r.episode == e["episode"]]
        e["periods"] = sum(1 for p in report.periods if p["episode"] == e["episode"])
    return report


def _labelled_by(state: pol.ModelState, delay_s: float) -> None:
    """Each period's examples labelled by now (the newest period's end), labels coming
    ``delay_s`` after examples spread evenly over their period."""
    now = state.event_now or 0.0
    state.label_now = now
    out = []
    for w in state.windows:
        start = float(w.start)
        span = max(w.end_s - start, 1e-9)
        share = min(1.0, max(0.0, (now - delay_s - start) / span))
        out.append(replace(w, labelled=int(w.example_count * share)))
    state.windows = out


def _top(features: Iterable[Any]) -> str:
    best, text = -1.0, ""
    for f in features:
        for kind, d in (("drift", f.drift), ("skew", f.skew)):
            if d is None or d.value is None or not d.threshold:
                continue
            if d.value / d.threshold > best:
                best = d.value / d.threshold
                text = f"{f.name} {kind} {d.measure} {d.value:.3g}/{d.threshold:.3g}"
    return text


def _judged(
    unit_id: str,
    start_s: float,
    end_s: float,
    count: int,
    verdict: str,
    features: Sequence[Any],
    blocking: bool,
    members: tuple[str, ...],
) -> Judged:
    crossed, drift, skew = [], False, False
    for f in features:
        for kind, d in (("drift", f.drift), ("skew", f.skew)):
            if d is not None and d.crossed and d.value is not None:
                crossed.append(f"{f.name} {kind} {d.measure} {d.value:.4g} > {d.threshold:.4g}")
                drift |= kind == "drift"
                skew |= kind == "skew"
    return Judged(
        unit_id,
        start_s,
        end_s,
        count,
        verdict,
        drift,
        skew,
        blocking,
        tuple(crossed),
        _top(features),
        members,
    )


class WindowJudge:
    """Periods assembled from window shards as the validator does, distances recomputed."""

    def __init__(
        self,
        windows: Sequence[WindowClosed],
        schema_path: str,
        min_examples: int,
        defaults: checks.Defaults,
        max_group: int = 8,
        override: frozenset[str] = frozenset(),
    ) -> None:
        """``override``: kinds ("drift", "skew") whose thresholds come from ``defaults``
        for every feature, the schema's comparators included (what-if thresholds)."""
        from shared.schema import load_schema

        self.schema = load_schema(schema_path)
        for f in self.schema.feature:
            for kind in override:
                f.ClearField(f"{kind}_comparator")
        self.min_examples = min_examples
        self.defaults = defaults
        self.uri = {w.window_id: w.data_uri for w in windows}
        book = per.Book()
        for w in sorted(windows, key=lambda w: (w.start, w.offsets[0].partition, w.window_id)):
            start_ms, end_ms = int(w.start.timestamp() * 1000), int(w.end.timestamp() * 1000)
            parts = [f"{o.topic}:{o.partition}" for o in w.offsets]
            per.add(
                book,
                w.window_id,
                start_ms,
                end_ms,
                w.example_count,
                parts,
                w.period_ms is not None,
                0.0,
                w.close_reason != "count",
            )
        self.units: list[tuple[per.Unit, tuple[str, ...]]] = []
        for period in per.complete(book, [], 0.0, float("inf")):
            before = tuple(book.last)
            for u in per.judge(book, "backtest", period, [], min_examples, max_group):
                self.units.append((u, before))
        self._stats: dict[tuple[str, ...], Any] = {}
        self._judged: dict[tuple[int, tuple[str, ...] | None], Judged] = {}

    def __len__(self) -> int:
        return len(self.units)

    def stats(self, members: tuple[str, ...]) -> Any:
        key = tuple(sorted(members))
        if key not in self._stats:
            import pyarrow as pa

            from shared.shard import read_shard
            from shared.stats import dataset, statistics_in_memory

            table = pa.concat_tables([read_shard(self.uri[m]) for m in key], promote=True)
            self._stats[key] = dataset(statistics_in_memory(table))
        return self._stats[key]

    def __call__(self, i: int, serving: tuple[str, ...] | None) -> Judged:
        if (i, serving) in self._judged:
            return self._judged[(i, serving)]
        u, before = self.units[i]
        cur = self.stats(u.members)
        drift = {}
        if before and set(before) != set(u.members):
            drift = checks.measure(
                cur, self.stats(before), self.schema, "drift", "previous", self.defaults
            )
        base = serving or self.units[0][0].members
        skew = checks.measure(cur, self.stats(base), self.schema, "skew", "serving", self.defaults)
        features = checks.merge_features(drift, skew)
        verdict = checks.verdict(u.count, self.min_examples, [], features)
        j = _judged(
            u.unit_id,
            u.start_ms / 1000,
            u.end_ms / 1000,
            u.count,
            verdict,
            features,
            False,
            u.members,
        )
        self._judged[(i, serving)] = j
        return j


class RecordedJudge:
    """Period verdicts as the validator recorded them; given thresholds re-decide crossings."""

    def __init__(
        self,
        validations: Sequence[WindowValidated],
        min_examples: int,
        thresholds: dict[tuple[str, str], float] | None = None,
    ) -> None:
        periods = [v for v in validations if v.scope == "period"]
        # Judged order: by end, and a group (longer) after the last period it covers.
        periods.sort(key=lambda v: (_s(v.window_end), _s(v.window_end) - _s(v.window_start)))
        self.vals = list({v.window_id: v for v in periods}.values())
        self.min_examples = min_examples
        self.thresholds = thresholds or {}

    def __len__(self) -> int:
        return len(self.vals)

    def __call__(self, i: int, serving: tuple[str, ...] | None) -> Judged:
        v = self.vals[i]
        features = [self._rethreshold(f) for f in v.features]
        verdict = checks.verdict(v.example_count, self.min_examples, v.anomalies, features)
        members = tuple(m.window_id for m in v.members)
        return _judged(
            v.window_id,
            _s(v.window_start),
            _s(v.window_end),
            v.example_count,
            verdict,
            features,
            any(a.severity == "blocking" for a in v.anomalies),
            members or (v.window_id,),
        )

    def _rethreshold(self, f: Any) -> Any:
        out = {}
        for kind in ("drift", "skew"):
            d = getattr(f, kind)
            t = self.thresholds.get((kind, d.measure)) if d is not None else None
            if d is not None and t is not None:
                d = d.model_copy(
                    update={"threshold": t, "crossed": d.value is not None and d.value > t}
                )
            out[kind] = d
        return f.model_copy(update=out)


def _s(t: Any) -> float:
    return t.timestamp() if t is not None else 0.0


def load_windows(root: str | Path, stream: str) -> list[WindowClosed]:
    d = Path(root) / "windows" / stream
    return [
        WindowClosed.model_validate_json(p.read_bytes()) for p in sorted(d.glob("*/window.json"))
    ]


def load_validations(root: str | Path, stream: str) -> list[WindowValidated]:
    d = Path(root) / "validations" / stream
    out = []
    for p in sorted(d.glob("*/validated.json")):
        v = WindowValidated.model_validate_json(p.read_bytes())
        if v.scope == "period":
            out.append(v)
    return out
