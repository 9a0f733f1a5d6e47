from __future__ import annotations

import random

import pytest

from services.trigger import policy as pol

pytestmark = pytest.mark.unit
DAY = 86_400.0


def win(
    i: int, verdict: str = "ok", blocking: bool = False, n: int = 1000, members: int = 1
) -> pol.WindowInfo:
    ids = tuple(f"w{i:03d}p{p}" for p in range(members))
    return pol.WindowInfo(
        f"per{i:03d}",
        f"2014-01-{i + 1:02d}",
        n,
        verdict,
        blocking,
        crossed=(f"f {verdict} linf 0.2 > 0.1",) if verdict in ("drift", "skew") else (),
        drift=verdict == "drift",
        skew=verdict == "skew",
        end_s=(i + 1) * DAY,
        members=ids,
        data_uris=tuple(f"/s/{m}" for m in ids),
        member_counts=tuple(n // members for _ in ids),
    )


def feed(state: pol.ModelState, *ws: pol.WindowInfo) -> None:
    for w in ws:
        pol.observe(state, w)


# The newest periods before evaluation, whichever side of a change (post_change_share 0;
# the default waits for data after the change: test_labels.py).
SMALL = dict(min_train_examples=2000, min_eval_examples=1000, cooldown_s=0, post_change_share=0)


def test_drift_needs_n_consecutive_periods_and_small_ones_are_neutral() -> None:
    p = pol.Policy(consecutive=2, **SMALL)  # type: ignore[arg-type]
    s = pol.ModelState()
    feed(s, win(0), win(1), win(2, "drift"))
    assert not pol.decide(s, 0, p).take
    feed(s, win(3, "insufficient_data", n=50))  # too small: neither calm nor drifted
    assert s.consecutive_drift == 1
    d = pol.decide(s, 0, p, newest=win(3, "insufficient_data", n=50))
    assert d.reason.startswith("no policy fired") and "too small to judge" in d.reason
    feed(s, win(4, "ok"), win(5, "drift"))
    assert not pol.decide(s, 0, p).take  # the streak was broken by a calm period
    feed(s, win(6, "drift"))
    d = pol.decide(s, 0, p, newest=win(6, "drift"))
    assert d.take and d.trigger == "drift" and d.guard is None
    assert [w.window_id for w in d.evaluation] == ["per006"]
    assert [w.window_id for w in d.train] == ["per004", "per005"]  # 2000 examples, newest first
    assert d.train_windows == ("w004p0", "w005p0") and d.eval_windows == ("w006p0",)
    assert d.train_examples == 2000 and d.eval_examples == 1000


def test_data_is_sized_by_examples_and_never_judged_on_a_small_period_alone() -> None:
    p = pol.Policy(
        consecutive=1,
        min_train_examples=3000,
        max_train_examples=4500,
        min_eval_examples=800,
        cooldown_s=0,
        post_change_share=0,
    )
    s = pol.ModelState()
    feed(
        s,
        *(win(i, n=1500) for i in range(6)),
        win(6, "skew", n=900),
        win(7, "insufficient_data", n=120),
    )
    d = pol.decide(s, 0, p)
    assert d.take
    # The newest period is too small to judge: evaluation reaches back to a judged one.
    assert [w.window_id for w in d.evaluation] == ["per006", "per007"] and d.eval_examples == 1020
    assert [w.window_id for w in d.train] == ["per004", "per005"] and d.train_examples == 3000
    # Not enough data: the guard says how much is missing.
    s2 = pol.ModelState()
    feed(s2, win(0, n=500), win(1, "skew", n=900))
    d2 = pol.decide(s2, 0, p)
    assert not d2.take and d2.guard == "data"
    assert "need 3000 training examples" in d2.reason and "skew held" in d2.reason
    # Never past the maximum: a period that would cross it is left out.
    s3 = pol.ModelState()
    feed(s3, win(0, n=9000), win(1, n=1000), win(2, "skew", n=1000))
    assert pol.decide(s3, 0, p).guard == "data"
    # ...unless it is the newest one before evaluation: then it is taken whole.
    s4 = pol.ModelState()
    feed(s4, win(0, n=1000), win(1, n=9000), win(2, "skew", n=1000))
    d4 = pol.decide(s4, 0, p)
    assert d4.take and [w.window_id for w in d4.train] == ["per001"]


def test_persistent_shift_retries_after_failures_with_back_off_and_budget() -> None:
    p = pol.Policy(
        consecutive=2,
        post_change_share=0,
        cooldown_s=100,
        backoff=2.0,
        daily_budget=3,
        min_train_examples=2000,
        min_eval_examples=1000,
    )
    s = pol.ModelState()
    feed(s, win(0), win(1), win(2, "skew"), win(3, "skew"))
    d = pol.decide(s, 0, p)
    assert d.take and d.trigger == "skew"
    pol.started(s, "r1", 0)
    feed(s, win(4, "skew"))
    d = pol.decide(s, 10, p)
    assert not d.take and d.guard == "in_flight" and "run r1" in d.reason
    assert d.reason.startswith("skew held")
    pol.finished(s, "r1", False, 20)  # the run failed: the shift is not resolved
    assert s.armed and s.attempts == 1
    feed(s, win(5, "skew"))
    d = pol.decide(s, 50, p)
    assert not d.take and d.guard == "cooldown" and "50s of 100s left" in d.reason
    d = pol.decide(s, 100, p)
    assert d.take
    pol.started(s, "r2", 100)
    pol.finished(s, "r2", False, 120)
    feed(s, win(6, "skew"))
    d = pol.decide(s, 250, p)  # two attempts: the wait doubled to 200 s
    assert not d.take and "back-off after 2 attempts" in d.reason and "50s of 200s" in d.reason
    assert pol.decide(s, 300, p).take
    pol.started(s, "r3", 300)
    pol.finished(s, "r3", False, 320)
    feed(s, win(7, "skew"))
    d = pol.decide(s, 1000, p)
    assert not d.take and d.guard == "budget" and "3 runs per 24 h" in d.reason
    assert pol.decide(s, DAY + 1, p).take  # the budget is a rolling 24 h


def test_candidate_awaiting_approval_disarms_rejection_rearms_promotion_starts_an_episode() -> None:
    p = pol.Policy(consecutive=2, **SMALL)  # type: ignore[arg-type]
    s = pol.ModelState()
    pol.new_episode(s, "/models/v1", 0)
    feed(s, win(0), win(1), win(2, "skew"), win(3, "skew"))
    assert pol.decide(s, 0, p).take
    pol.started(s, "r1", 0)
    pol.finished(s, "r1", True, 5, candidate="c1")
    feed(s, win(4, "skew"))
    d = pol.decide(s, 10, p)
    assert not d.take and d.guard == "disarmed"
    assert "disarmed since run r1" in d.reason and "candidate c1 awaits" in d.reason
    assert not pol.resolved(s, "other", False)  # someone else's candidate changes nothing
    assert pol.resolved(s, "c1", False)  # rejected: the shift still holds, try again
    d = pol.decide(s, 20, p)
    assert d.take and d.trigger == "skew"
    pol.started(s, "r2", 20)
    pol.finished(s, "r2", True, 25, candidate="c2")
    assert pol.resolved(s, "c2", True) and not s.armed  # promoted: wait for the new model
    assert pol.new_episode(s, "/models/v2", 30)
    assert s.armed and s.consecutive_skew == 0 and s.attempts == 0
    assert not pol.new_episode(s, "/models/v2", 31)
    feed(s, win(5, "skew"))
    assert not pol.decide(s, 40, p).take  # counts afresh against the new model


def test_unblessed_candidate_rearms_at_once() -> None:
    s = pol.ModelState()
    pol.started(s, "r1", 0)
    pol.finished(s, "r1", True, 5, candidate=None)
    assert s.armed and s.in_flight is None and s.last_success_at == 5


def test_no_policy_fired_never_while_a_condition_holds() -> None:
    rng = random.Random(7)
    p = pol.Policy(
        consecutive=2,
        cooldown_s=30,
        daily_budget=2,
        **{k: v for k, v in SMALL.items() if k != "cooldown_s"},
    )  # type: ignore[arg-type]
    s = pol.ModelState()
    t = 0.0
    for i in range(300):
        verdict = rng.choice(["ok", "skew", "skew", "drift", "insufficient_data"])
        w = win(i % 250, verdict, n=rng.choice([100, 1000, 3000]))
        w = pol.WindowInfo(**{**w.__dict__, "window_id": f"x{i}", "start": f"{i:05d}"})
        pol.observe(s, w)
        t += rng.choice([1.0, 20.0, 3600.0])
        d = pol.decide(s, t, p, newest=w)
        holds = s.consecutive_drift >= 2 or s.consecutive_skew >= 2
        assert d.reason.startswith("no policy fired") != holds, (d.reason, holds)
        if not d.take and holds:
            assert d.guard in {"blocking", "in_flight", "disarmed", "cooldown", "budget", "data"}
        if d.take:
            pol.started(s, f"r{i}", t)
            if rng.random() < 0.5:
                pol.finished(s, f"r{i}", rng.random() < 0.5, t, candidate=None)


def test_a_group_of_small_periods_replaces_them() -> None:
    s = pol.ModelState()
    a, b = win(0, "insufficient_data", n=100), win(1, "insufficient_data", n=150)
    feed(s, win(9, n=2000), a, b)
    group = pol.WindowInfo(
        "grp",
        a.start,
        250,
        "skew",
        False,
        drift=False,
        skew=True,
        end_s=b.end_s,
        members=a.members + b.members,
        data_uris=a.data_uris + b.data_uris,
    )
    feed(s, group)
    assert [w.window_id for w in s.windows] == ["grp", "per009"]
    assert s.consecutive_skew == 1


def test_event_time_clock_runs_on_the_data() -> None:
    p = pol.Policy(
        consecutive=1,
        cooldown_s=10 * DAY,
        clock="event",
        **{k: v for k, v in SMALL.items() if k != "cooldown_s"},
    )  # type: ignore[arg-type]
    s = pol.ModelState()
    feed(s, win(0), win(1), win(2, "skew"))
    now = pol.now_of(s, p, wall=1e12)
    assert now == 3 * DAY
    assert pol.decide(s, now, p).take
    pol.started(s, "r1", now)
    pol.finished(s, "r1", False, now)
    feed(s, win(5, "skew"))
    d = pol.decide(s, pol.now_of(s, p, wall=2e12), p)
    assert not d.take and "cooldown, 7d" not in d.reason and d.guard == "cooldown"
    feed(s, win(13, "skew"))  # ten days of data later
    assert pol.decide(s, pol.now_of(s, p, wall=2e12), p).take
    assert pol.now_of(s, pol.Policy(), wall=5.0) == 5.0


def test_guards_blocking_and_manual() -> None:
    p = pol.Policy(consecutive=1, **SMALL)  # type: ignore[arg-type]
    s = pol.ModelState()
    bad = win(2, "skew", blocking=True)
    feed(s, win(0), win(1), win(3, "skew"))
    feed(s, bad)
    d = pol.decide(s, 0, p, newest=bad)
    assert not d.take and d.guard == "blocking" and "blocking anomalies" in d.reason
    assert s.consecutive_skew == 1  # the blocking period counted neither way
    d = pol.decide(s, 0, p, manual=True, newest=bad)
    assert d.take and d.trigger == "manual"
    assert "per002" not in [w.window_id for w in (*d.train, *d.evaluation)]
    pol.started(s, "r1", 0)
    pol.finished(s, "r1", True, 0, candidate="c1")
    assert pol.decide(s, 0, p, manual=True).take  # an operator's request is not disarmed


def test_new_examples_and_model_age() -> None:
    p = pol.Policy(consecutive=9, min_new_examples=2500, max_model_age_s=DAY, **SMALL)  # type: ignore[arg-type]
    s = pol.ModelState()
    feed(s, win(0), win(1))
    assert not pol.decide(s, 0, p).take
    feed(s, win(2))
    d = pol.decide(s, 0, p)
    assert d.take and d.trigger == "new_examples"
    pol.started(s, "r1", 0)
    pol.finished(s, "r1", False, 0)
    s.last_success_at = 0
    d = pol.decide(s, 2 * DAY, p)
    assert d.take and d.trigger == "model_age"


def test_redelivered_period_is_not_counted_twice_and_state_round_trips() -> None:
    s = pol.ModelState()
    assert pol.observe(s, win(0, "drift"))
    assert not pol.observe(s, win(0, "drift"))
    assert s.consecutive_drift == 1 and len(s.windows) == 1
    pol.started(s, "r1", 5)
    back = pol.ModelState.from_json({**s.to_json(), "obsolete_field": 1})
    assert back == s and back.windows[0].members == ("w000p0",)


def test_a_period_judged_again_with_a_late_window_replaces_it_and_counts_once() -> None:
    s = pol.ModelState()
    feed(s, win(0), win(1, "drift", members=2))
    assert s.consecutive_drift == 1 and s.new_examples == 2000
    first = s.windows[-1]
    again = pol.WindowInfo(
        **{
            **first.__dict__,
            "window_id": "per001-amended",
            "example_count": 1500,
            "members": (*first.members, "w001late"),
            "data_uris": (*first.data_uris, "/s/w001late"),
        }
    )
    assert pol.amends(s, again)
    feed(s, again)
    assert s.consecutive_drift == 1  # the same period: no second step of the streak
    assert s.new_examples == 2500  # only the late window's examples are new
    assert [w.window_id for w in s.windows] == ["per000", "per001-amended"]
    assert not pol.amends(s, again)  # seen
    feed(s, win(2, "drift"))
    assert s.consecutive_drift == 2


def scored(
    i: int, auc: float, coverage: float = 1.0, version: int = 3, est: float = 0.9
) -> pol.QualityInfo:
    return pol.QualityInfo(f"per{i:03d}", version, coverage, {"auc": auc}, {"auc": est})


def test_quality_fires_after_n_poor_windows_below_the_floor_or_own_evaluation() -> None:
    p = pol.Policy(
        consecutive=2, quality_metric="auc", quality_floor=0.8, quality_margin=0.05, **SMALL
    )  # type: ignore[arg-type]
    s = pol.ModelState(serving_version=3, serving_eval={"auc": 0.93})
    feed(s, *(win(i) for i in range(4)))
    assert (
        pol.observe_quality(s, scored(2, 0.90), p) == "realized auc 0.9000 on per002 within bounds"
    )
    # Below its own evaluation by more than the margin (0.93 - 0.05 = 0.88).
    why = pol.observe_quality(s, scored(3, 0.87), p)
    assert why is not None and "worse than its own evaluation 0.9300 by more than 0.05" in why
    assert not pol.decide(s, 0, p).take and s.consecutive_quality == 1
    # Windows that do not count: few labels, another version, already judged.
    assert pol.observe_quality(s, scored(4, 0.5, coverage=0.2), p) is None
    assert pol.observe_quality(s, scored(4, 0.5, version=2), p) is None
    assert pol.observe_quality(s, scored(3, 0.5), p) is None
    why = pol.observe_quality(s, scored(4, 0.75), p)
    assert why is not None and "below the floor 0.8" in why
    d = pol.decide(s, 0, p, newest=win(3))
    assert d.take and d.trigger == "quality" and "2 scored windows in a row" in d.reason
    # The same guards: a run in flight stops it.
    pol.started(s, "r1", 0)
    assert pol.decide(s, 0, p).guard == "in_flight"
    # A new episode (promotion) starts the streak afresh.
    pol.new_episode(s, "cand-2", 1)
    assert s.consecutive_quality == 0


def test_quality_on_estimates_lower_is_better_metrics_and_off_by_default() -> None:
    s = pol.ModelState()
    off = pol.Policy()
    assert pol.observe_quality(s, scored(0, 0.1), off) is None
    est = pol.Policy(quality_metric="auc", quality_floor=0.85, quality_source="estimated")
    why = pol.observe_quality(s, scored(1, 0.99, coverage=0.0, est=0.8), est)
    assert why is not None and "estimated auc 0.8000" in why and s.consecutive_quality == 1
    rmse = pol.Policy(quality_metric="rmse", quality_floor=2.0)
    q = pol.QualityInfo("per009", 1, 1.0, {"rmse": 2.5}, {})
    why = pol.observe_quality(s, q, rmse)
    assert why is not None and "above the ceiling 2" in why
    restored = pol.ModelState.from_json(s.to_json())
    assert restored.consecutive_quality == 2 and restored.quality_seen == s.quality_seen
