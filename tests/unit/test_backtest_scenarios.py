"""Backtests on long synthetic streams built from the bundled trips (real TFDV, no servers).

Each scenario resamples the real trips so that the share of one payment type follows
a schedule (hourly periods of 1,000 trips, three partitions), then replays them
through the validator's period assembly, its distances and the trigger's policy.
"""

from __future__ import annotations

import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from pyarrow import csv

from ctrain.backtest import Outcome, Report, WindowJudge, load_windows, simulate
from ctrain.synth import Segment, resample, write_windows
from services.trigger import policy as pol
from services.validator import checks
from shared.schema import example_spec, load_schema
from shared.shard import arrow_schema
from tests.conftest import TAXI_CSV, TAXI_SCHEMA

pytestmark = [pytest.mark.unit, pytest.mark.slow]
CARD = "Credit Card"
BASE, SHIFTED = 0.25, 0.5
N = 1000
POLICY = pol.Policy(
    consecutive=2,
    cooldown_s=2 * 3600,
    backoff=2.0,
    daily_budget=4,
    min_train_examples=3000,
    min_eval_examples=2000,
    # These scenarios pin the training choice before it waited for the world after a
    # change (test_a_step_costs_one_run has the default).
    post_change_share=0,
)
CONSECUTIVE = POLICY.consecutive


def plans() -> dict[str, list[Segment]]:
    ramp = [Segment(N, BASE + (0.6 - BASE) * k / 23) for k in range(24)]
    return {
        "no_change": [Segment(N, BASE)] * 48,
        "step": [Segment(N, BASE)] * 12 + [Segment(N, SHIFTED)] * 24,
        "gradual": [Segment(N, BASE)] * 12 + ramp + [Segment(N, 0.6)] * 12,
        "oscillation": [Segment(N, BASE if k % 2 else SHIFTED) for k in range(48)],
        "falling_volume": [Segment(N, BASE)] * 12
        + [Segment(int(N * 0.8**k) + 60, SHIFTED) for k in range(24)],
        # A permanent shift that outlives promotions: the first candidate is rejected.
        "persistent": [Segment(N, BASE)] * 12 + [Segment(N, SHIFTED)] * 36,
    }


@pytest.fixture(scope="module")
def trips() -> pa.Table:
    schema = arrow_schema(example_spec(load_schema(TAXI_SCHEMA)))
    table = csv.read_csv(TAXI_CSV, convert_options=csv.ConvertOptions(strings_can_be_null=True))
    return table.select(schema.names).cast(schema)


def backtest(
    trips: pa.Table,
    tmp: Path,
    name: str,
    outcomes: tuple[Outcome, ...] = ("promote",),
    policies: tuple[pol.Policy, ...] = (POLICY,),
    label_delay_s: float | None = None,
) -> Report:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    periods = [resample(trips, "payment_type", CARD, seg, rng) for seg in plans()[name]]
    schema = arrow_schema(example_spec(load_schema(TAXI_SCHEMA)))
    write_windows(periods, tmp, name, schema, 3600, partitions=3, seed=1)
    judge = WindowJudge(
        load_windows(tmp, name),
        str(TAXI_SCHEMA),
        min_examples=200,
        defaults=checks.Defaults(
            skew_linf=0.1,
            drift_linf=0.1,
            ignore=frozenset({"trip_start_timestamp", "trip_start_month", "trip_start_hour"}),
        ),
    )
    reports = [
        simulate(len(judge), judge, p, outcomes, delay=1, label_delay_s=label_delay_s)
        for p in policies
    ]
    return reports[0] if len(reports) == 1 else Reports(reports)


class Reports(Report):
    """Several policies' reports on one stream (judged once)."""

    def __init__(self, reports: list[Report]) -> None:
        super().__init__()
        self.all = reports


def test_no_change_starts_nothing(trips: pa.Table, tmp_path: Path) -> None:
    r = backtest(trips, tmp_path, "no_change")
    assert len(r.periods) == 48 and r.runs == []
    assert all(p["decision"].startswith("no policy fired") for p in r.periods)


