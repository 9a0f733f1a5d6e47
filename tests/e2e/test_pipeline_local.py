"""The whole continuous-training pipeline on real taxi windows through kfp.local.

Runs exactly what the trigger's local backend runs (a worker process driving
kfp.local's SubprocessRunner), then scores a raw tf.Example with the exported
model. A second run whose data lacks a required column fails in the pipeline's
own TFDV step, and the backend names that component.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyarrow import csv

from services.trigger.backends import LocalBackend
from shared.schema import example_spec, load_schema
from shared.shard import ShardWriter, arrow_schema, read_shard
from tests.conftest import ROOT, TAXI_CSV, TAXI_SCHEMA

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
MODULE = ROOT / "examples" / "taxi" / "model.py"


def shards(tmp: Path, drop: tuple[str, ...] = ()) -> tuple[list[str], str]:
    schema = arrow_schema(example_spec(load_schema(TAXI_SCHEMA)))
    t = csv.read_csv(TAXI_CSV, convert_options=csv.ConvertOptions(strings_can_be_null=True))
    t = t.select(schema.names).cast(schema)
    ts = t.column("trip_start_timestamp")
    bounds = [datetime(2013, m, 1, tzinfo=UTC) for m in (1, 4, 7, 10)] + [
        datetime(2014, m, 1, tzinfo=UTC) for m in (1, 4)
    ]
    uris = []
    for k in range(len(bounds) - 1):
        lo, hi = (int(b.timestamp()) for b in bounds[k : k + 2])
        part = t.filter(pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi)))
        if drop:
            part = part.drop(list(drop))
        path = tmp / f"w{k}" / "data.parquet"
        path.parent.mkdir(parents=True)
        w = ShardWriter(part.schema, str(path))
        w.add(part.combine_chunks().to_batches()[0])
        w.finish()
        uris.append(str(path))
    return uris[:-1], uris[-1]


def params(tmp: Path, train: list[str], eval_uri: str) -> dict[str, object]:
    return {
        "run_dir": str(tmp / "run"),
        "windows_json": json.dumps(train),
        "eval_json": json.dumps([eval_uri]),
        "schema_path": str(TAXI_SCHEMA),
        "module_path": str(MODULE),
        "model_dir": str(tmp / "models" / "cand"),
        "baseline_model": "",
        "blocking_json": json.dumps(["SCHEMA_MISSING_COLUMN", "UNEXPECTED_DATA_TYPE"]),
        "epochs": 2,
    }


@pytest.mark.timeout(900)
def test_pipeline_runs_on_kfp_local_and_the_model_serves_raw_examples(tmp_path: Path) -> None:
    train, eval_uri = shards(tmp_path)
    p = params(tmp_path, train, eval_uri)
    backend = LocalBackend(poll_s=0.5)
    rid = asyncio.run(backend.submit("run-e2e", p))
    outcome = asyncio.run(backend.wait("run-e2e", rid, str(p["run_dir"])))
    log = (tmp_path / "run" / "run.log").read_text(errors="replace")
    assert outcome.state == "succeeded", log[-4000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    ev = result["evaluated"]
    assert ev["blessed"] is True, ev["failed_checks"]
    overall = ev["metrics"]["overall"]
    auc = next(v for k, v in overall.items() if "auc" in k.lower())
    assert 0.6 < auc <= 1.0
    assert any(s["slice"].startswith("payment_type") for s in ev["metrics"]["slices"])

    import tensorflow as tf

    from services.trigger.steps import raw_examples

    model = tf.saved_model.load(result["trained"]["model"])
    rows = read_shard(eval_uri).slice(0, 8)
    examples = raw_examples(rows, drop=("tips",))
    out = model.signatures["serving_default"](examples=tf.constant(examples))
    probs = next(iter(out.values())).numpy().reshape(-1)
    assert probs.shape == (8,) and ((probs >= 0) & (probs <= 1)).all()
    _ = pa


@pytest.mark.timeout(600)
def test_blocking_anomalies_fail_the_validation_component(tmp_path: Path) -> None:
    train, eval_uri = shards(tmp_path, drop=("fare",))
    p = params(tmp_path, train, eval_uri)
    backend = LocalBackend(poll_s=0.5)
    rid = asyncio.run(backend.submit("run-bad", p))
    outcome = asyncio.run(backend.wait("run-bad", rid, str(p["run_dir"])))
    assert outcome.state == "failed"
    assert outcome.failed_component == "validate", outcome
    assert outcome.log_tail and "fare" in outcome.log_tail
