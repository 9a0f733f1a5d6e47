"""Training decisions: pure functions of the model's state and one validation.

Policies: drift or skew over threshold for N consecutive windows (re-armed only
after M calm windows: hysteresis), enough new examples since the last run, a
model older than its maximum age, and manual requests. Guards: never train on
windows with blocking anomalies, a cooldown, one run in flight per model, a
daily run budget. Every decision, taken or declined, carries its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Reason = Literal["drift", "skew", "new_examples", "model_age", "manual"]


@dataclass(frozen=True)
class Policy:
    consecutive: int = 2
    rearm_calm: int = 1
    min_new_examples: int = 0  # 0: this policy is off
    max_model_age_s: float = 0  # 0: off
    cooldown_s: float = 600
    daily_budget: int = 4
    training_windows: int = 4


@dataclass(frozen=True)
class WindowInfo:
    window_id: str
    start: str  # ISO 8601: sorts in event-time order
    example_count: int
    data_uri: str
    verdict: str
    blocking: bool
    # Distances over threshold in this window: "feature drift linf 0.069 > 0.06".
    crossed: tuple[str, ...] = ()


@dataclass
class ModelState:
    """Per model; persisted as JSON in Redis between events."""

    consecutive_drift: int = 0
    consecutive_skew: int = 0
    armed: bool = True
    calm_streak: int = 0
    new_examples: int = 0
    last_run_at: float | None = None
    last_success_at: float | None = None
    in_flight: str | None = None
    runs_by_day: dict[str, int] = field(default_factory=dict)
    windows: list[WindowInfo] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["windows"] = [w.__dict__ for w in self.windows]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelState:
        d = dict(d)
        d["windows"] = [
            WindowInfo(**{**w, "crossed": tuple(w.get("crossed", ()))})
            for w in d.get("windows", [])
        ]
        return cls(**d)


@dataclass(frozen=True)
class Decision:
    take: bool
    reason: str  # why it ran, or why it did not
    trigger: Reason | None = None
    train_windows: tuple[str, ...] = ()
    eval_window: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)


def _day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


def observe(state: ModelState, w: WindowInfo, keep: int = 64) -> bool:
    """Fold a validated window into the state; False if it was already seen."""
    if w.window_id in state.seen:
        return False
    state.seen = [*state.seen, w.window_id][-4 * keep :]
    state.windows = sorted([*state.windows, w], key=lambda x: (x.start, x.window_id))[-keep:]
    if w.blocking:
        return True  # an anomalous window neither counts as drift nor as new data
    state.new_examples += w.example_count
    drift, skew = w.verdict == "drift", w.verdict == "skew"
    state.consecutive_drift = state.consecutive_drift + 1 if drift else 0
    state.consecutive_skew = state.consecutive_skew + 1 if skew else 0
    if drift or skew:
        state.calm_streak = 0
    else:
        state.calm_streak += 1
    return True


def decide(
    state: ModelState,
    now: float,
    policy: Policy,
    manual: bool = False,
    newest: WindowInfo | None = None,
) -> Decision:
    """Whether to start a run now, on which windows, and why (or why not)."""
    if not state.armed and state.calm_streak >= policy.rearm_calm:
        state.armed = True
    trigger: Reason | None = None
    if manual:
        trigger = "manual"
    elif state.armed and state.consecutive_drift >= policy.consecutive:
        trigger = "drift"
    elif state.armed and state.consecutive_skew >= policy.consecutive:
        trigger = "skew"
    elif policy.min_new_examples and state.new_examples >= policy.min_new_examples:
        trigger = "new_examples"
    elif policy.max_model_age_s and state.last_success_at is not None:
        if now - state.last_success_at >= policy.max_model_age_s:
            trigger = "model_age"
    inputs = {
        "consecutive_drift": state.consecutive_drift,
        "consecutive_skew": state.consecutive_skew,
        "new_examples": state.new_examples,
        "armed": state.armed,
        "newest": newest.window_id if newest else None,
    }
    if trigger is None:
        return Decision(False, "no policy fired", inputs=inputs)
    if newest is not None and newest.blocking and not manual:
        return Decision(
            False, f"{trigger}: newest window has blocking anomalies", trigger, inputs=inputs
        )
    if state.in_flight:
        return Decision(
            False, f"{trigger}: run {state.in_flight} still in flight", trigger, inputs=inputs
        )
    if state.last_run_at is not None and now - state.last_run_at < policy.cooldown_s:
        left = policy.cooldown_s - (now - state.last_run_at)
        return Decision(False, f"{trigger}: cooldown, {left:.0f}s left", trigger, inputs=inputs)
    if state.runs_by_day.get(_day(now), 0) >= policy.daily_budget:
        return Decision(
            False,
            f"{trigger}: daily budget of {policy.daily_budget} runs spent",
            trigger,
            inputs=inputs,
        )
    usable = [w for w in state.windows if not w.blocking]
    if len(usable) < 2:
        return Decision(
            False, f"{trigger}: need 2 clean windows, have {len(usable)}", trigger, inputs=inputs
        )
    eval_w = usable[-1]
    train = usable[-1 - policy.training_windows : -1]
    return Decision(
        True,
        trigger,
        trigger,
        tuple(w.window_id for w in train),
        eval_w.window_id,
        inputs,
    )


def started(state: ModelState, run_id: str, now: float) -> None:
    state.in_flight = run_id
    state.last_run_at = now
    day = _day(now)
    state.runs_by_day = {day: state.runs_by_day.get(day, 0) + 1}
    state.new_examples = 0
    state.armed = False
    state.consecutive_drift = state.consecutive_skew = 0
    state.calm_streak = 0


def finished(state: ModelState, run_id: str, ok: bool, now: float) -> None:
    if state.in_flight == run_id:
        state.in_flight = None
    if ok:
        state.last_success_at = now