def test_step_change_retrains_promptly_and_settles(trips: pa.Table, tmp_path: Path) -> None:
    r = backtest(trips, tmp_path, "step")
    first = r.runs[0]
    assert first.trigger in ("skew", "drift") and 12 <= first.index <= 12 + CONSECUTIVE + 1
    assert first.since_crossing <= CONSECUTIVE
    assert first.train_examples >= 3000 and first.eval_examples >= 2000
    assert not first.false_alarm
    # Each later episode that still sees the shift retrains within a bounded number of
    # periods; once a model trained on the new regime serves, the loop goes quiet.
    for run in r.runs[1:]:
        assert run.since_episode <= CONSECUTIVE + 3
    assert r.runs[-1].index < 30 and len(r.runs) <= 4
    assert r.periods[-1]["decision"].startswith("no policy fired")


def test_gradual_shift_retrains(trips: pa.Table, tmp_path: Path) -> None:
    r = backtest(trips, tmp_path, "gradual")
    assert r.runs and r.runs[0].index > 12
    assert all(run.since_episode <= 24 for run in r.runs)
    assert len(r.runs) <= 4 * 2  # within the budget of two days of hourly periods


def test_oscillation_is_bounded_by_the_budget(trips: pa.Table, tmp_path: Path) -> None:
    r = backtest(trips, tmp_path, "oscillation")
    per_day: dict[int, int] = {}
    for run in r.runs:
        per_day[run.index // 24] = per_day.get(run.index // 24, 0) + 1
    assert r.runs and max(per_day.values()) <= POLICY.daily_budget
    # Runs wait for their outcome and the cooldown: never two in consecutive periods.
    assert all(b.index - a.index >= 2 for a, b in zip(r.runs, r.runs[1:], strict=False))


def test_falling_volume_does_not_blind_the_loop(trips: pa.Table, tmp_path: Path) -> None:
    r = backtest(trips, tmp_path, "falling_volume")
    small = [p for p in r.periods if p["verdict"] == "insufficient_data"]
    grouped = [p for p in r.periods if p["unit"].startswith("group-")]
    assert small and grouped and any(p["verdict"] == "skew" for p in grouped)
    assert r.runs and r.runs[0].index <= 12 + CONSECUTIVE + 1


def test_a_persistent_shift_is_retried_after_a_rejection(trips: pa.Table, tmp_path: Path) -> None:
    r = backtest(trips, tmp_path, "persistent", outcomes=("reject", "promote"))
    assert [run.outcome for run in r.runs[:2]] == ["reject", "promote"]
    first, second = r.runs[:2]
    assert second.episode == first.episode  # a rejection does not end the episode
    # The retry waits for the cooldown, never more than the back-off allows.
    assert 1 <= second.index - first.index <= 1 + int(POLICY.wait_s(1) // 3600) + 1
    assert "skew held" in r.periods[first.index + 1]["decision"]


def test_a_step_costs_one_run_when_training_waits_for_the_world_after_it(
    trips: pa.Table, tmp_path: Path
) -> None:
    """The first candidate after a step used to train mostly on the old world: its own
    skew persisted and the next episodes retrained at once. Trained on the periods after
    the change (75 % of its training examples), one step costs one run, inline labels
    or labels 3 hours late (hourly periods), a few periods later."""
    default = replace(POLICY, post_change_share=pol.Policy().post_change_share)
    both = backtest(trips, tmp_path, "step", policies=(POLICY, default))
    assert isinstance(both, Reports)
    before, after = both.all
    assert len(before.runs) >= 2 and len(after.runs) == 1
    assert after.runs[0].index - before.runs[0].index <= 4
    first = after.runs[0]
    post = {m for p in after.periods[12:] for m in p["members"]}
    assert sum(m in post for m in first.train_windows) >= 0.75 * len(first.train_windows)
    old = before.runs[0]
    assert sum(m in post for m in old.train_windows) < 0.5 * len(old.train_windows)
    late = backtest(trips, tmp_path / "late", "step", policies=(default,), label_delay_s=3 * 3600)
    assert len(late.runs) == 1 and late.runs[0].index > first.index
