"""Pipeline wall time on the 9,533 taxi rows: kfp.local (what the trigger's local
backend runs), each step a fresh interpreter and each step forked from the warm
step worker, against the same steps called in sequence in one plain Python
process, in the same run. Target overhead ratio <= 1.3.

    python bench/pipeline_overhead.py [--epochs 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCHEMA = ROOT / "examples" / "taxi" / "data" / "schema.pbtxt"
MODULE = ROOT / "examples" / "taxi" / "model.py"
CSV = ROOT / "examples" / "taxi" / "data" / "taxi_2013_2014.csv"


def windows(d: Path) -> tuple[list[str], str]:
    """All 9,533 rows: 2013 + most of 2014 in four windows, the last ~1,500 held out."""
    import pyarrow.compute as pc
    from pyarrow import csv

    from shared.schema import example_spec, load_schema
    from shared.shard import ShardWriter, arrow_schema

    schema = arrow_schema(example_spec(load_schema(SCHEMA)))
    t = csv.read_csv(CSV, convert_options=csv.ConvertOptions(strings_can_be_null=True))
    t = t.select(schema.names).cast(schema)
    t = t.take(pc.sort_indices(t, [("trip_start_timestamp", "ascending")]))
    cuts = [0, 2000, 4000, 6000, 8033, t.num_rows]
    uris = []
    for k in range(len(cuts) - 1):
        p = d / f"w{k}" / "data.parquet"
        p.parent.mkdir(parents=True)
        w = ShardWriter(schema, str(p))
        w.add(t.slice(cuts[k], cuts[k + 1] - cuts[k]).combine_chunks().to_batches()[0])
        w.finish()
        uris.append(str(p))
    return uris[:-1], uris[-1]


def plain(train: list[str], ev: str, out: Path, epochs: int) -> tuple[float, dict[str, float]]:
    from services.trigger import steps

    marks: dict[str, float] = {}
    t0 = time.perf_counter()
    g = steps.gather(train, [ev], str(out / "gather"))
    marks["gather"] = time.perf_counter() - t0
    t = time.perf_counter()
    steps.validate_data(
        str(g["train"]), str(SCHEMA), str(out / "validate"), ["SCHEMA_MISSING_COLUMN"]
    )
    marks["validate"] = time.perf_counter() - t
    t = time.perf_counter()
    tr = steps.transform(str(g["train"]), str(g["eval"]), str(SCHEMA), str(MODULE), str(out / "tf"))
    marks["transform"] = time.perf_counter() - t
    t = time.perf_counter()
    m = steps.train(tr, str(MODULE), str(out / "model"), epochs=epochs)
    marks["train"] = time.perf_counter() - t
    t = time.perf_counter()
    steps.evaluate(str(m["model"]), str(g["eval"]), str(MODULE), str(out / "eval"))
    marks["evaluate"] = time.perf_counter() - t
    return time.perf_counter() - t0, marks


def kfp_local(
    train: list[str], ev: str, out: Path, epochs: int, warm: bool
) -> tuple[float, dict[str, float]]:
    from services.trigger.backends import LocalBackend, components_of
    from services.trigger.warm import WarmProcess

    params = {
        "run_dir": str(out / "run"),
        "windows_json": json.dumps(train),
        "eval_json": json.dumps([ev]),
        "schema_path": str(SCHEMA),
        "module_path": str(MODULE),
        "model_dir": str(out / "model"),
        "baseline_model": "",
        "blocking_json": '["SCHEMA_MISSING_COLUMN"]',
        "epochs": epochs,
    }
    worker = WarmProcess() if warm else None
    if worker is not None:
        # The trigger starts its worker at start-up: its imports are not a run's time.
        worker.ensure()
        deadline = time.monotonic() + 120
        while not worker.ready():
            assert time.monotonic() < deadline, "the warm step worker did not come up"
            time.sleep(0.2)  # probing readiness (ping), not guessing it
    b = LocalBackend(poll_s=0.2, step_worker=worker)
    t0 = time.perf_counter()
    rid = asyncio.run(b.submit("bench", params))
    outcome = asyncio.run(b.wait("bench", rid, params["run_dir"]))
    assert outcome.state == "succeeded", outcome
    took = time.perf_counter() - t0
    if worker is not None:
        worker.stop()
    log = (Path(params["run_dir"]) / "run.log").read_text()
    return took, {c["name"]: c.get("seconds", float("nan")) for c in components_of(log)}


def run(epochs: int = 2) -> None:
    d = Path(tempfile.mkdtemp(prefix="ctrain-bench-pipeline-"))
    train, ev = windows(d)
    cold, cold_steps = kfp_local(train, ev, d / "cold", epochs, warm=False)
    warm, warm_steps = kfp_local(train, ev, d / "warm", epochs, warm=True)
    # The plain run goes last and in this (warm) process: the most favourable baseline.
    p, marks = plain(train, ev, d / "plain", epochs)

    def line(steps: dict[str, float]) -> str:
        return ", ".join(f"{s} {v:.1f}s" for s, v in steps.items())

    print(f"kfp.local, fresh interpreter per step: {cold:.1f} s   ({line(cold_steps)})")
    print(f"kfp.local, warm step worker:           {warm:.1f} s   ({line(warm_steps)})")
    print(f"plain script, one process:             {p:.1f} s   ({line(marks)})")
    print(f"ratio to the plain script: fresh {cold / p:.2f}, warm {warm / p:.2f} (target <= 1.3)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    run(ap.parse_args().epochs)
