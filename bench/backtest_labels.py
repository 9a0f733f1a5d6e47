"""Runs per step change and the time from a shift to its run, with labels that come later.

Daily periods of 1,000 resampled taxi trips (three partitions) whose credit-card share
follows a schedule: a step, a gradual ramp, and a step with falling volume, each with
20 calm days first and 70 days after. Each stream goes through ``ctrain.backtest`` (real
TFDV, the trigger's policy, simulated runs that promote one period later) with labels
inside the examples and 7 and 30 days late, and with the trigger's training choice
before this change (``post_change_share`` 0: the newest periods before evaluation,
whatever their side of the change) and after (the default: the periods since the
change first). Printed per scenario and label delay: runs, runs in the first episode
after the change and later ones, and days from the change to the first run.

    python bench/backtest_labels.py [--scenario step] [--share 0.75]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ctrain.backtest import WindowJudge, load_windows, simulate  # noqa: E402
from ctrain.synth import Segment, resample, write_windows  # noqa: E402
from services.trigger import policy as pol  # noqa: E402
from services.validator import checks  # noqa: E402

SCHEMA = ROOT / "examples" / "taxi" / "data" / "schema.pbtxt"
CSV = ROOT / "examples" / "taxi" / "data" / "taxi_2013_2014.csv"
DAY = 86_400
CALM, AFTER, N = 20, 70, 1000
BASE, SHIFTED = 0.25, 0.5


def plans() -> dict[str, list[Segment]]:
    ramp = [Segment(N, BASE + (0.6 - BASE) * k / 14) for k in range(15)]
    return {
        "step": [Segment(N, BASE)] * CALM + [Segment(N, SHIFTED)] * AFTER,
        "gradual": [Segment(N, BASE)] * CALM + ramp + [Segment(N, 0.6)] * (AFTER - 15),
        "falling_volume": [Segment(N, BASE)] * CALM
        + [Segment(int(N * 0.9**k) + 150, SHIFTED) for k in range(AFTER)],
    }


def policy(share: float) -> pol.Policy:
    return pol.Policy(
        consecutive=2,
        cooldown_s=DAY,
        daily_budget=4,
        min_train_examples=3000,
        min_eval_examples=2000,
        post_change_share=share,
    )


def main() -> None:
    import pyarrow as pa
    from pyarrow import csv

    from shared.schema import example_spec, load_schema
    from shared.shard import arrow_schema

    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", action="append", help="default: all")
    ap.add_argument("--share", type=float, default=pol.Policy().post_change_share or 1.0)
    args = ap.parse_args()
    schema = arrow_schema(example_spec(load_schema(SCHEMA)))
    trips = csv.read_csv(CSV, convert_options=csv.ConvertOptions(strings_can_be_null=True))
    trips = trips.select(schema.names).cast(schema)
    print(
        f"{'scenario':<15} {'labels':<7} {'training':<22} {'runs after change':>17} "
        f"{'days to run':>11}"
    )
    for name, plan in plans().items():
        if args.scenario and name not in args.scenario:
            continue
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        periods: list[pa.Table] = [
            resample(trips, "payment_type", "Credit Card", s, rng) for s in plan
        ]
        tmp = Path(tempfile.mkdtemp(prefix=f"ctrain-bt-{name}-"))
        write_windows(periods, tmp, name, schema, DAY, partitions=3, seed=1)
        judge = WindowJudge(
            load_windows(tmp, name),
            str(SCHEMA),
            min_examples=200,
            defaults=checks.Defaults(
                skew_linf=0.1,
                drift_linf=0.1,
                ignore=frozenset({"trip_start_timestamp", "trip_start_month", "trip_start_hour"}),
            ),
        )
        for delay in (None, 7 * DAY, 30 * DAY):
            choices = (("newest (before)", 0.0), (f"after change {args.share:.0%}", args.share))
            for label, share in choices:
                r = simulate(len(judge), judge, policy(share), ("promote",), 1, label_delay_s=delay)
                after = [x for x in r.runs if x.index >= CALM]
                shift = r.periods[CALM]["start_s"]
                days = (
                    f"{(r.periods[after[0].index]['start_s'] + DAY - shift) / DAY:.0f}"
                    if after
                    else "-"
                )
                shown = "inline" if delay is None else f"{delay // DAY}d"
                print(f"{name:<15} {shown:<7} {label:<22} {len(after):>17} {days:>11}")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
