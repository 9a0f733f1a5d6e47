"""The training pipeline's steps as pure functions over local paths.

KFP components (``services.trigger.pipeline``) are thin wrappers around these;
tests call them directly. Inputs and outputs are paths and JSON-able values.
Everything model-specific comes from the *model module* (the contract in
``shared/contract.py``, docs/models.md), loaded by path: ``LABEL_KEY``,
``RAW_LABEL_FEATURES``, ``preprocessing_fn``, ``build_model``, ``eval_config``.

Data formats, and why:

- Windows and the gathered train/eval sets are Parquet (flat nullable columns).
- TFT and the serving signature both parse *serialized tf.Examples* with the
  schema's raw feature spec (``raw_examples`` converts Arrow rows, nulls left
  out). Training-time and serving-time inputs therefore go through the same
  parser, and missing values look the same (absent values of a SparseTensor).
- Transformed train/eval data are GZIP TFRecords of tf.Examples with TFT's
  transformed feature spec, read back with ``tf.data``.
- The SavedModel has two signatures: ``serving_default`` (serialized raw
  examples without the raw label features -> the model's output under the
  module's ``OUTPUT_KEY``: ``probabilities`` or ``predictions`` by task) and
  ``transform_features`` (serialized raw examples -> all TFT outputs, label
  included). ``evaluate`` computes the label of each held-out example with the
  latter and writes it into the eval examples as an int feature ``LABEL_KEY``,
  which TFMA reads with ``label_key`` -- so the label is defined once, in
  ``preprocessing_fn``, and TFMA needs no preprocessing support of its own.

Heavy libraries (TensorFlow, TFT, TFMA, TFDV, Beam) are imported inside the
functions so that importing this module stays cheap.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import types
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from services.trigger.beam_memo import in_process
from shared import contract

if TYPE_CHECKING:
    import pyarrow as pa

SERVING_SIGNATURE = contract.SERVING_SIGNATURE
TRANSFORM_SIGNATURE = contract.TRANSFORM_SIGNATURE
SERVING_INPUT = contract.SERVING_INPUT
TFMA_MODEL_TYPE = "tf_generic"  # tfma.constants.TF_GENERIC, without importing TFMA here
CANDIDATE = "candidate"
BASELINE = "baseline"
# In-process Beam: the data of one training run fits a worker; one worker
# avoids a second TF runtime per process on a 2-core box.
# Beam's DirectRunner now first tries Prism, which downloads a binary (no network here)
# and leaves gRPC threads that crash the process at exit; the in-process FnApiRunner
# is what DirectRunner ran before and needs neither.
BEAM_ARGS = (
    "--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner",
    "--direct_num_workers=1",
    "--direct_running_mode=in_memory",
)


class StepError(Exception):
    """A step cannot run on its inputs (missing/empty data, bad module, ...)."""


class BlockingAnomalies(StepError):
    """The training data has anomalies whose type the caller declared blocking."""

    def __init__(self, anomalies: list[dict[str, str]]) -> None:
        self.anomalies = anomalies
        listed = "; ".join(f"{a['feature'] or '<dataset>'}: {a['code']}" for a in anomalies)
        super().__init__(f"{len(anomalies)} blocking anomalies: {listed}")


def load_module(module_path: str) -> types.ModuleType:
    """The model module, checked against the contract (``shared.contract``).

    A run reads the copy the trigger put in its directory; on an object store
    (a KFP pod) that copy is fetched to local disk first.
    """
    if "://" in module_path:
        module_path = _local_copy(module_path)
    try:
        return contract.check(module_path)
    except contract.ContractError as e:
        raise StepError(str(e)) from e


def _local_copy(uri: str) -> str:
    import tempfile

    from shared.artifacts import ArtifactStore

    data = ArtifactStore(uri.rsplit("/", 1)[0]).read_bytes(uri)
    path = os.path.join(tempfile.mkdtemp(prefix="ctrain-module-"), uri.rsplit("/", 1)[1])
    with open(path, "wb") as f:
        f.write(data)
    return path


def raw_examples(table: pa.Table, drop: Iterable[str] = ()) -> list[bytes]:
    """Serialized tf.Examples of the rows (``shared.tfexample``, the one encoder)."""
    from shared.tfexample import EncodeError, rows_to_examples

    try:
        return rows_to_examples(table, drop)
    except EncodeError as e:
        raise StepError(str(e)) from e


def _write_parquet(table: pa.Table, path: str) -> None:
    import pyarrow.parquet as pq

    tmp = f"{path}.tmp"
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)  # a retried step never sees a half-written file


def _concat(uris: list[str], what: str) -> Any:
    import pyarrow as pa

    from shared.shard import read_shard

    tables = []
    for uri in uris:
        try:
            tables.append(read_shard(uri))
        except (OSError, pa.ArrowException) as e:
            raise StepError(f"cannot read {what} shard {uri}: {e}") from e
    try:
        table = pa.concat_tables(tables)
    except pa.ArrowInvalid as e:
        raise StepError(f"{what} shards have different schemas: {e}") from e
    if table.num_rows == 0:
        raise StepError(f"the {len(uris)} {what} shards hold no rows")
    return table


def gather(
    window_uris: list[str], eval_uris: list[str], out_dir: str, labels_json: str = ""
) -> dict[str, str | int]:
    """Concatenate the training shards into out_dir/train.parquet and the held-out shards
    into out_dir/eval.parquet. Returns {"train", "eval", "train_rows", "eval_rows"}.

    ``labels_json`` (labels from their own stream): {"features", "default", "matured"}.
    Each shard's joined labels are set on its rows; a row without one gets the default
    when its shard matured and a default is given, else it is left out. The counts go to
    out_dir/labels.json."""
    if not window_uris:
        raise StepError("no training windows to gather")
    if not eval_uris:
        raise StepError("no held-out windows to evaluate on")
    os.makedirs(out_dir, exist_ok=True)
    spec = json.loads(labels_json) if labels_json else None
    if spec is None:
        train_table = _concat(window_uris, "training")
        eval_table = _concat(eval_uris, "held-out")
    else:
        counts: dict[str, Any] = {"windows": {}}
        train_table = _labelled(window_uris, "training", spec, counts, "train")
        eval_table = _labelled(eval_uris, "held-out", spec, counts, "eval")
        with open(os.path.join(out_dir, "labels.json"), "w") as f:
            json.dump(counts, f, indent=1, sort_keys=True)
    train_path = os.path.join(out_dir, "train.parquet")
    eval_path = os.path.join(out_dir, "eval.parquet")
    _write_parquet(train_table, train_path)
    _write_parquet(eval_table, eval_path)
    return {
        "train": train_path,
        "eval": eval_path,
        "train_rows": train_table.num_rows,
        "eval_rows": eval_table.num_rows,
    }


def _labelled(
    uris: list[str], what: str, spec: dict[str, Any], counts: dict[str, Any], part: str
) -> Any:
    import pyarrow as pa

    from shared import labels as lb
    from shared.artifacts import ArtifactStore
    from shared.shard import read_shard

    features = tuple(spec["features"])
    matured = set(spec.get("matured") or ())
    tables = []
    total = lb.Counts()
    for uri in uris:
        store = ArtifactStore(lb.shard_dir(uri))
        try:
            table = read_shard(uri)
            joined = lb.read_joined(store, uri)
        except (OSError, pa.ArrowException, lb.LabelsUnreadable) as e:
            raise StepError(f"cannot read the {what} shard {uri} or its labels: {e}") from e
        default = spec.get("default") if uri in matured else None
        got, n = lb.attach(table, joined, features, default)
        tables.append(got)
        counts["windows"][uri] = n.as_dict()
        total = total + n
    counts[part] = total.as_dict()
    if sum(t.num_rows for t in tables) == 0:
        raise StepError(
            f"no labelled {what} examples: {total.unlabelled} examples wait for their labels"
        )
    return pa.concat_tables(tables)


def validate_data(
    data_uri: str, schema_path: str, out_dir: str, blocking: list[str]
) -> dict[str, object]:
    """TFDV statistics (out_dir/stats.pb) and anomalies against the schema.

    Drift/skew comparators are removed from the schema: drift is the validator
    service's business, this step checks the data is trainable. Raises
    BlockingAnomalies if any anomaly's code is in ``blocking``.
    """
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    from shared.schema import load_schema, without_comparators
    from shared.shard import read_shard
    from shared.stats import statistics_in_memory

    schema = load_schema(_local_copy(schema_path) if "://" in schema_path else schema_path)
    table = read_shard(data_uri)
    stats = statistics_in_memory(table, schema)
    os.makedirs(out_dir, exist_ok=True)
    stats_path = os.path.join(out_dir, "stats.pb")
    with open(stats_path, "wb") as f:
        f.write(stats.SerializeToString())  # readable with tfdv.load_stats_binary

    result = tfdv.validate_statistics(stats, without_comparators(schema))
    anomalies: list[dict[str, str]] = []
    if result.data_missing:
        anomalies.append(
            {"feature": "", "code": "DATA_MISSING", "description": "the data has no examples"}
        )
    for name, info in sorted(result.anomaly_info.items()):
        for reason in info.reason:
            anomalies.append(
                {
                    "feature": name,
                    "code": anomalies_pb2.AnomalyInfo.Type.Name(reason.type),
                    "description": reason.description or reason.short_description,
                }
            )
    for reason in result.dataset_anomaly_info.reason:
        anomalies.append(
            {
                "feature": "",
                "code": anomalies_pb2.AnomalyInfo.Type.Name(reason.type),
                "description": reason.description or reason.short_description,
            }
        )
    block = set(blocking)
    blocking_found = [a for a in anomalies if a["code"] in block]
    if blocking_found:
        raise BlockingAnomalies(blocking_found)
    return {"stats": stats_path, "anomalies": anomalies}


def transform(
    train_uri: str, eval_uri: str, schema_path: str, module_path: str, out_dir: str
) -> dict[str, str]:
    """TFT AnalyzeAndTransform over the training data with the module's preprocessing_fn.

    Writes out_dir/transform_graph (TFTransformOutput) and GZIP TFRecords of
    transformed tf.Examples: out_dir/train.tfrecord.gz, out_dir/eval.tfrecord.gz.
    The eval set is transformed with the analyzers of the training data.
    """
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io
    from tfx_bsl.public import tfxio

    from shared.schema import load_schema
    from shared.shard import read_shard

    module = load_module(module_path)
    schema = load_schema(_local_copy(schema_path) if "://" in schema_path else schema_path)
    train_records = raw_examples(read_shard(train_uri))
    eval_records = raw_examples(read_shard(eval_uri))
    if not train_records:
        raise StepError(f"no training rows in {train_uri}")

    graph_dir = os.path.join(out_dir, "transform_graph")
    # A retried step (a re-attached run, a KFP retry) finds the last attempt's graph:
    # WriteTransformFn refuses to publish over it.
    for leftover in (graph_dir, os.path.join(out_dir, "tmp")):
        shutil.rmtree(leftover, ignore_errors=True)
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "transform_graph": graph_dir,
        "train": os.path.join(out_dir, "train.tfrecord.gz"),
        "eval": os.path.join(out_dir, "eval.tfrecord.gz"),
    }
    # The source decodes records into Arrow with TensorRepresentations from the
    # schema: VarLen features -> SparseTensor inputs of preprocessing_fn.
    source = tfxio.TFExampleBeamRecord(
        physical_format="inmem", telemetry_descriptors=["ctrain", "transform"], schema=schema
    )
    try:
        with (
            in_process(),
            beam.Pipeline(options=PipelineOptions(list(BEAM_ARGS))) as p,
            tft_beam.Context(
                temp_dir=os.path.join(out_dir, "tmp"),
                force_tf_compat_v1=contract.tft_compat_v1(module),
            ),
        ):
            raw_train = (
                p
                | "CreateTrain" >> beam.Create(train_records, reshuffle=False)
                | "DecodeTrain" >> source.BeamSource()
            )
            raw_eval = (
                p
                | "CreateEval" >> beam.Create(eval_records, reshuffle=False)
                | "DecodeEval" >> source.BeamSource()
            )
            # Record batches out, encoded to tf.Examples in C++ a batch at a time: instance
            # dicts (a Python dict per row, then a Python encoder) were most of the step's
            # time per row.
            train_xf, transform_fn = (
                raw_train,
                source.TensorAdapterConfig(),
            ) | "AnalyzeAndTransform" >> tft_beam.AnalyzeAndTransformDataset(
                module.preprocessing_fn, output_record_batches=True
            )
            eval_xf = (
                (raw_eval, source.TensorAdapterConfig()),
                transform_fn,
            ) | "TransformEval" >> tft_beam.TransformDataset(output_record_batches=True)
            _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(graph_dir)
            for name, dataset in (("Train", train_xf), ("Eval", eval_xf)):
                _ = (
                    dataset
                    | f"Encode{name}" >> tft_beam.EncodeTransformedDataset()
                    | f"Write{name}"
                    >> beam.io.WriteToTFRecord(
                        paths[name.lower()],
                        shard_name_template="",
                        compression_type=beam.io.filesystem.CompressionTypes.GZIP,
                    )
                )
    except Exception as e:  # Beam re-raises worker errors with their own types
        raise StepError(f"tf.Transform failed: {e}") from e
    # TFTransformOutput.raw_feature_spec() (the serving parser) reads the raw
    # schema from here; WriteTransformFn only writes the transformed one.
    metadata_io.write_metadata(
        dataset_metadata.DatasetMetadata(schema),
        os.path.join(graph_dir, tft.TFTransformOutput.RAW_METADATA_DIR),
    )
    return paths


# Libraries whose own code autograph should leave alone: both write graph-safe code (Keras
# 2's control flow is on Python values; TFT also runs as TF1 graphs, where no autograph
# exists), and converting them costs seconds per step. A model module's own functions
# are still converted.
UNCONVERTED_LIBRARIES = ("tf_keras", "tensorflow_transform")


def libraries_without_autograph() -> None:
    """Keep autograph from transpiling Keras 2 (``tf_keras``) and tf.Transform.

    Keras 2 sat on autograph's do-not-convert list as ``keras`` until TF 2.15; TF 2.16
    ships it as ``tf_keras`` and the list was not updated, so every first ``fit`` in a
    process transpiled some 4,500 Keras functions (16 s of a 21 s training step on 8,000
    rows). tf.Transform was never on the list: exporting the serving signatures, which
    call the TFT layer, transpiled TFT's graph-loading code (3.2 s of an 8.8 s training
    step on 3,900 rows). Both run unconverted as their TF1 paths always did. Same
    weights, same history, same predictions (``tests/unit/test_keras_autograph.py``).
    """
    from tensorflow.python.autograph.core import config, config_lib

    missing = [
        lib
        for lib in UNCONVERTED_LIBRARIES
        if not any(
            isinstance(r, config_lib.DoNotConvert) and r.matches(lib)
            for r in config.CONVERSION_RULES
        )
    ]
    config.CONVERSION_RULES = (
        *(config_lib.DoNotConvert(lib) for lib in missing),
        *config.CONVERSION_RULES,
    )


def _transformed_dataset(
    pattern: str, spec: dict[str, Any], label_key: str, batch_size: int, task: str = "binary"
) -> Any:
    """(features, label) batches from transformed TFRecords. The label as the task's loss
    wants it: float [batch, 1] (binary, regression) or int class ids [batch] (multiclass)."""
    import tensorflow as tf

    files = tf.io.gfile.glob(pattern)
    if not files:
        raise StepError(f"no transformed data at {pattern}")

    def split(batch: Any) -> Any:
        features = tf.io.parse_example(batch, spec)
        label = features.pop(label_key)
        if task == "multiclass":
            return features, tf.reshape(tf.cast(label, tf.int64), [-1])
        return features, tf.reshape(tf.cast(label, tf.float32), [-1, 1])

    ds = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return ds.batch(batch_size).map(split, num_parallel_calls=tf.data.AUTOTUNE)


def train(
    transformed: dict[str, str],
    module_path: str,
    out_dir: str,
    epochs: int = 3,
    batch_size: int = 256,
    shuffle_labels: bool = False,
    seed: int = 0,
    task: str = "binary",
) -> dict[str, object]:
    """Fit the module's model on transformed data; export a raw-example SavedModel.

    Early stopping on validation (= transformed eval) loss with patience 1,
    restoring the best weights. ``shuffle_labels`` permutes the training labels
    once (a deliberately useless model for tests). The export is described in
    the module docstring; it lands in out_dir/saved_model.
    """
    import tensorflow as tf
    import tensorflow_transform as tft
    import tf_keras as keras

    module = load_module(module_path)
    label_key: str = module.LABEL_KEY
    try:
        tto = tft.TFTransformOutput(transformed["transform_graph"])
    except (KeyError, OSError, tf.errors.OpError) as e:
        raise StepError(f"cannot load the transform graph from {transformed}: {e}") from e
    spec = tto.transformed_feature_spec()
    if label_key not in spec:
        raise StepError(f"preprocessing_fn has no output {label_key!r} (LABEL_KEY)")

    libraries_without_autograph()
    keras.utils.set_random_seed(seed)
    train_ds = _transformed_dataset(transformed["train"], spec, label_key, batch_size, task)
    if shuffle_labels:
        features = train_ds.map(lambda f, y: f).unbatch()
        labels = train_ds.map(lambda f, y: y).unbatch()
        n = int(labels.reduce(0, lambda c, _: c + 1))
        labels = labels.shuffle(n, seed=seed, reshuffle_each_iteration=False)
        train_ds = tf.data.Dataset.zip((features, labels)).batch(batch_size)
    # Rows of a window are in arrival order: shuffle batches across the epoch.
    train_ds = train_ds.unbatch().shuffle(10_000, seed=seed).batch(batch_size).prefetch(2)
    eval_ds = _transformed_dataset(transformed["eval"], spec, label_key, batch_size, task).cache()

    model = module.build_model(tto)
    output_key = contract.output_key(module, task)
    history = model.fit(
        train_ds,
        validation_data=eval_ds,
        epochs=epochs,
        verbose=0,
        callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
        ],
    )

    # Serving: raw serialized examples in, probabilities out. The TFT layer is
    # tracked as an attribute so its assets (vocabularies) are exported too.
    model.tft_layer = tto.transform_features_layer()
    raw_spec = tto.raw_feature_spec()
    serving_spec = {k: v for k, v in raw_spec.items() if k not in module.RAW_LABEL_FEATURES}
    input_names = list(model.input_names)
    examples_spec = tf.TensorSpec([None], tf.string, name=SERVING_INPUT)

    @tf.function(input_signature=[examples_spec])
    def serve(examples: Any) -> dict[str, Any]:
        xf = model.tft_layer(tf.io.parse_example(examples, serving_spec))
        return {output_key: model({k: xf[k] for k in input_names})}

    @tf.function(input_signature=[examples_spec])
    def transform_features(examples: Any) -> Any:
        return model.tft_layer(tf.io.parse_example(examples, raw_spec))

    model_path = os.path.join(out_dir, "saved_model")
    os.makedirs(out_dir, exist_ok=True)
    # No per-layer traces: every reader (TFMA as tf_generic, serving, the monitor) calls
    # the two signatures, never Keras's revived layers. Tracing each layer's call for
    # the export took a fifth of a small window's training step, and the smaller
    # function library loads faster wherever the model is loaded (docs/trigger.md).
    model.save(
        model_path,
        save_format="tf",
        save_traces=False,
        signatures={SERVING_SIGNATURE: serve, TRANSFORM_SIGNATURE: transform_features},
    )
    hist = {k: [float(x) for x in v] for k, v in history.history.items()}
    return {
        "model": model_path,
        "history": hist,
        "epochs_run": len(history.epoch),
        "shuffled_labels": shuffle_labels,
    }


def _labelled_eval_examples(
    loaded: Any, model_dir: str, table: pa.Table, label_key: str, task: str = "binary"
) -> list[bytes]:
    """Raw eval examples plus the feature ``label_key`` from the transform signature of
    ``loaded`` (the SavedModel at ``model_dir``): an int class id for classification, a
    float for regression."""
    import numpy as np
    import pyarrow as pa
    import tensorflow as tf

    if label_key in table.column_names:
        raise StepError(f"raw data already has a column {label_key!r} (LABEL_KEY)")
    if TRANSFORM_SIGNATURE not in loaded.signatures:
        raise StepError(f"model {model_dir} has no {TRANSFORM_SIGNATURE!r} signature")
    fn = loaded.signatures[TRANSFORM_SIGNATURE]
    dtype = np.float32 if task == "regression" else np.int64
    records = raw_examples(table)
    labels = []
    for i in range(0, len(records), 1024):
        out = fn(**{SERVING_INPUT: tf.constant(records[i : i + 1024])})
        labels.append(np.asarray(out[label_key]).reshape(-1).astype(dtype))
    label = pa.array(np.concatenate(labels) if labels else [], pa.from_numpy_dtype(dtype))
    return raw_examples(table.append_column(label_key, label))


def _slice_name(slice_key: Any) -> str:
    """'' for the overall slice, else 'feature=value' joined by ','."""
    parts = []
    for k in slice_key.single_slice_keys:
        kind = k.WhichOneof("kind")
        v = getattr(k, kind) if kind else ""
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        parts.append(f"{k.column}={v}")
    return ",".join(parts)


def _metric_name(key: Any) -> str:
    """A metric's name; per-class (binarized) metrics carry their class: ``auc/class_id=2``."""
    if not key.HasField("sub_key"):
        return str(key.name)
    sub = key.sub_key
    for field in ("class_id", "k", "top_k"):
        if sub.HasField(field):
            return f"{key.name}/{field}={getattr(sub, field).value}"
    return str(key.name)


