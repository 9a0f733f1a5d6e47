"""The closed loop's time to recovery, stage by stage.

From the first drifted example produced to ``stable`` serving the retrained
model, approval automatic: the embedded stack and the four services as
processes (``ctrain demo --auto-approve``'s story, with no replay pacing so the
data's own clock does not count). Phase 1 (history + first model) is set-up
and is not timed.

Stages, each from the end of the one before:
  window close   first 2014 example produced -> the window that fired closed
  validation     -> its WindowValidated published
  period judged  -> the verdict of its period (all partitions' windows) published
  decision       -> the TrainingRun submitted
  pipeline start -> the first component started (worker + kfp.local start-up)
  <component>    each pipeline component's own wall time (gather ... publish)
  pipeline gaps  kfp.local's time between components
  candidate      last component finished -> ModelCandidate published
  gate           -> the promoter's gate decision (audit trail)
  promotion      -> PromotionEvent with `stable` on the new version

Baseline, same run: the pipeline components' own time (training itself); the
ratio says how much the loop adds around it. Floor, same run: the pure work of
the same steps on the run's own files (reading the rows, one optimizer pass,
computing the metrics), what no amount of overhead cutting goes below.

    python bench/loop.py [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ctrain import client  # noqa: E402
from ctrain.demo import Demo, DemoOptions  # noqa: E402
from ctrain.loop import LoopState  # noqa: E402


def _log_clock(seconds_of_day: float, near: float) -> float:
    """A kfp.local log stamp (local time of day) as epoch seconds, on ``near``'s day."""
    day = datetime.fromtimestamp(near).replace(hour=0, minute=0, second=0, microsecond=0)
    t = day.timestamp() + seconds_of_day
    return t - 86400 if t - near > 43200 else t


def breakdown(d: Demo) -> list[tuple[str, float]]:
    assert d.tail is not None and d.progress.drift_run is not None
    s: LoopState = d.tail.state
    run_id = d.progress.drift_run
    submitted = next(e for e in s.runs[run_id] if e.state == "submitted")
    eval_window = submitted.windows[-1]
    t0 = d.progress.drift_started
    assert t0 is not None
    closed = s.windows[eval_window].produced_at.timestamp()
    window_validated = s.validations[eval_window].produced_at.timestamp()
    # The trigger acts on the judged period the eval window belongs to.
    period = next(p for p in s.periods.values() if eval_window in {m.window_id for m in p.members})
    validated = period.produced_at.timestamp()
    decided = submitted.produced_at.timestamp()
    cand = next(c for c in s.candidates.values() if c.run_id == run_id)
    promo = next(
        p for p in s.promotions if p.candidate_id == cand.candidate_id and "stable" in p.labels
    )
    pc = client.promoter("viewer", d.state)
    try:
        audit = [
            a
            for a in pc.call("GET", "/v1/audit", params={"count": 1000})["entries"]
            if a["candidate_id"] == cand.candidate_id
        ]
    finally:
        pc.close()
    gate_ms = min(int(a["id"].split("-")[0]) for a in audit)
    comps = d.progress.runs[run_id]["components"]
    stages = [
        ("window close", closed - t0),
        ("validation", window_validated - closed),
        ("period judged", validated - window_validated),
        ("decision", decided - validated),
    ]
    first_start = _log_clock(comps[0]["started"], decided)
    stages.append(("pipeline start", first_start - decided))
    own = 0.0
    for c in comps:
        stages.append((c["name"], c["seconds"]))
        own += c["seconds"]
    last_end = _log_clock(comps[-1]["finished"], decided)
    stages.append(("pipeline gaps", (last_end - first_start) - own))
    stages.append(("candidate", cand.produced_at.timestamp() - last_end))
    stages.append(("gate", gate_ms / 1000 - cand.produced_at.timestamp()))
    stages.append(("promotion", promo.produced_at.timestamp() - gate_ms / 1000))
    stages.append(("_total", promo.produced_at.timestamp() - t0))
    stages.append(("_pipeline_own", own))
    # The guarantee beside the speed: the candidate's held-out AUC, and the serving one's.
    stages.append(("_auc", cand.metrics.overall.get("auc", float("nan"))))
    base = cand.baseline_metrics.overall if cand.baseline_metrics else {}
    stages.append(("_baseline_auc", base.get("auc", float("nan"))))
    return stages


