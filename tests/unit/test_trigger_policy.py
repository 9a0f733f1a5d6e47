from __future__ import annotations

import pytest

from services.trigger import policy as pol

pytestmark = pytest.mark.unit
DAY = 86_400.0


def win(i: int, verdict: str = "ok", blocking: bool = False, n: int = 1000) -> pol.WindowInfo:
    return pol.WindowInfo(f"w{i:03d}", f"2014-01-{i + 1:02d}", n, f"/s/w{i}", verdict, blocking)


def feed(state: pol.ModelState, *ws: pol.WindowInfo) -> None:
    for w in ws:
        pol.observe(state, w)


def test_drift_needs_n_consecutive_windows() -> None:
    p = pol.Policy(consecutive=2, cooldown_s=0)
    s = pol.ModelState()
    feed(s, win(0), win(1, "drift"))
    assert not pol.decide(s, 0, p).take
    feed(s, win(2, "ok"), win(3, "drift"))
    assert not pol.decide(s, 0, p).take  # the streak was broken
    feed(s, win(4, "drift"))
    d = pol.decide(s, 0, p, newest=win(4, "drift"))
    assert d.take and d.trigger == "drift"
    assert d.eval_window == "w004" and d.train_windows == ("w000", "w001", "w002", "w003")


def test_hysteresis_rearms_only_after_calm_windows() -> None:
    p = pol.Policy(consecutive=1, rearm_calm=2, cooldown_s=0)
    s = pol.ModelState()
    feed(s, win(0), win(1, "drift"))
    d = pol.decide(s, 0, p)
    assert d.take
    pol.started(s, "r1", 0)
    pol.finished(s, "r1", True, 10)
    feed(s, win(2, "drift"))
    assert not pol.decide(s, 20, p).take  # still drifting, not re-armed
    feed(s, win(3), win(4))
    assert not pol.decide(s, 30, p).take and s.armed
    feed(s, win(5, "drift"))
    assert pol.decide(s, 40, p).take


def test_guards_blocking_cooldown_in_flight_budget() -> None:
    p = pol.Policy(consecutive=1, cooldown_s=600, daily_budget=1)
    s = pol.ModelState()
    bad = win(1, "drift", blocking=True)
    feed(s, win(0), bad)
    d = pol.decide(s, 0, p, newest=bad)
    assert not d.take  # the blocking window is not even counted as drift
    feed(s, win(2, "drift"))
    s.in_flight = "r0"
    d = pol.decide(s, 0, p, newest=win(2, "drift"))
    assert not d.take and "in flight" in d.reason
    s.in_flight = None
    d = pol.decide(s, 0, p, newest=win(2, "drift"))
    assert d.take and "w001" not in d.train_windows  # blocked windows never train
    pol.started(s, "r1", 0)
    pol.finished(s, "r1", True, 5)
    feed(s, win(3, "drift"))
    d = pol.decide(s, 100, p, newest=win(3, "drift"))
    assert not d.take and ("cooldown" in d.reason or "no policy" in d.reason)
    s.armed = True
    s.consecutive_drift = 1
    d = pol.decide(s, 1000, p)
    assert not d.take and "budget" in d.reason
    d = pol.decide(s, DAY + 1000, p)
    assert d.take


def test_newest_window_with_blocking_anomalies_declines_with_reason() -> None:
    p = pol.Policy(consecutive=1, cooldown_s=0)
    s = pol.ModelState()
    feed(s, win(0), win(1, "drift"))
    d = pol.decide(s, 0, p, newest=win(2, blocking=True))
    assert not d.take and "blocking anomalies" in d.reason and d.trigger == "drift"


def test_new_examples_and_model_age_and_manual() -> None:
    s = pol.ModelState()
    feed(s, win(0, n=600), win(1, n=600))
    assert (
        pol.decide(s, 0, pol.Policy(min_new_examples=1000, cooldown_s=0)).trigger == "new_examples"
    )
    s2 = pol.ModelState(last_success_at=0.0)
    feed(s2, win(0), win(1))
    assert (
        pol.decide(s2, 2 * DAY, pol.Policy(max_model_age_s=DAY, cooldown_s=0)).trigger
        == "model_age"
    )
    assert pol.decide(s2, 0, pol.Policy(cooldown_s=0), manual=True).trigger == "manual"
    lonely = pol.ModelState()
    feed(lonely, win(0))
    d = pol.decide(lonely, 0, pol.Policy(cooldown_s=0), manual=True)
    assert not d.take and "2 clean windows" in d.reason


def test_redelivered_window_is_not_counted_twice() -> None:
    s = pol.ModelState()
    assert pol.observe(s, win(0, "drift"))
    assert not pol.observe(s, win(0, "drift"))
    assert s.consecutive_drift == 1 and len(s.windows) == 1


def test_state_round_trips_json() -> None:
    s = pol.ModelState()
    feed(s, win(0), win(1, "drift"))
    assert pol.ModelState.from_json(s.to_json()) == s