def _metric_values(
    metrics: Sequence[Any], model_name: str
) -> tuple[dict[str, float], list[dict[str, object]]]:
    """Overall and per-slice double-valued metrics of one model (non-finite values left out:
    an AUC of a one-class slice is undefined, and NaN is not JSON)."""
    overall: dict[str, float] = {}
    slices: list[dict[str, object]] = []
    for m in metrics:
        if m.HasField("cross_slice_key"):
            continue
        values: dict[str, float] = {}
        for kv in m.metric_keys_and_values:
            # A single-model evaluation leaves model_name empty in its keys.
            if kv.key.model_name not in (model_name, "") or kv.key.is_diff:
                continue
            if not kv.value.HasField("double_value"):
                continue  # plots/arrays: not a scalar metric
            v = float(kv.value.double_value.value)
            if math.isfinite(v):
                values[_metric_name(kv.key)] = v
        name = _slice_name(m.slice_key)
        if name == "":
            overall = values
        else:
            slices.append({"slice": name, "metrics": values})
    slices.sort(key=lambda s: str(s["slice"]))
    return overall, slices


def _threshold_text(threshold: Any) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(threshold, as_one_line=True)


def _failed_checks(validation: Any) -> list[str]:
    failed = []
    for per_slice in validation.metric_validations_per_slice:
        where = _slice_name(per_slice.slice_key) or "overall"
        for f in per_slice.failures:
            kind = "change vs baseline" if f.metric_key.is_diff else "value"
            value = f.metric_value.double_value.value
            failed.append(
                f"{f.metric_key.name} {kind} on {where}: {value:.4f} fails "
                f"{_threshold_text(f.metric_threshold)}"
                + (f" ({f.message.strip()})" if f.message.strip() else "")
            )
    for s in validation.missing_slices:
        failed.append(f"slice with a threshold missing from the eval data: {_threshold_text(s)}")
    if not validation.validation_ok and not failed:
        failed.append("TFMA validation failed without a metric failure (see the eval output)")
    return failed