def floor(run_dir: Path) -> list[tuple[str, float]]:
    """The pure work of the run's steps, on its own files, in this process: reading
    the rows, one optimizer pass over the transformed training data, computing the
    metrics on the held-out data (each timed after a first call, so without tracing)."""
    import pyarrow.parquet as pq
    import tensorflow_transform as tft

    from services.trigger import steps
    from services.trigger.steps.trainer import transformed_dataset

    params = json.loads((run_dir / "params.json").read_text())
    t = time.perf_counter()
    pq.read_table(run_dir / "gather" / "train.parquet")
    pq.read_table(run_dir / "gather" / "eval.parquet")
    read = time.perf_counter() - t
    module = steps.load_module(params["module_path"])
    tto = tft.TFTransformOutput(str(run_dir / "transform" / "transform_graph"))
    spec = tto.transformed_feature_spec()
    task = params.get("task", "binary")

    def data(split: str) -> object:
        pattern = str(run_dir / "transform" / f"{split}.tfrecord.gz")
        return transformed_dataset(pattern, spec, module.LABEL_KEY, 256, task).cache()

    train, held = data("train"), data("eval")
    steps.libraries_without_autograph()
    model = module.build_model(tto)
    model.fit(train, epochs=1, verbose=0)
    t = time.perf_counter()
    model.fit(train, epochs=1, verbose=0)
    one_pass = time.perf_counter() - t
    model.evaluate(held, verbose=0)
    t = time.perf_counter()
    model.evaluate(held, verbose=0)
    metrics = time.perf_counter() - t
    epochs = int(params.get("epochs", 3))
    return [
        ("read rows", read),
        ("optimizer pass", one_pass),
        ("metrics", metrics),
        ("_epochs", epochs),
        ("_floor", read + epochs * one_pass + metrics),
    ]


def one(tmp: Path) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    os.environ["CTRAIN_DEV_STATE_DIR"] = str(tmp)
    d = Demo(DemoOptions(auto_approve=True, speedup=0, keep=False), view=lambda m: None)
    try:
        d.run()
        stages = breakdown(d)
        assert d.progress.drift_run is not None
        (run_dir,) = {p.parent for p in tmp.rglob(f"runs/{d.progress.drift_run}/params.json")}
        return stages, floor(run_dir)
    finally:
        d.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=1, help="loops to run (each ~3-4 min)")
    args = ap.parse_args()
    runs: list[dict[str, float]] = []
    floors: list[dict[str, float]] = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="ctrain-loop-") as tmp:
            stages, pure = one(Path(tmp))
        runs.append(dict(stages))
        floors.append(dict(pure))
        total = runs[-1]["_total"]
        print(f"loop {i + 1}: time to recovery {total:.1f}s")
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    total = med.pop("_total")
    own = med.pop("_pipeline_own")
    auc, base_auc = med.pop("_auc"), med.pop("_baseline_auc")
    print(f"\ntime to recovery (median of {len(runs)}): {total:.1f}s")
    print(f"{'stage':<16}{'seconds':>9}{'share':>8}")
    for k, v in med.items():
        print(f"{k:<16}{v:>9.2f}{v / total:>8.1%}")
    print(f"\ncandidate AUC (median) {auc:.4f}, serving model's on the same rows {base_auc:.4f}")
    print(f"baseline (same run): pipeline components' own time {own:.1f}s")
    print(f"ratio time-to-recovery / training itself: {total / own:.2f}")
    fl = {k: statistics.median(f[k] for f in floors) for k in floors[0]}
    pure, epochs = fl.pop("_floor"), int(fl.pop("_epochs"))
    print(
        "floor (same run, the steps' pure work): "
        + ", ".join(f"{k} {v:.2f}s" for k, v in fl.items())
        + f"; with {epochs} epochs {pure:.2f}s; time to recovery / floor {total / pure:.0f}"
    )


if __name__ == "__main__":
    main()
