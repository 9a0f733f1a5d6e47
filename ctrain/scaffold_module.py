"""The code of every module ``ctrain model new`` writes (ctrain/scaffold.py).

This file is the template: the generator copies everything below the marker
after a header of constants (``NUMERIC``, ``STRINGS``, ``TASK``, ``CLASSES``,
``POSITIVE``, ``FLOOR``, ``CHANGE``, ``SLICES``, ``LABEL_KEY``,
``RAW_LABEL_FEATURES``) sized from the user's data. Keeping it a real module
lets ruff and mypy read it; the defaults below make it importable on its own.
"""

from __future__ import annotations

from typing import Any

LABEL_KEY = "label_xf"
RAW_LABEL_FEATURES: tuple[str, ...] = ("label",)
NUMERIC: tuple[str, ...] = ()
STRINGS: tuple[str, ...] = ()
TASK = "binary"
CLASSES: tuple[str, ...] = ("0", "1")
POSITIVE: str | None = "1"
FLOOR = 0.55
CHANGE = 0.01
SLICES: list[list[str]] = []
LABEL_MEAN = 0.0
LABEL_STD = 1.0

# --- generated modules start here ---
VOCAB_TOP_K = 1000


def _dense(x: Any, default: Any) -> Any:
    import tensorflow as tf

    if isinstance(x, tf.SparseTensor):
        x = tf.sparse.to_dense(
            tf.SparseTensor(x.indices, x.values, [x.dense_shape[0], 1]), default_value=default
        )
    return tf.squeeze(x, axis=1) if x.shape.rank == 2 else x


def _present(x: Any) -> Any:
    import tensorflow as tf

    if isinstance(x, tf.SparseTensor):
        rows = tf.cast(x.indices[:, 0], tf.int32)
        n = tf.cast(x.dense_shape[0], tf.int32)
        return tf.math.bincount(rows, minlength=n, maxlength=n) > 0
    return tf.ones_like(_dense(x, 0), dtype=tf.bool)


def preprocessing_fn(inputs: dict[str, Any]) -> dict[str, Any]:
    """Numerics z-scored (missing: the mean), strings to vocabulary ids, the label per task."""
    import tensorflow as tf
    import tensorflow_transform as tft

    out: dict[str, Any] = {}
    for key in NUMERIC:
        x = tf.cast(_dense(inputs[key], tf.constant(0, inputs[key].dtype)), tf.float32)
        present = _present(inputs[key])
        mean = tft.mean(tf.boolean_mask(x, present))
        z = tft.scale_to_z_score(tf.where(present, x, mean))
        out[f"{key}_xf"] = tf.where(tf.math.is_finite(z), z, tf.zeros_like(z))
    for key in STRINGS:
        out[f"{key}_xf"] = tft.compute_and_apply_vocabulary(
            _dense(inputs[key], ""), top_k=VOCAB_TOP_K, num_oov_buckets=1, vocab_filename=key
        )
    raw_in = inputs[RAW_LABEL_FEATURES[0]]
    raw = _dense(raw_in, tf.constant("" if raw_in.dtype == tf.string else 0, raw_in.dtype))
    if TASK == "regression":
        out[LABEL_KEY] = tf.cast(raw, tf.float32)
        return out
    text = raw if raw.dtype == tf.string else tf.strings.as_string(raw)
    if TASK == "binary":
        out[LABEL_KEY] = tf.cast(tf.equal(text, tf.constant(str(POSITIVE))), tf.int64)
        return out
    # Class ids in the order of CLASSES (most frequent first, as measured on the data).
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(CLASSES)), tf.range(len(CLASSES), dtype=tf.int64)
        ),
        default_value=0,
    )
    out[LABEL_KEY] = table.lookup(text)
    return out


