"""The training steps on real taxi data: gather -> validate -> transform -> train -> evaluate.

One module-scoped chain (train on everything but the latest 1,500 trips, in
three windows; evaluate on those 1,500) feeds every test; a second fixture
trains a label-shuffled model and evaluates it against the real one.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyarrow import csv

from services.trigger import steps
from shared.schema import example_spec, load_schema
from shared.shard import arrow_schema
from tests.conftest import ROOT, TAXI_CSV, TAXI_SCHEMA

pytestmark = pytest.mark.integration

MODULE = str(ROOT / "examples" / "taxi" / "model.py")
EVAL_ROWS = 1500
EPOCHS = 3
BLOCKING = ["SCHEMA_MISSING_COLUMN"]


@dataclass
class Chain:
    root: Path
    table: pa.Table
    windows: list[str]
    eval_window: str
    gathered: dict[str, Any] = field(default_factory=dict)
    validated: dict[str, Any] = field(default_factory=dict)
    transformed: dict[str, str] = field(default_factory=dict)
    trained: dict[str, Any] = field(default_factory=dict)
    evaluated: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def timed(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        out = fn(*args, **kwargs)
        self.seconds[name] = round(time.monotonic() - start, 1)
        return out


def taxi_table() -> pa.Table:
    """All trips, typed like ingest's window shards, oldest first."""
    schema = arrow_schema(example_spec(load_schema(TAXI_SCHEMA)))
    table = csv.read_csv(TAXI_CSV, convert_options=csv.ConvertOptions(strings_can_be_null=True))
    table = table.select(schema.names).cast(schema)
    return table.take(pc.sort_indices(table, [("trip_start_timestamp", "ascending")]))


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    root = tmp_path_factory.mktemp("training")
    table = taxi_table()
    n_train = table.num_rows - EVAL_ROWS
    # Three training windows of uneven size, as windows close on time, not count.
    bounds = [0, 3000, 6000, n_train]
    windows = []
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        path = root / f"window-{i}.parquet"
        pq.write_table(table.slice(a, b - a), path)
        windows.append(str(path))
    eval_window = root / "window-eval.parquet"
    pq.write_table(table.slice(n_train), eval_window)

    c = Chain(root, table, windows, str(eval_window))
    c.gathered = c.timed("gather", steps.gather, windows, [str(eval_window)], str(root / "gather"))
    c.validated = c.timed(
        "validate",
        steps.validate_data,
        c.gathered["train"],
        str(TAXI_SCHEMA),
        str(root / "validate"),
        BLOCKING,
    )
    c.transformed = c.timed(
        "transform",
        steps.transform,
        c.gathered["train"],
        c.gathered["eval"],
        str(TAXI_SCHEMA),
        MODULE,
        str(root / "transform"),
    )
    c.trained = c.timed(
        "train", steps.train, c.transformed, MODULE, str(root / "train"), epochs=EPOCHS
    )
    c.evaluated = c.timed(
        "evaluate",
        steps.evaluate,
        c.trained["model"],
        c.gathered["eval"],
        MODULE,
        str(root / "evaluate"),
    )
    yield c
    print(f"\nstep wall times (s): {c.seconds}")


@dataclass
class Shuffled:
    trained: dict[str, Any]
    evaluated: dict[str, Any]
    keras_loads: list[str]  # models evaluate loaded through tf.keras (it should load none)
    savedmodel_loads: list[str]  # every SavedModel evaluate loaded, by path


