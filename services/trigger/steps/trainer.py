"""The training step: Keras on TF Transform's output, exported with the serving and
transform signatures."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from services.trigger.steps.common import (
    SERVING_INPUT,
    SERVING_SIGNATURE,
    TRANSFORM_SIGNATURE,
    StepError,
    load_module,
)
from shared import contract

if TYPE_CHECKING:
    pass


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


SHUFFLE_BUFFER = 10_000


def transformed_dataset(
    pattern: str,
    spec: dict[str, Any],
    label_key: str,
    batch_size: int,
    task: str = "binary",
    shuffle_seed: int | None = None,
) -> Any:
    """(features, label) batches from transformed TFRecords. The label as the task's loss
    wants it: float [batch, 1] (binary, regression) or int class ids [batch] (multiclass).

    ``shuffle_seed``: rows shuffled (a ``SHUFFLE_BUFFER`` window) as serialized records,
    before they are parsed: one element per row as a shuffle of parsed rows has, so the
    same seed gives the same order, without parsing in batches only to unbatch into one
    dict of tensors per row (at 1,000,000 rows the fit took 27.5 s instead of 44.5 s)."""
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
    if shuffle_seed is not None:
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=shuffle_seed)
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
    # Rows of a window are in arrival order: shuffled across the epoch.
    if shuffle_labels:
        train_ds = transformed_dataset(transformed["train"], spec, label_key, batch_size, task)
        features = train_ds.map(lambda f, y: f).unbatch()
        labels = train_ds.map(lambda f, y: y).unbatch()
        n = int(labels.reduce(0, lambda c, _: c + 1))
        labels = labels.shuffle(n, seed=seed, reshuffle_each_iteration=False)
        train_ds = tf.data.Dataset.zip((features, labels)).shuffle(SHUFFLE_BUFFER, seed=seed)
        train_ds = train_ds.batch(batch_size)
    else:
        train_ds = transformed_dataset(
            transformed["train"], spec, label_key, batch_size, task, shuffle_seed=seed
        )
    train_ds = train_ds.prefetch(2)
    eval_ds = transformed_dataset(transformed["eval"], spec, label_key, batch_size, task).cache()

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
