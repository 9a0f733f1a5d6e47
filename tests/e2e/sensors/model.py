"""A second model for the many-models test, written from docs/models.md alone.

Machine sensors: which way will the machine fail? ``mode`` is a string label
(``none``, ``bearing``, ``overheat``): a multi-class task. ``temperature`` and
``vibration`` are z-scored, ``site`` gets a vocabulary, and so does the label
(class ids by frequency, as TF Transform assigns them).
"""

from __future__ import annotations

from typing import Any

LABEL_KEY = "label"
RAW_LABEL_FEATURES: tuple[str, ...] = ("mode",)
NUMERIC = ("temperature", "vibration")
CLASSES = 3


def _dense(x: Any, default: Any) -> Any:
    import tensorflow as tf

    if isinstance(x, tf.SparseTensor):
        x = tf.sparse.to_dense(
            tf.SparseTensor(x.indices, x.values, [x.dense_shape[0], 1]), default_value=default
        )
    return tf.squeeze(x, axis=1) if x.shape.rank == 2 else x


def preprocessing_fn(inputs: dict[str, Any]) -> dict[str, Any]:
    import tensorflow_transform as tft

    out = {f"{k}_xf": tft.scale_to_z_score(_dense(inputs[k], 0.0)) for k in NUMERIC}
    out["site_xf"] = tft.compute_and_apply_vocabulary(
        _dense(inputs["site"], ""), num_oov_buckets=1, vocab_filename="site"
    )
    out[LABEL_KEY] = tft.compute_and_apply_vocabulary(
        _dense(inputs["mode"], ""), vocab_filename="mode"
    )
    return out


def build_model(tf_transform_output: Any) -> Any:
    import tensorflow as tf
    import tf_keras as keras

    sites = tf_transform_output.vocabulary_size_by_name("site") + 1
    classes = max(CLASSES, tf_transform_output.vocabulary_size_by_name("mode"))
    inputs = {f"{k}_xf": keras.Input(shape=(), name=f"{k}_xf", dtype="float32") for k in NUMERIC}
    inputs["site_xf"] = keras.Input(shape=(), name="site_xf", dtype="int64")
    site = keras.layers.Flatten()(keras.layers.Embedding(sites, 2)(inputs["site_xf"][:, None]))
    dense = tf.stack([inputs[f"{k}_xf"] for k in NUMERIC], axis=1)
    x = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()([dense, site]))
    prob = keras.layers.Dense(classes, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs=inputs, outputs=prob)
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def eval_config(baseline: bool) -> Any:
    import tensorflow_model_analysis as tfma
    from google.protobuf import text_format

    change = (
        "change_threshold { direction: HIGHER_IS_BETTER absolute { value: -0.05 } }"
        if baseline
        else ""
    )
    return text_format.Parse(
        f"""
        model_specs {{ label_key: "{LABEL_KEY}" }}
        slicing_specs {{}}
        slicing_specs {{ feature_keys: "site" }}
        options {{ include_default_metrics {{ value: false }} }}
        metrics_specs {{
          metrics {{ class_name: "ExampleCount" }}
          metrics {{
            class_name: "SparseCategoricalAccuracy"
            per_slice_thresholds {{
              slicing_specs {{}}
              threshold {{ value_threshold {{ lower_bound {{ value: 0.5 }} }} {change} }}
            }}
          }}
        }}
        metrics_specs {{
          binarize {{ class_ids {{ values: [0, 1, 2] }} }}
          metrics {{ class_name: "AUC" }}
        }}
        """,
        tfma.EvalConfig(),
    )
