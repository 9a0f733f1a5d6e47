"""The evaluation step: TFMA on the held-out data, the candidate against the serving
model, labels computed by the candidate's own transform signature."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from services.trigger.steps.common import (
    BASELINE,
    CANDIDATE,
    SERVING_INPUT,
    SERVING_SIGNATURE,
    TFMA_MODEL_TYPE,
    TRANSFORM_SIGNATURE,
    StepError,
    beam_run,
    load_module,
    raw_examples,
)
from shared import contract

if TYPE_CHECKING:
    import pyarrow as pa


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
    beam_args: Sequence[str] = (),
) -> dict[str, object]:
    """TFMA evaluation of the candidate (against the baseline if given) on raw held-out data.

    The module's ``eval_config(baseline)`` supplies metrics, slices and
    thresholds; this step fills in the model specs (serving signature,
    prediction key, baseline). Labelled eval examples go to
    out_dir/eval_examples.tfrecord, the TFMA result to out_dir/eval.
    ``beam_args``: the pipeline's options (``common.beam_run``); empty: in-process.
    """
    import tensorflow_model_analysis as tfma

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
    options, block = beam_run(beam_args)
    try:
        shared = [
            tfma.default_eval_shared_model(
                eval_saved_model_path=str(dirs[name]), model_name=name, eval_config=config
            )
            for name in names
        ]
        _seed(shared[0].model_loader, candidate)
        with block:
            tfma.run_model_analysis(
                eval_shared_model=shared if len(shared) > 1 else shared[0],
                eval_config=config,
                data_location=data_path,
                file_format="tfrecords",
                output_path=output_path,
                pipeline_options=options,
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
