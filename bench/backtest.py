"""Backtest scenarios with real candidates: when runs start, false alarms, and the
first candidate's AUC against the serving model's on the same evaluation examples.

Each synthetic stream (tests/unit/test_backtest_scenarios.py's plans: hourly periods
of 1,000 resampled taxi trips, three partitions) goes through ``ctrain.backtest``;
then, for the first run of each scenario, the pipeline's own steps train a candidate
on the run's training windows and TFMA evaluates it beside the serving model (trained
on the scenario's first six periods) on the run's evaluation windows.

    python bench/backtest.py [--scenario step] [--epochs 2] [--min-train-examples N] [--no-train]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zlib
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCHEMA = ROOT / "examples" / "taxi" / "data" / "schema.pbtxt"
MODULE = ROOT / "examples" / "taxi" / "model.py"
CSV = ROOT / "examples" / "taxi" / "data" / "taxi_2013_2014.csv"


def train_and_compare(
    train: list[str], evals: list[str], out: Path, epochs: int, baseline: str | None
) -> tuple[str, dict[str, object]]:
    from services.trigger import steps

    g = steps.gather(train, evals, str(out / "gather"))
    tr = steps.transform(str(g["train"]), str(g["eval"]), str(SCHEMA), str(MODULE), str(out / "tf"))
    m = steps.train(tr, str(MODULE), str(out / "model"), epochs=epochs)
    ev = steps.evaluate(str(m["model"]), str(g["eval"]), str(MODULE), str(out / "eval"), baseline)
    return str(m["model"]), ev


def auc(m: object) -> float | None:
    if not isinstance(m, dict):
        return None
    overall = m.get("overall", {})
    for k, v in overall.items():
        if k.lower() == "auc":
            return float(v)
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", action="append", help="default: all")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--no-train", action="store_true", help="decisions only")
    ap.add_argument(
        "--min-train-examples",
        type=int,
        default=5000,
        help="the trigger's training size (default: the product's default)",
    )
    args = ap.parse_args()

    import numpy as np
    from pyarrow import csv

    from ctrain.backtest import WindowJudge, load_windows, simulate
    from ctrain.synth import resample, write_windows
    from services.validator import checks
    from shared.schema import example_spec, load_schema
    from shared.shard import arrow_schema
    from tests.unit.test_backtest_scenarios import POLICY, plans

    schema = arrow_schema(example_spec(load_schema(SCHEMA)))
    trips = csv.read_csv(CSV, convert_options=csv.ConvertOptions(strings_can_be_null=True))
    trips = trips.select(schema.names).cast(schema)
    work = Path(tempfile.mkdtemp(prefix="ctrain-bt-"))
    names = args.scenario or list(plans())
    serving: str | None = None
    rows = []
    for name in names:
        t0 = time.perf_counter()
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        periods = [resample(trips, "payment_type", "Credit Card", s, rng) for s in plans()[name]]
        events = write_windows(periods, work, name, schema, 3600, partitions=3, seed=1)
        judge = WindowJudge(
            load_windows(work, name),
            str(SCHEMA),
            200,
            checks.Defaults(
                skew_linf=0.1,
                drift_linf=0.1,
                ignore=frozenset({"trip_start_timestamp", "trip_start_month", "trip_start_hour"}),
            ),
        )
        outcomes = ("reject", "promote") if name == "persistent" else ("promote",)
        policy = replace(POLICY, min_train_examples=args.min_train_examples)
        r = simulate(len(judge), judge, policy, outcomes)  # type: ignore[arg-type]
        decided = time.perf_counter() - t0
        print(
            f"== {name}: {len(r.periods)} periods, {len(r.runs)} runs, "
            f"{r.false_alarms} false alarms ({decided:.1f}s)"
        )
        for run in r.runs:
            print(
                f"   run at period {run.index} ({run.trigger}), episode {run.episode}: "
                f"{run.since_episode} periods after the episode began, {run.since_crossing} "
                f"after its streak began; train/eval {run.train_examples}/{run.eval_examples};"
                f" {run.outcome}{'; FALSE ALARM' if run.false_alarm else ''}"
            )
        row = {"scenario": name, "runs": len(r.runs), "false_alarms": r.false_alarms}
        if r.runs:
            row["first_run_since_streak"] = r.runs[0].since_crossing
        if not args.no_train and r.runs:
            uri = {e.window_id: e.data_uri for e in events}
            if serving is None:
                first = [e.data_uri for e in events if e.start < events[0].start.replace(hour=6)]
                serving, _ = train_and_compare(
                    first[:-3], first[-3:], work / "serving", args.epochs, None
                )
            run = r.runs[0]
            _, ev = train_and_compare(
                [uri[w] for w in run.train_windows],
                [uri[w] for w in run.eval_windows],
                work / f"cand-{name}",
                args.epochs,
                serving,
            )
            row["candidate_auc"] = auc(ev["metrics"])
            row["serving_auc"] = auc(ev["baseline_metrics"])
            row["eval_examples"] = run.eval_examples
            print(
                f"   first candidate AUC {row['candidate_auc']} vs serving "
                f"{row['serving_auc']} on the same {run.eval_examples} examples; "
                f"blessed={ev['blessed']}"
            )
        rows.append(row)
    print(
        "\nscenario | runs | false alarms | first run (periods after streak start) | "
        "candidate AUC vs serving"
    )
    for row in rows:
        c, s = row.get("candidate_auc"), row.get("serving_auc")
        vs = f"{c:.3f} vs {s:.3f}" if isinstance(c, float) and isinstance(s, float) else "-"
        print(
            f"{row['scenario']} | {row['runs']} | {row['false_alarms']} | "
            f"{row.get('first_run_since_streak', '-')} | {vs}"
        )


if __name__ == "__main__":
    main()