def _seed(loader: Any, model: Any) -> None:
    """Hand TFMA a model this process already loaded.

    TFMA's DoFns get their model through the loader's Beam shared handle, which builds it
    once per process and hands the same object out while someone holds it. Seeding the
    handle with the candidate loaded for the labels saves loading the SavedModel a second
    time in the in-process runner (the caller keeps ``model`` alive for the run). A runner
    with workers elsewhere unpickles the loader there and loads from the path as before.
    """
    construct = loader.construct_fn
    loader.construct_fn = lambda: model
    try:
        loader.load()
    finally:
        loader.construct_fn = construct


def evaluate(
    model_dir: str,
    eval_uri: str,
    module_path: str,
    out_dir: str,
    baseline_model_dir: str | None = None,
    task: str = "binary",
) -> dict[str, object]:
    """TFMA evaluation of the candidate (against the baseline if given) on raw held-out data.

    The module's ``eval_config(baseline)`` supplies metrics, slices and
    thresholds; this step fills in the model specs (serving signature,
    prediction key, baseline). Labelled eval examples go to
    out_dir/eval_examples.tfrecord, the TFMA result to out_dir/eval.
    """
    import tensorflow_model_analysis as tfma
    from apache_beam.options.pipeline_options import PipelineOptions

    from shared.shard import read_shard

    module = load_module(module_path)
    config = module.eval_config(baseline_model_dir is not None)
    label_key = (config.model_specs[0].label_key if config.model_specs else "") or module.LABEL_KEY

    del config.model_specs[:]
    names = [CANDIDATE] + ([BASELINE] if baseline_model_dir else [])
    for name in names:
        config.model_specs.add(
            name=name,
            signature_name=SERVING_SIGNATURE,
            prediction_key=contract.output_key(module, task),
            label_key=label_key,
            is_baseline=name == BASELINE,
            # Both models are scored through their serving signature, so TFMA needs only the
            # SavedModel (tf_generic). Left unset, TFMA first loads each model with
            # tf.keras to guess its type: a whole extra Keras revival per model, whose
            # answer depends on the process's Keras flavour (tf_keras in the warm worker,
            # Keras 3 -- which cannot read these models -- in a fresh interpreter).
            model_type=TFMA_MODEL_TYPE,
        )
    dirs = {CANDIDATE: model_dir, BASELINE: baseline_model_dir}

    os.makedirs(out_dir, exist_ok=True)
    table = read_shard(eval_uri)
    if table.num_rows == 0:
        raise StepError(f"the held-out data {eval_uri} has no rows")
    import tensorflow as tf

    data_path = os.path.join(out_dir, "eval_examples.tfrecord")
    candidate = tf.saved_model.load(model_dir, tags=[tf.saved_model.SERVING])
    records = _labelled_eval_examples(candidate, model_dir, table, label_key, task)

    with tf.io.TFRecordWriter(data_path) as w:
        for r in records:
            w.write(r)

    output_path = os.path.join(out_dir, "eval")
    try:
        shared = [
            tfma.default_eval_shared_model(
                eval_saved_model_path=str(dirs[name]), model_name=name, eval_config=config
            )
            for name in names
        ]
        _seed(shared[0].model_loader, candidate)
        with in_process():
            tfma.run_model_analysis(
                eval_shared_model=shared if len(shared) > 1 else shared[0],
                eval_config=config,
                data_location=data_path,
                file_format="tfrecords",
                output_path=output_path,
                pipeline_options=PipelineOptions(list(BEAM_ARGS)),
            )
    except Exception as e:  # TFMA/Beam raise assorted types for bad models/configs
        raise StepError(f"TFMA evaluation of {model_dir} failed: {e}") from e

    metrics = list(tfma.load_metrics(output_path))
    validation = tfma.load_validation_result(output_path)
    overall, slices = _metric_values(metrics, CANDIDATE)
    baseline_metrics: dict[str, object] | None = None
    if baseline_model_dir:
        b_overall, b_slices = _metric_values(metrics, BASELINE)
        baseline_metrics = {"overall": b_overall, "slices": b_slices}
    return {
        "blessed": bool(validation.validation_ok),
        "failed_checks": _failed_checks(validation),
        "metrics": {"overall": overall, "slices": slices},
        "baseline_metrics": baseline_metrics,
        "eval_uri": output_path,
    }