@pytest.fixture(scope="module")
def shuffled(chain: Chain) -> Shuffled:
    """A model trained on permuted labels, evaluated with the real model as baseline."""
    trained = chain.timed(
        "train_shuffled",
        steps.train,
        chain.transformed,
        MODULE,
        str(chain.root / "train-shuffled"),
        epochs=1,
        shuffle_labels=True,
    )
    import tensorflow as tf

    keras_loads: list[str] = []

    def keras_load(path: str, *args: Any, **kwargs: Any) -> Any:
        keras_loads.append(str(path))
        raise OSError("evaluate must not load models through tf.keras")

    savedmodel_loads: list[str] = []
    original_load = tf.saved_model.load

    def recorded_load(path: str, *args: Any, **kwargs: Any) -> Any:
        savedmodel_loads.append(str(path))
        return original_load(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tf.keras.models, "load_model", keras_load)
        # TFMA loads through the v1 alias, the labels through tf.saved_model.load.
        mp.setattr(tf.saved_model, "load", recorded_load)
        mp.setattr(tf.compat.v1.saved_model, "load_v2", recorded_load)
        evaluated = chain.timed(
            "evaluate_vs_baseline",
            steps.evaluate,
            trained["model"],
            chain.gathered["eval"],
            MODULE,
            str(chain.root / "evaluate-shuffled"),
            baseline_model_dir=chain.trained["model"],
        )
    for name, result in (("real", chain.evaluated), ("shuffled", evaluated)):
        card = [s for s in result["metrics"]["slices"] if s["slice"] == "payment_type=Credit Card"]
        print(f"\n{name} model, overall: {result['metrics']['overall']}, {card}")
    print(f"shuffled model failed checks: {evaluated['failed_checks']}")
    return Shuffled(trained, evaluated, keras_loads, savedmodel_loads)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_gather_concatenates_windows(chain: Chain) -> None:
    g = chain.gathered
    assert g["train_rows"] == chain.table.num_rows - EVAL_ROWS
    assert g["eval_rows"] == EVAL_ROWS
    train = pq.read_table(g["train"])
    assert train.num_rows == g["train_rows"]
    assert train.schema == chain.table.schema
    # Order preserved: the gathered set ends where the held-out window begins.
    last_train = train.column("trip_start_timestamp")[-1].as_py()
    first_eval = pq.read_table(g["eval"]).column("trip_start_timestamp")[0].as_py()
    assert last_train <= first_eval


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_validate_writes_stats_and_blocks_missing_column(chain: Chain, tmp_path: Path) -> None:
    import tensorflow_data_validation as tfdv

    stats = tfdv.load_stats_binary(chain.validated["stats"])
    assert stats.datasets[0].num_examples == chain.gathered["train_rows"]
    # The real data has non-blocking anomalies (unseen company names), listed.
    anomalies = chain.validated["anomalies"]
    assert all(set(a) == {"feature", "code", "description"} for a in anomalies)
    assert not any(a["code"] in BLOCKING for a in anomalies)

    broken = tmp_path / "no_payment_type.parquet"
    pq.write_table(pq.read_table(chain.gathered["train"]).drop(["payment_type"]), broken)
    with pytest.raises(steps.BlockingAnomalies) as err:
        steps.validate_data(str(broken), str(TAXI_SCHEMA), str(tmp_path / "v"), BLOCKING)
    assert "payment_type: SCHEMA_MISSING_COLUMN" in str(err.value)
    assert [a["feature"] for a in err.value.anomalies] == ["payment_type"]
    # Stats are written even when the data is rejected (for the post-mortem).
    assert (tmp_path / "v" / "stats.pb").is_file()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_transform_graph_has_vocabulary(chain: Chain) -> None:
    import tensorflow_transform as tft

    model = steps.load_module(MODULE)
    tto = tft.TFTransformOutput(chain.transformed["transform_graph"])
    vocab = tto.vocabulary_by_name("payment_type")
    assert {b"Cash", b"Credit Card"} <= set(vocab)
    # Vocabularies are ordered by frequency: cash is the most common payment.
    assert vocab[0] == b"Cash"
    spec = tto.transformed_feature_spec()
    assert model.LABEL_KEY in spec
    assert "tips" in tto.raw_feature_spec()
    for split in ("train", "eval"):
        assert Path(chain.transformed[split]).stat().st_size > 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_saved_model_scores_raw_examples(chain: Chain) -> None:
    import numpy as np
    import tensorflow as tf

    model = steps.load_module(MODULE)
    history = chain.trained["history"]
    assert 1 <= chain.trained["epochs_run"] <= EPOCHS
    assert history["val_auc"][-1] > 0.8

    eval_table = pq.read_table(chain.gathered["eval"]).slice(0, 200)
    examples = steps.raw_examples(eval_table, drop=model.RAW_LABEL_FEATURES)
    assert all(b"tips" not in e for e in examples)
    loaded = tf.saved_model.load(chain.trained["model"])
    serve = loaded.signatures["serving_default"]
    assert list(serve.structured_input_signature[1]) == ["examples"]
    probs = serve(examples=tf.constant(examples))["probabilities"].numpy()
    assert probs.shape == (200, 1)
    assert np.all((probs >= 0) & (probs <= 1))
    # The model learned the obvious: credit-card trips tip big far more often.
    payment = np.array(eval_table.column("payment_type").to_pylist())
    assert probs[payment == "Credit Card"].mean() > 3 * probs[payment == "Cash"].mean()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_evaluate_blesses_real_model(chain: Chain) -> None:
    import tensorflow_model_analysis as tfma

    e = chain.evaluated
    assert e["blessed"] is True, e["failed_checks"]
    assert e["failed_checks"] == []
    assert e["baseline_metrics"] is None
    overall = e["metrics"]["overall"]
    assert overall["example_count"] == EVAL_ROWS
    assert overall["auc"] > 0.85
    assert overall["binary_accuracy"] > 0.8
    assert 0.7 < overall["calibration"] < 1.3
    assert all(isinstance(v, float) for v in overall.values())

    slices = {s["slice"]: s["metrics"] for s in e["metrics"]["slices"]}
    payment = {k: v for k, v in slices.items() if k.startswith("payment_type=")}
    assert {"payment_type=Cash", "payment_type=Credit Card"} <= set(payment)
    assert sum(m["example_count"] for m in payment.values()) == EVAL_ROWS
    assert slices["payment_type=Cash"]["mean_label"] < 0.05
    assert slices["payment_type=Credit Card"]["mean_label"] > 0.5
    assert any(k.startswith("trip_start_hour=") for k in slices)
    assert tfma.load_validation_result(e["eval_uri"]).validation_ok


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_evaluate_scores_both_models_through_the_savedmodel_alone(
    chain: Chain, shuffled: Shuffled
) -> None:
    # TFMA left to guess a model's type loads it through tf.keras first: one more load
    # per model, and a different answer in a process whose tf.keras is Keras 3.
    assert shuffled.keras_loads == []
    assert shuffled.evaluated["baseline_metrics"]["overall"]["example_count"] == EVAL_ROWS
    # The candidate loaded for the labels is the one TFMA scores: each model loads once.
    assert sorted(shuffled.savedmodel_loads) == sorted(
        [shuffled.trained["model"], chain.trained["model"]]
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_shuffled_labels_model_is_not_blessed(chain: Chain, shuffled: Shuffled) -> None:
    e = shuffled.evaluated
    assert e["blessed"] is False
    assert e["metrics"]["overall"]["auc"] < chain.evaluated["metrics"]["overall"]["auc"] - 0.1
    # The baseline's metrics are those of the real model on the same data.
    baseline = e["baseline_metrics"]["overall"]
    assert baseline["auc"] == pytest.approx(chain.evaluated["metrics"]["overall"]["auc"])
    change = [c for c in e["failed_checks"] if c.startswith("auc change vs baseline on overall")]
    assert change, e["failed_checks"]
    assert "change_threshold" in change[0]


# Beam options as a user would name a runner: not the in-process defaults, so the steps
# take the path of a remote runner (rows read by the pipeline, Beam's own pickles).
RUNNER_ARGS = [
    "--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner",
    "--direct_num_workers=1",
]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_beam_args_run_transform_and_evaluate_on_the_named_runner(
    chain: Chain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``beam_args`` the pipeline reads the rows from the artifact store itself (the
    step's process never does: a worker elsewhere could not see its memory), without the
    in-process shortcuts; the data and metrics are those of the in-process run."""
    import shared.shard
    from services.trigger import beam_memo

    def driver_read(uri: str) -> Any:
        raise AssertionError(f"the step's process read the rows of {uri}")

    def shortcut() -> Any:
        raise AssertionError("in-process shortcuts under a named runner")

    monkeypatch.setattr(shared.shard, "read_shard", driver_read)
    monkeypatch.setattr(beam_memo, "in_process", shortcut)
    out = steps.transform(
        chain.gathered["train"],
        chain.gathered["eval"],
        str(TAXI_SCHEMA),
        MODULE,
        str(tmp_path / "transform"),
        beam_args=RUNNER_ARGS,
    )
    for split in ("train", "eval"):
        _assert_same_rows(out[split], chain.transformed[split])
    monkeypatch.undo()  # evaluate reads the held-out rows to compute their labels
    monkeypatch.setattr(beam_memo, "in_process", shortcut)
    e = steps.evaluate(
        chain.trained["model"],
        chain.gathered["eval"],
        MODULE,
        str(tmp_path / "evaluate"),
        beam_args=RUNNER_ARGS,
    )
    assert e["blessed"] is True
    assert e["metrics"]["overall"] == pytest.approx(chain.evaluated["metrics"]["overall"])

    with pytest.raises(steps.StepError, match="NoSuchRunner"):
        steps.transform(
            chain.gathered["train"],
            chain.gathered["eval"],
            str(TAXI_SCHEMA),
            MODULE,
            str(tmp_path / "bad"),
            beam_args=["--runner=NoSuchRunner"],
        )


def test_records_shuffled_before_parsing_come_in_the_order_of_parsed_rows_shuffled(
    chain: Chain,
) -> None:
    """The trainer shuffles serialized records (cheap) where it used to shuffle parsed rows:
    same buffer, same seed, one element per row either way, so the same batches."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_transform as tft

    from services.trigger.steps.trainer import SHUFFLE_BUFFER, transformed_dataset

    module = steps.load_module(MODULE)
    spec = tft.TFTransformOutput(chain.transformed["transform_graph"]).transformed_feature_spec()
    path, key = chain.transformed["train"], module.LABEL_KEY
    tf.random.set_seed(0)
    rows = transformed_dataset(path, spec, key, 256).unbatch().shuffle(SHUFFLE_BUFFER, seed=7)
    old = list(rows.batch(256).as_numpy_iterator())
    tf.random.set_seed(0)
    new = list(transformed_dataset(path, spec, key, 256, shuffle_seed=7).as_numpy_iterator())
    unshuffled = next(transformed_dataset(path, spec, key, 256).as_numpy_iterator())
    assert len(new) == len(old) > 10
    assert not np.array_equal(new[0][0]["fare_xf"], unshuffled[0]["fare_xf"])
    for (f_old, y_old), (f_new, y_new) in zip(old, new, strict=True):
        np.testing.assert_array_equal(y_old, y_new)
        assert set(f_old) == set(f_new)
        for name in f_old:
            np.testing.assert_array_equal(f_old[name], f_new[name])


def test_transform_refuses_empty_or_unreadable_training_rows(chain: Chain, tmp_path: Path) -> None:
    from services.trigger.steps.common import parquet_rows

    # Beam's filesystems know no file:// scheme; the artifact store's URIs may carry one.
    train = chain.gathered["train"]
    assert parquet_rows(f"file://{train}") == parquet_rows(train) == chain.gathered["train_rows"]
    empty = tmp_path / "empty.parquet"
    pq.write_table(chain.table.slice(0, 0), empty)
    with pytest.raises(steps.StepError, match="no training rows"):
        steps.transform(
            str(empty), chain.gathered["eval"], str(TAXI_SCHEMA), MODULE, str(tmp_path / "a")
        )
    torn = tmp_path / "torn.parquet"
    torn.write_bytes(Path(chain.gathered["train"]).read_bytes()[:1000])
    with pytest.raises(steps.StepError, match=r"cannot read .*torn\.parquet"):
        steps.transform(
            str(torn), chain.gathered["eval"], str(TAXI_SCHEMA), MODULE, str(tmp_path / "b")
        )


def _signature_names(saved_model_dir: str) -> set[str]:
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    return set(proto.meta_graphs[0].signature_def)


def _assert_same_rows(path_a: str, path_b: str) -> None:
    """The same transformed rows in the same order; z-scores to float32 rounding (a
    different trace or batching orders the float32 ops of their mean and variance
    differently)."""
    import numpy as np

    a, b = _transformed_rows(path_a), _transformed_rows(path_b)
    assert set(a) == set(b)
    for name in a:
        if name.endswith("_xf") and name[: -len("_xf")] in ("fare", "trip_miles", "trip_seconds"):
            np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-5)
        else:
            assert a[name] == b[name], name


def _transformed_rows(path: str) -> dict[str, list[float]]:
    import tensorflow as tf

    columns: dict[str, list[float]] = {}
    for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
        example = tf.train.Example.FromString(record.numpy())
        for name, feature in example.features.feature.items():
            values = list(feature.float_list.value) or list(feature.int64_list.value)
            columns.setdefault(name, []).extend(values)
    return columns


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tf1_graph_and_tf_function_tracing_transform_alike(chain: Chain, tmp_path: Path) -> None:
    """The taxi module asks for TF1 graph tracing; the same preprocessing_fn traced into
    tf.functions (TFT's default) gives the same data. The second run lands on a copy of
    the first one's output, as a retried step would, and replaces it."""
    import shutil

    import tensorflow_transform as tft

    # TFT loads a transform graph written in TF1 mode through this signature.
    graph_dir = Path(chain.transformed["transform_graph"]) / "transform_fn"
    assert "transform_signature" in _signature_names(str(graph_dir))

    module = tmp_path / "model_tf2.py"
    module.write_text(Path(MODULE).read_text().replace("TFT_FORCE_TF_COMPAT_V1 = True", ""))
    out = tmp_path / "transform"
    shutil.copytree(Path(chain.transformed["transform_graph"]).parent, out)
    again = steps.transform(
        chain.gathered["train"], chain.gathered["eval"], str(TAXI_SCHEMA), str(module), str(out)
    )
    assert "transform_signature" not in _signature_names(
        str(Path(again["transform_graph"]) / "transform_fn")
    )

    tf1 = tft.TFTransformOutput(chain.transformed["transform_graph"])
    tf2 = tft.TFTransformOutput(again["transform_graph"])
    for vocab in ("payment_type", "company"):
        assert tf1.vocabulary_by_name(vocab) == tf2.vocabulary_by_name(vocab)
    assert tf1.transformed_feature_spec() == tf2.transformed_feature_spec()
    for split in ("train", "eval"):
        _assert_same_rows(chain.transformed[split], again[split])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_export_keeps_its_signatures_and_no_layer_traces(chain: Chain) -> None:
    """Readers call the two signatures only; Keras's per-layer call traces are not saved
    (save_traces=False), which keeps training's export and every later load shorter."""
    from tensorflow.core.protobuf import saved_model_pb2

    model_dir = Path(chain.trained["model"])
    assert {"serving_default", "transform_features"} <= _signature_names(str(model_dir))
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((model_dir / "saved_model.pb").read_bytes())
    functions = [f.signature.name for f in proto.meta_graphs[0].graph_def.library.function]
    assert functions
    assert not [f for f in functions if "layer_call" in f]
    # The TFT layer's vocabularies travel with the model.
    assert {p.name for p in (model_dir / "assets").iterdir()} == {"payment_type", "company"}
