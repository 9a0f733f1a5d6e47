"""How a training run's cost grows with its data: the pipeline's steps as the trigger runs
them (gather, validate, transform, train, evaluate; the libraries imported first, as in
the trigger's warm step worker) on N rows resampled from the bundled trips, each size in
a fresh process, beside the floor in the same process: the same
model fitted on the same (transformed) rows with tf.data + Keras for the same epochs,
and the same metric (AUC) computed with numpy from its predictions.

    python bench/pipeline_scale.py [--rows 10000,100000,1000000] [--epochs 3]

Per size and step: seconds, rows/s and the process's peak RSS after the step. Then, per
size, the whole run against its floor, and the cost from the smallest size to the
largest against linear (the rows' ratio).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCHEMA = ROOT / "examples" / "taxi" / "data" / "schema.pbtxt"
MODULE = ROOT / "examples" / "taxi" / "model.py"
CSV = ROOT / "examples" / "taxi" / "data" / "taxi_2013_2014.csv"
STEPS = ("gather", "validate", "transform", "train", "evaluate")
EVAL_SHARE = 0.2


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resampled_shards(d: Path, n: int, seed: int = 0) -> tuple[list[str], str]:
    """``n`` rows drawn with replacement from the trips, in event-time order: four
    training shards and one held-out shard (the newest fifth), as the trigger gathers."""
    import numpy as np
    import pyarrow.compute as pc
    from pyarrow import csv

    from shared.schema import example_spec, load_schema
    from shared.shard import ShardWriter, arrow_schema

    schema = arrow_schema(example_spec(load_schema(SCHEMA)))
    t = csv.read_csv(CSV, convert_options=csv.ConvertOptions(strings_can_be_null=True))
    t = t.select(schema.names).cast(schema)
    rng = np.random.default_rng(seed)
    t = t.take(rng.integers(0, t.num_rows, n))
    t = t.take(pc.sort_indices(t, [("trip_start_timestamp", "ascending")]))
    n_eval = int(n * EVAL_SHARE)
    n_train = n - n_eval
    cuts = [round(n_train * k / 4) for k in range(5)] + [n]
    uris = []
    for k in range(5):
        p = d / f"w{k}" / "data.parquet"
        p.parent.mkdir(parents=True)
        w = ShardWriter(schema, str(p), batch_rows=65_536)
        for b in t.slice(cuts[k], cuts[k + 1] - cuts[k]).to_batches(max_chunksize=65_536):
            w.add(b)
        w.finish()
        uris.append(str(p))
    return uris[:4], uris[4]


def auc(labels: object, scores: object) -> float:
    """ROC AUC by ranks (ties averaged), numpy only."""
    import numpy as np

    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2
    pos = y.sum()
    neg = len(y) - pos
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def child(n: int, epochs: int) -> dict[str, object]:
    """One size, in this (fresh) process: the steps, then the floor."""
    # As the trigger's warm step worker has them: the libraries imported before any step.
    import apache_beam  # noqa: F401
    import numpy as np
    import pyarrow.parquet as pq
    import tensorflow  # noqa: F401
    import tensorflow_data_validation  # noqa: F401
    import tensorflow_model_analysis  # noqa: F401
    import tensorflow_transform  # noqa: F401

    from services.trigger import steps
    from services.trigger.steps.trainer import transformed_dataset

    out = Path(tempfile.mkdtemp(prefix=f"ctrain-bench-scale-{n}-"))
    train_uris, eval_uri = resampled_shards(out / "windows", n)
    marks: dict[str, dict[str, float]] = {}
    start_mib = peak_mib()

    def timed(name: str, rows: int, fn: object) -> object:
        t = time.perf_counter()
        got = fn()  # type: ignore[operator]
        secs = time.perf_counter() - t
        marks[name] = {"seconds": secs, "rows_per_s": rows / secs, "peak_mib": peak_mib()}
        return got

    g: dict[str, object] = timed(  # type: ignore[assignment]
        "gather", n, lambda: steps.gather(train_uris, [eval_uri], str(out / "gather"))
    )
    n_train, n_eval = int(g["train_rows"]), int(g["eval_rows"])  # type: ignore[call-overload]
    timed("validate", n_train, lambda: steps.validate_data(
        str(g["train"]), str(SCHEMA), str(out / "validate"), ["SCHEMA_MISSING_COLUMN"]
    ))  # fmt: skip
    tr: dict[str, str] = timed("transform", n, lambda: steps.transform(  # type: ignore[assignment]
        str(g["train"]), str(g["eval"]), str(SCHEMA), str(MODULE), str(out / "tf")
    ))  # fmt: skip
    m: dict[str, object] = timed("train", n_train * epochs, lambda: steps.train(  # type: ignore[assignment]
        tr, str(MODULE), str(out / "model"), epochs=epochs
    ))  # fmt: skip
    result: dict[str, object] = timed("evaluate", n_eval, lambda: steps.evaluate(  # type: ignore[assignment]
        str(m["model"]), str(g["eval"]), str(MODULE), str(out / "eval")
    ))  # fmt: skip
    whole = sum(v["seconds"] for v in marks.values())

    # The floor: read the rows; fit the same model on the same transformed rows for the
    # same epochs (tf.data + Keras, no early stopping, no export); AUC with numpy.
    import tensorflow_transform as tft

    module = steps.load_module(str(MODULE))
    t0 = time.perf_counter()
    pq.read_table(str(g["train"]))
    pq.read_table(str(g["eval"]))
    read_s = time.perf_counter() - t0
    tto = tft.TFTransformOutput(tr["transform_graph"])
    spec = tto.transformed_feature_spec()
    steps.libraries_without_autograph()
    train_ds = transformed_dataset(tr["train"], spec, module.LABEL_KEY, 256)
    held = transformed_dataset(tr["eval"], spec, module.LABEL_KEY, 256)
    model = module.build_model(tto)
    t0 = time.perf_counter()
    model.fit(train_ds, epochs=epochs, verbose=0)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    labels, scores = [], []
    for features, y in held:
        labels.append(y.numpy())
        scores.append(np.asarray(model(features, training=False)))
    floor_auc = auc(np.concatenate(labels), np.concatenate(scores))
    metric_s = time.perf_counter() - t0
    floor = read_s + fit_s + metric_s
    return {
        "rows": n,
        "train_rows": n_train,
        "eval_rows": n_eval,
        "steps": marks,
        "whole_s": whole,
        "floor": {"read_s": read_s, "fit_s": fit_s, "metric_s": metric_s, "total_s": floor},
        "start_mib": start_mib,
        "peak_mib": peak_mib(),
        "auc_pipeline": float(result["metrics"]["overall"].get("auc", float("nan"))),  # type: ignore[index]
        "auc_floor": floor_auc,
    }


def main(sizes: list[int], epochs: int) -> None:
    runs = []
    for n in sizes:
        print(f"-- {n:,} rows", flush=True)
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(n), "--epochs", str(epochs)],
            capture_output=True, text=True,
        )  # fmt: skip
        if out.returncode != 0:
            print(out.stderr[-4000:])
            raise SystemExit(f"the {n:,}-row run failed (exit {out.returncode})")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        runs.append(r)
        for name in STEPS:
            s = r["steps"][name]
            print(f"   {name:<9} {s['seconds']:8.1f} s  {s['rows_per_s']:>11,.0f} rows/s  "
                  f"peak RSS {s['peak_mib']:>6,.0f} MiB")  # fmt: skip
        f = r["floor"]
        print(f"   whole run {r['whole_s']:8.1f} s   floor {f['total_s']:.1f} s (read "
              f"{f['read_s']:.1f}, fit {f['fit_s']:.1f}, metric {f['metric_s']:.1f}): "
              f"{r['whole_s'] / f['total_s']:.1f}x the floor (target <= 3)   "
              f"peak RSS {r['peak_mib']:,.0f} MiB (target <= 4096)   "
              f"AUC pipeline {r['auc_pipeline']:.3f} / floor {r['auc_floor']:.3f}", flush=True)  # fmt: skip
    if len(runs) > 1:
        a, b = runs[0], runs[-1]
        grow = b["whole_s"] / a["whole_s"]
        rows = b["rows"] / a["rows"]
        print(f"cost {a['rows']:,} -> {b['rows']:,} rows: {grow:.1f}x for {rows:.0f}x the rows "
              f"({'no worse than' if grow <= rows else 'worse than'} linear)")  # fmt: skip
        for name in STEPS:
            sa, sb = a["steps"][name]["seconds"], b["steps"][name]["seconds"]
            print(f"   {name:<9} {sb / sa:6.1f}x")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="10000,100000,1000000")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.epochs)))
    else:
        main([int(x) for x in a.rows.split(",")], a.epochs)
