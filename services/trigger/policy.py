"""Training decisions: pure functions of a model's state and one judged period.

The validator judges event-time *periods* (all windows of one stream and one
period, whatever partition they came from; or a run of small periods measured
together). The trigger folds each judged period into the model's state and
decides whether to start a run, on which periods, and why, or why not.

Episodes follow the model, not the calendar: a promotion (the serving model
changes) starts a new episode, streaks count afresh and skew is measured
against the new model's training data. Within an episode a run disarms the
trigger until its outcome is known: a failed run, an unblessed or rejected
candidate re-arms it, and a condition that still holds starts the next attempt
after the cooldown, stretched by ``backoff`` per unresolved attempt, within the
budget. Every decision names the policy that held and the guard that stopped
it; "no policy fired" only when no condition holds.

Policies, first that holds wins: manual, drift for N judged periods in a row,
skew likewise, the serving model's quality on live data below its floor (or below its
own evaluation by more than a margin) for N scored windows in a row, enough new
examples, model too old. Guards, in order: blocking
anomalies in the newest period, a run in flight, disarmed by a run whose
outcome is awaited, cooldown/back-off, budget, not enough data.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from shared.model_fields import PolicyFields

Reason = Literal["drift", "skew", "quality", "new_examples", "model_age", "manual"]
QualitySource = Literal["realized", "estimated"]
# Metrics where a smaller value is better: their "floor" is a ceiling.
LOWER_IS_BETTER = frozenset({"rmse", "mae", "log_loss", "brier", "ece"})
ClockKind = Literal["wall", "event"]
BUDGET_PERIOD_S = 86_400.0
_D = PolicyFields()


@dataclass(frozen=True)
class Policy:
    # Defaults are the settings' own (shared/model_fields.py): declared there once.
    consecutive: int = _D.consecutive
    min_new_examples: int = _D.min_new_examples  # 0: this policy is off
    max_model_age_s: float = _D.max_model_age_s  # 0: off
    cooldown_s: float = _D.cooldown_s
    backoff: float = _D.backoff  # the wait grows by this factor per unresolved attempt
    max_wait_s: float = _D.max_wait_s
    daily_budget: int = _D.daily_budget  # runs in any 24 h of the policy's clock
    min_train_examples: int = _D.min_train_examples
    max_train_examples: int = _D.max_train_examples
    min_eval_examples: int = _D.min_eval_examples
    clock: ClockKind = _D.clock
    # Quality on live data (the monitor's WindowScored): off when the metric is "" (the
    # settings' "auto" resolved by the task, services/trigger/config.py).
    quality_metric: str = ""
    quality_floor: float | None = _D.quality_floor  # worse than this: a poor window
    quality_margin: float = _D.quality_margin  # worse than its own evaluation by more: poor
    quality_consecutive: int = _D.quality_consecutive  # poor windows in a row (0: consecutive)
    quality_source: QualitySource = _D.quality_source
    quality_min_coverage: float = _D.quality_min_coverage  # realized counts from this coverage
    # Labels joined from their own stream (docs/models.md, "Labels"): data is sized by
    # labelled examples; evaluation takes periods whose labels matured.
    label_stream: bool = False
    label_maturity_s: float = 0.0
    label_default: bool = False  # unlabelled examples of a matured period get the default
    # A drift or skew run trains on the world after the change: it waits until this share
    # of its training examples comes from the periods since the streak that fired began
    # (0: off; the newest periods before evaluation, whatever their side of the change).
    post_change_share: float = _D.post_change_share

    def wait_s(self, attempts: int) -> float:
        """Minimum time since the last run, after ``attempts`` unresolved runs this episode."""
        return min(self.cooldown_s * self.backoff ** max(0, attempts - 1), self.max_wait_s)


@dataclass(frozen=True)
class WindowInfo:
    """One judged unit: a period (its windows from every partition) or a group of small ones."""

    window_id: str
    start: str  # ISO 8601: sorts in event-time order
    example_count: int
    verdict: str
    blocking: bool
    # Distances over threshold: "feature skew linf 0.12 > 0.06".
    crossed: tuple[str, ...] = ()
    drift: bool = False
    skew: bool = False
    end_s: float = 0.0  # event time (epoch s) of the unit's end: the data's clock
    members: tuple[str, ...] = ()  # the window shards it is made of
    data_uris: tuple[str, ...] = ()
    member_counts: tuple[int, ...] = ()
    # Labels joined to its examples so far (-1: labels travel inside the examples).
    labelled: int = -1

    @property
    def usable(self) -> bool:
        return not self.blocking and bool(self.data_uris)

    def matured(self, policy: Policy, label_now: float | None) -> bool:
        """Its labels are complete enough to use (always, for labels inside examples)."""
        if self.labelled < 0:
            return True
        return label_now is not None and self.end_s + policy.label_maturity_s <= label_now

    def trainable(self, policy: Policy, label_now: float | None) -> int:
        """Examples a run can train or evaluate on: labelled, or all once matured with a
        default label."""
        if self.labelled < 0 or (policy.label_default and self.matured(policy, label_now)):
            return self.example_count
        return min(self.labelled, self.example_count)


@dataclass
class ModelState:
    """Per model; persisted as JSON in Redis between events."""

    episode: str = ""  # model now serving ("": nothing yet)
    episode_started: float | None = None
    consecutive_drift: int = 0
    consecutive_skew: int = 0
    attempts: int = 0  # runs this episode that did not resolve it
    disarmed_by: str | None = None  # the run whose outcome is awaited
    awaiting: str | None = None  # its candidate, waiting for the promoter's decision
    new_examples: int = 0
    last_run_at: float | None = None
    last_success_at: float | None = None
    in_flight: str | None = None
    run_times: list[float] = field(default_factory=list)
    event_now: float | None = None
    windows: list[WindowInfo] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    # Quality: windows scored poor in a row, the windows already judged, the serving
    # model's version and its own evaluation (TFMA, overall) to compare live quality with.
    consecutive_quality: int = 0
    quality_seen: list[str] = field(default_factory=list)
    quality_last: str = ""
    serving_version: int | None = None
    serving_eval: dict[str, float] = field(default_factory=dict)
    # The labels' clock (event time, s): the newest example or label seen.
    label_now: float | None = None

    @property
    def armed(self) -> bool:
        return self.disarmed_by is None

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["windows"] = [w.__dict__ for w in self.windows]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelState:
        known = {f.name for f in fields(cls)}
        wknown = {f.name for f in fields(WindowInfo)}
        d = {k: v for k, v in d.items() if k in known}
        windows: list[WindowInfo] = []
        for w in d.get("windows", []):
            kw: dict[str, Any] = {
                k: (tuple(v) if isinstance(v, list) else v) for k, v in w.items() if k in wknown
            }
            windows.append(WindowInfo(**kw))
        d["windows"] = windows
        return cls(**d)


@dataclass(frozen=True)
class Decision:
    take: bool
    reason: str  # why it ran, or which policy held and which guard stopped it
    trigger: Reason | None = None
    guard: str | None = None  # blocking, in_flight, disarmed, cooldown, budget, data
    train: tuple[WindowInfo, ...] = ()
    evaluation: tuple[WindowInfo, ...] = ()
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def train_windows(self) -> tuple[str, ...]:
        return tuple(m for w in self.train for m in w.members)

    @property
    def eval_windows(self) -> tuple[str, ...]:
        return tuple(m for w in self.evaluation for m in w.members)

    @property
    def train_examples(self) -> int:
        """Examples a run trains on (labelled ones, with labels from their own stream)."""
        return int(self.inputs.get("train_examples", sum(w.example_count for w in self.train)))

    @property
    def eval_examples(self) -> int:
        return int(self.inputs.get("eval_examples", sum(w.example_count for w in self.evaluation)))


def now_of(state: ModelState, policy: Policy, wall: float) -> float:
    """The policy's clock: wall time, or the data's (the newest judged period's end)."""
    if policy.clock == "event":
        return state.event_now if state.event_now is not None else 0.0
    return wall


def amends(state: ModelState, w: WindowInfo) -> bool:
    """``w`` is a period judged again with a window that arrived late: it covers exactly
    one observed unit, of the same start (not a group of several small periods)."""
    covered = set(w.members)
    replaced = [x for x in state.windows if x.members and set(x.members) <= covered]
    return len(replaced) == 1 and replaced[0].start == w.start and w.window_id not in state.seen


def observe(state: ModelState, w: WindowInfo, keep: int = 256) -> bool:
    """Fold a judged unit into the state; False if it was already seen."""
    if w.window_id in state.seen:
        return False
    amended = amends(state, w)
    state.seen = [*state.seen, w.window_id][-4 * keep :]
    if w.end_s and (state.event_now is None or w.end_s > state.event_now):
        state.event_now = w.end_s
    # A group of small periods replaces the periods it was measured from.
    covered = set(w.members)
    replaced = [x for x in state.windows if x.members and set(x.members) <= covered]
    kept = [x for x in state.windows if x not in replaced]
    state.windows = sorted([*kept, w], key=lambda x: (x.start, x.window_id))[-keep:]
    if amended:
        # The same period, not a new one: its data replaces the first verdict's and the
        # streaks stay as they were.
        state.new_examples += max(0, w.example_count - replaced[0].example_count)
        return True
    if w.blocking:
        return True  # an anomalous period counts neither as drift nor as new data
    state.new_examples += w.example_count
    if w.verdict == "insufficient_data":
        return True  # too small to judge: neither calm nor drifted
    state.consecutive_drift = state.consecutive_drift + 1 if w.drift else 0
    state.consecutive_skew = state.consecutive_skew + 1 if w.skew else 0
    return True


def new_episode(state: ModelState, serving: str, now: float) -> bool:
    """The serving model changed (a promotion or rollback): counts start afresh."""
    if serving == state.episode:
        return False
    state.episode = serving
    state.episode_started = now
    state.consecutive_drift = state.consecutive_skew = 0
    state.consecutive_quality = 0
    state.attempts = 0
    state.disarmed_by = state.awaiting = None
    state.new_examples = 0
    return True


@dataclass(frozen=True)
class QualityInfo:
    """One scored window as the quality policy sees it (from a ``WindowScored``)."""

    window_id: str
    version: int
    label_coverage: float
    realized: dict[str, float]
    estimated: dict[str, float]


def quality_verdict(q: QualityInfo, state: ModelState, policy: Policy) -> tuple[bool, str] | None:
    """(poor?, why) for a scored window, or None when it does not count (policy off, too
    few labels, no such metric, or a version other than the one serving now)."""
    metric = policy.quality_metric
    if not metric:
        return None
    if state.serving_version is not None and q.version != state.serving_version:
        return None
    if policy.quality_source == "realized":
        if q.label_coverage < policy.quality_min_coverage:
            return None
        value = q.realized.get(metric)
    else:
        value = q.estimated.get(metric, q.realized.get(metric))
    if value is None:
        return None
    lower = metric in LOWER_IS_BETTER
    worse = (lambda a, b: a > b) if lower else (lambda a, b: a < b)
    what = f"{policy.quality_source} {metric} {value:.4f} on {q.window_id}"
    if policy.quality_floor is not None and worse(value, policy.quality_floor):
        bound = "ceiling" if lower else "floor"
        return True, f"{what} {'above' if lower else 'below'} the {bound} {policy.quality_floor:g}"
    own = state.serving_eval.get(metric)
    if policy.quality_margin and own is not None:
        bar = own + policy.quality_margin if lower else own - policy.quality_margin
        if worse(value, bar):
            return True, (
                f"{what} worse than its own evaluation {own:.4f} by more than "
                f"{policy.quality_margin:g}"
            )
    return False, f"{what} within bounds"


def observe_quality(
    state: ModelState, q: QualityInfo, policy: Policy, keep: int = 256
) -> str | None:
    """Fold a scored window into the quality streak; None if it does not count or was seen."""
    if q.window_id in state.quality_seen:
        return None
    verdict = quality_verdict(q, state, policy)
    if verdict is None:
        return None
    poor, why = verdict
    state.quality_seen = [*state.quality_seen, q.window_id][-4 * keep :]
    state.consecutive_quality = state.consecutive_quality + 1 if poor else 0
    state.quality_last = why
    return why


def _held(state: ModelState, now: float, policy: Policy, manual: bool) -> list[tuple[Reason, str]]:
    held: list[tuple[Reason, str]] = []
    if manual:
        held.append(("manual", "an operator asked"))
    k = policy.consecutive
    if state.consecutive_drift >= k:
        held.append(
            ("drift", f"drift in {state.consecutive_drift} judged periods in a row (>= {k})")
        )
    if state.consecutive_skew >= k:
        held.append(("skew", f"skew in {state.consecutive_skew} judged periods in a row (>= {k})"))
    kq = policy.quality_consecutive or k
    if policy.quality_metric and state.consecutive_quality >= kq:
        held.append(
            (
                "quality",
                f"quality poor in {state.consecutive_quality} scored windows in a row (>= {kq}): "
                f"{state.quality_last}",
            )
        )
    if policy.min_new_examples and state.new_examples >= policy.min_new_examples:
        held.append(
            ("new_examples", f"{state.new_examples} new examples (>= {policy.min_new_examples})")
        )
    if policy.max_model_age_s and state.last_success_at is not None:
        age = now - state.last_success_at
        if age >= policy.max_model_age_s:
            held.append(("model_age", f"model {age:.0f}s old (>= {policy.max_model_age_s:.0f}s)"))
    return held


def change_start(state: ModelState, trigger: str | None) -> int | None:
    """Index in ``state.windows`` of the first period of the drift or skew streak now
    holding (periods too small to judge inside it do not break it), or None."""
    if trigger not in ("drift", "skew"):
        return None
    need = state.consecutive_drift if trigger == "drift" else state.consecutive_skew
    start = None
    for i in range(len(state.windows) - 1, -1, -1):
        if need <= 0:
            break
        w = state.windows[i]
        if w.verdict == "insufficient_data":
            continue
        if not (w.drift if trigger == "drift" else w.skew):
            break
        start, need = i, need - 1
    return start


def select(
    state: ModelState, policy: Policy, trigger: str | None = None
) -> tuple[tuple[WindowInfo, ...], tuple[WindowInfo, ...], str | None]:
    """(train, eval, problem): the newest usable periods sized by examples, newest first.

    Evaluation takes the newest periods whose labels matured until they hold
    ``min_eval_examples`` and at least one was large enough to judge alone; training
    takes the periods before them until ``min_train_examples``, never past
    ``max_train_examples``. With labels from their own stream an example counts once it
    is labelled (or defaulted at maturity).
    """
    now = state.label_now

    def n_of(w: WindowInfo) -> int:
        return w.trainable(policy, now)

    usable = [w for w in state.windows if w.usable]
    ev: list[WindowInfo] = []
    n = 0
    last = len(usable)
    while last and not usable[last - 1].matured(policy, now):
        last -= 1  # labels still coming: newer than any evaluation window
    for w in reversed(usable[:last]):
        ev.insert(0, w)
        n += n_of(w)
        if n >= policy.min_eval_examples and any(x.verdict != "insufficient_data" for x in ev):
            break
    else:
        return (), (), _short(state, policy, "evaluation", policy.min_eval_examples, n)
    tr: list[WindowInfo] = []
    m = 0
    for w in reversed(usable[: last - len(ev)]):
        k = n_of(w)
        if tr and m + k > policy.max_train_examples:
            break
        tr.insert(0, w)
        m += k
        if m >= policy.min_train_examples:
            break
    if m < policy.min_train_examples:
        return (
            (),
            (),
            _short(state, policy, "training", policy.min_train_examples, m, before=n),
        )
    start = change_start(state, trigger) if policy.post_change_share > 0 else None
    if start is not None:
        first = state.windows[start]
        after = sum(n_of(w) for w in tr if w.start >= first.start)
        want = int(policy.post_change_share * policy.min_train_examples)
        if after < want:
            return (
                (),
                (),
                f"waiting for data after the change: {after:,} training examples since "
                f"{first.window_id} of {want:,} ({policy.post_change_share:.0%} of "
                f"{policy.min_train_examples:,}) besides the {n:,} evaluation examples",
            )
    return tuple(tr), tuple(ev), None


def _short(
    state: ModelState, policy: Policy, what: str, need: int, have: int, before: int = 0
) -> str:
    if not policy.label_stream:
        if what == "evaluation":
            return f"need {need} evaluation examples in judged periods, have {have}"
        return f"need {need} training examples before the {before} evaluation examples, have {have}"
    text = f"waiting for labels: {have:,} labelled {what} examples of {need:,} needed"
    pending = [w for w in state.windows if w.usable and not w.matured(policy, state.label_now)]
    if pending:
        w = pending[0]
        left = w.end_s + policy.label_maturity_s - (state.label_now or w.end_s)
        text += f"; window {w.window_id} matures in {_span(left)}"
    return text


def _span(seconds: float) -> str:
    s = max(0.0, seconds)
    if s >= 86_400:
        return f"{s / 86_400:.0f} d"
    if s >= 3600:
        return f"{s / 3600:.0f} h"
    return f"{s:.0f} s"


def decide(
    state: ModelState,
    now: float,
    policy: Policy,
    manual: bool = False,
    newest: WindowInfo | None = None,
) -> Decision:
    """Whether to start a run now, on which periods, and why (or why not)."""
    inputs: dict[str, Any] = {
        "consecutive_drift": state.consecutive_drift,
        "consecutive_skew": state.consecutive_skew,
        "consecutive_quality": state.consecutive_quality,
        "new_examples": state.new_examples,
        "armed": state.armed,
        "attempts": state.attempts,
        "episode": state.episode,
        "now": now,
        "newest": newest.window_id if newest else None,
    }
    held = _held(state, now, policy, manual)
    if not held:
        streaks = f"drift streak {state.consecutive_drift}, skew streak {state.consecutive_skew}"
        if newest is not None and newest.verdict == "insufficient_data":
            return Decision(
                False,
                f"no policy fired: {newest.window_id} too small to judge ({streaks})",
                inputs=inputs,
            )
        return Decision(
            False, f"no policy fired ({streaks}, need {policy.consecutive})", inputs=inputs
        )
    trigger, why = held[0]
    inputs["held"] = [r for r, _ in held]

    def stop(guard: str, text: str) -> Decision:
        return Decision(
            False, f"{trigger} held ({why}); stopped: {text}", trigger, guard, inputs=inputs
        )

    if newest is not None and newest.blocking and not manual:
        return stop("blocking", f"the newest period {newest.window_id} has blocking anomalies")
    if state.in_flight:
        return stop("in_flight", f"run {state.in_flight} still in flight")
    if state.disarmed_by and not manual:
        waiting = (
            f"candidate {state.awaiting} awaits a decision"
            if state.awaiting
            else "its outcome is awaited"
        )
        return stop("disarmed", f"disarmed since run {state.disarmed_by} ({waiting})")
    if state.last_run_at is not None:
        wait = policy.wait_s(state.attempts)
        left = wait - (now - state.last_run_at)
        if left > 0:
            what = (
                "cooldown" if state.attempts <= 1 else f"back-off after {state.attempts} attempts"
            )
            return stop("cooldown", f"{what}, {left:.0f}s of {wait:.0f}s left")
    recent = [t for t in state.run_times if now - t < BUDGET_PERIOD_S]
    if len(recent) >= policy.daily_budget:
        return stop("budget", f"budget of {policy.daily_budget} runs per 24 h spent")
    train, ev, problem = select(state, policy, None if manual else trigger)
    if problem:
        return stop("labels" if problem.startswith("waiting for labels") else "data", problem)
    return Decision(
        True,
        f"{trigger}: {why}",
        trigger,
        None,
        train,
        ev,
        {
            **inputs,
            "train_examples": sum(w.trainable(policy, state.label_now) for w in train),
            "eval_examples": sum(w.trainable(policy, state.label_now) for w in ev),
        },
    )


def started(state: ModelState, run_id: str, now: float, manual: bool = False) -> None:
    state.in_flight = run_id
    state.disarmed_by = run_id
    state.awaiting = None
    state.last_run_at = now
    state.run_times = [t for t in state.run_times if now - t < BUDGET_PERIOD_S] + [now]
    state.new_examples = 0
    state.attempts += 1


def finished(
    state: ModelState, run_id: str, ok: bool, now: float, candidate: str | None = None
) -> None:
    """A run ended: a blessed candidate keeps the trigger disarmed until the promoter decides."""
    if state.in_flight == run_id:
        state.in_flight = None
    if ok:
        state.last_success_at = now
    if state.disarmed_by == run_id:
        if ok and candidate:
            state.awaiting = candidate
        else:
            state.disarmed_by = state.awaiting = None


def resolved(state: ModelState, candidate: str, promoted: bool) -> bool:
    """The promoter decided on a candidate: rejected or failed re-arms; promoted waits
    for the episode change (the serving model the next validation sees)."""
    if state.awaiting != candidate:
        return False
    if not promoted:
        state.disarmed_by = state.awaiting = None
    return True
