"""Regression and multi-class through the real training steps (TFT, Keras, TFMA).

The binary taxi model is covered by test_training_steps; here the fare regression
(examples/taxi/fare) and the multi-class sensor model (string labels) each train,
export a serving signature under their own output key, and are evaluated by TFMA
with metrics and thresholds that fit their task.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctrain.replay import read_table
from services.trigger import steps
from shared import contract
from shared.schema import example_spec, load_schema
from shared.shard import arrow_schema
from tests.conftest import ROOT, TAXI_CSV, TAXI_SCHEMA
from tests.e2e.sensors.data import sensor_days

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FARE = ROOT / "examples" / "taxi" / "fare" / "model.py"
SENSORS = ROOT / "tests" / "e2e" / "sensors"


def shards(table: pa.Table, schema_path: Path, d: Path, cut: float = 0.75) -> tuple[str, str]:
    schema = arrow_schema(example_spec(load_schema(schema_path)))
    typed = pa.table([table.column(f.name).cast(f.type) for f in schema], schema=schema)
    n = int(typed.num_rows * cut)
    train, ev = str(d / "train.parquet"), str(d / "eval.parquet")
    pq.write_table(typed.slice(0, n), train)
    pq.write_table(typed.slice(n), ev)
    return train, ev


def run(module: Path, schema: Path, table: pa.Table, d: Path, task: str) -> dict[str, object]:
    train, ev = shards(table, schema, d)
    t = steps.transform(train, ev, str(schema), str(module), str(d / "tft"))
    trained = steps.train(t, str(module), str(d / "model"), epochs=3, task=task)
    return steps.evaluate(str(trained["model"]), ev, str(module), str(d / "eval"), task=task)


def serve(model_dir: str, table: pa.Table, schema: Path, key: str) -> np.ndarray:
    import tensorflow as tf

    from shared.tfexample import rows_to_examples

    spec = arrow_schema(example_spec(load_schema(schema)))
    typed = pa.table([table.column(f.name).cast(f.type) for f in spec], schema=spec)
    fn = tf.saved_model.load(model_dir).signatures["serving_default"]
    out = fn(examples=tf.constant(rows_to_examples(typed)))
    assert list(out) == [key]
    return np.asarray(out[key])


@pytest.mark.timeout(900)
def test_regression_on_the_taxi_fare(tmp_path: Path) -> None:
    table = read_table(TAXI_CSV).slice(0, 3000)
    result = run(FARE, TAXI_SCHEMA, table, tmp_path, "regression")
    overall = result["metrics"]["overall"]  # type: ignore[index]
    assert result["blessed"], result["failed_checks"]
    mae, mean_label = overall["mean_absolute_error"], overall["mean_label"]
    assert 0 < mae < 6.0 and 5 < mean_label < 20, overall
    module = contract.import_module(FARE)
    preds = serve(str(tmp_path / "model" / "saved_model"), table.slice(0, 5), TAXI_SCHEMA,
                  contract.output_key(module, "regression"))  # fmt: skip
    assert preds.shape == (5, 1) and np.all(np.isfinite(preds))


@pytest.mark.timeout(900)
def test_multiclass_with_string_labels(tmp_path: Path) -> None:
    table = sensor_days(0, 4, shifted=False, seed=3)
    schema = SENSORS / "schema.pbtxt"
    result = run(SENSORS / "model.py", schema, table, tmp_path, "multiclass")
    overall = result["metrics"]["overall"]  # type: ignore[index]
    assert result["blessed"], result["failed_checks"]
    assert overall["sparse_categorical_accuracy"] > 0.5, overall
    per_class = {k for k in overall if k.startswith("auc/class_id=")}
    assert per_class == {"auc/class_id=0", "auc/class_id=1", "auc/class_id=2"}, overall
    probs = serve(str(tmp_path / "model" / "saved_model"), table.slice(0, 5), schema,
                  "probabilities")  # fmt: skip
    assert probs.shape == (5, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