def build_model(tf_transform_output: Any) -> Any:
    """A small MLP over the z-scored numerics and an embedding per string feature."""
    import tensorflow as tf
    import tf_keras as keras

    inputs: dict[str, Any] = {}
    parts: list[Any] = []
    for key in NUMERIC:
        inputs[f"{key}_xf"] = keras.Input(shape=(), name=f"{key}_xf", dtype="float32")
    if NUMERIC:
        parts.append(tf.stack([inputs[f"{k}_xf"] for k in NUMERIC], axis=1))
    for key in STRINGS:
        inputs[f"{key}_xf"] = keras.Input(shape=(), name=f"{key}_xf", dtype="int64")
        size = tf_transform_output.vocabulary_size_by_name(key) + 1
        dim = max(2, min(8, round(size**0.25 * 2)))
        embedded = keras.layers.Embedding(size, dim)(inputs[f"{key}_xf"][:, None])
        parts.append(keras.layers.Flatten()(embedded))
    x = parts[0] if len(parts) == 1 else keras.layers.Concatenate()(parts)
    for units in (32, 16):
        x = keras.layers.Dense(units, activation="relu")(x)
    loss: Any
    metrics: list[Any]
    if TASK == "regression":
        # The network predicts a standardized target; the data's mean and spread (measured
        # when this module was written) bring it back to the label's units.
        z = keras.layers.Dense(1)(x)
        out = keras.layers.Rescaling(LABEL_STD, offset=LABEL_MEAN, name="predictions")(z)
        loss = keras.losses.Huber(delta=LABEL_STD)
        metrics = [keras.metrics.MeanAbsoluteError(name="mae")]
    elif TASK == "binary":
        out = keras.layers.Dense(1, activation="sigmoid", name="probabilities")(x)
        loss, metrics = keras.losses.BinaryCrossentropy(), [keras.metrics.AUC(name="auc")]
    else:
        out = keras.layers.Dense(len(CLASSES), activation="softmax", name="probabilities")(x)
        loss = keras.losses.SparseCategoricalCrossentropy()
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    model = keras.Model(inputs=inputs, outputs=out)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss, metrics=metrics)
    return model


def eval_config(baseline: bool) -> Any:
    """The task's headline metric with its floor (or ceiling), and with a serving model,
    how much worse a candidate may be; per-class AUCs for multi-class."""
    import tensorflow_model_analysis as tfma
    from google.protobuf import text_format

    if TASK == "regression":
        metric, bound, direction = "MeanAbsoluteError", "upper_bound", "LOWER_IS_BETTER"
        change, extra = CHANGE, ["MeanSquaredError", "MeanLabel", "MeanPrediction"]
    elif TASK == "binary":
        metric, bound, direction = "AUC", "lower_bound", "HIGHER_IS_BETTER"
        change, extra = -CHANGE, ["BinaryAccuracy", "Calibration", "MeanLabel"]
    else:
        metric, bound, direction = "SparseCategoricalAccuracy", "lower_bound", "HIGHER_IS_BETTER"
        change, extra = -CHANGE, []
    changed = (
        "change_threshold { direction: %s absolute { value: %r } }" % (direction, change)
        if baseline
        else ""
    )
    lines = [
        'model_specs { label_key: "%s" }' % LABEL_KEY,
        "slicing_specs {}",
        *("slicing_specs { %s }" % " ".join('feature_keys: "%s"' % k for k in s) for s in SLICES),
        "options { include_default_metrics { value: false } }",
        "metrics_specs {",
        '  metrics { class_name: "ExampleCount" }',
        '  metrics { class_name: "%s" per_slice_thresholds { slicing_specs {} threshold {'
        " value_threshold { %s { value: %r } } %s } } }" % (metric, bound, FLOOR, changed),
        *('  metrics { class_name: "%s" }' % m for m in extra),
        "}",
    ]
    if TASK == "multiclass":
        ids = ", ".join(str(i) for i in range(len(CLASSES)))
        lines.append(
            'metrics_specs { binarize { class_ids { values: [%s] } } metrics { class_name: "AUC" } }'
            % ids
        )
    return text_format.Parse("\n".join(lines), tfma.EvalConfig())
