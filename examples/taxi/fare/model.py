"""Taxi fare: a regression on the same trips as the tip model (docs/models.md).

Predict the fare (dollars) from what is known when a trip ends: distance,
duration, hour, weekday and the community areas. ``fare`` is the label and so a
raw label feature (left out of the serving input); ``tips`` is never used (it
is paid with the fare, so it would leak it).
"""

from __future__ import annotations

from typing import Any

LABEL_KEY = "fare_label"
RAW_LABEL_FEATURES: tuple[str, ...] = ("fare",)
OUTPUT_KEY = "predictions"

NUMERIC = ("trip_miles", "trip_seconds")
CATEGORICAL = (
    ("trip_start_hour", 24),
    ("trip_start_day", 8),
    ("pickup_community_area", 78),
    ("dropoff_community_area", 78),
)
SLICES: list[list[str]] = [["trip_start_hour"]]
# Mean absolute error in dollars: a floor any real model clears (predicting the mean
# fare is off by about $6 on these trips), and how much worse a candidate may be.
MAE_UPPER_BOUND = 6.0
MAE_MAX_RISE = 0.5
# The network predicts a standardized fare; these bring it back to dollars (the bundled
# trips' mean and spread; a start, not a limit: the last layer still learns).
FARE_MEAN = 11.5
FARE_STD = 10.0


def _dense(x: Any, default: Any) -> Any:
    import tensorflow as tf

    if isinstance(x, tf.SparseTensor):
        x = tf.sparse.to_dense(
            tf.SparseTensor(x.indices, x.values, [x.dense_shape[0], 1]), default_value=default
        )
    return tf.squeeze(x, axis=1) if x.shape.rank == 2 else x


def preprocessing_fn(inputs: dict[str, Any]) -> dict[str, Any]:
    import tensorflow as tf
    import tensorflow_transform as tft

    out: dict[str, Any] = {}
    for key in NUMERIC:
        x = tf.cast(_dense(inputs[key], tf.constant(0, inputs[key].dtype)), tf.float32)
        # Distances and durations are heavy-tailed: z-score their logarithm.
        out[f"{key}_xf"] = tft.scale_to_z_score(tf.math.log1p(tf.maximum(x, 0.0)))
    for key, n in CATEGORICAL:
        out[f"{key}_xf"] = tf.clip_by_value(_dense(inputs[key], tf.constant(0, tf.int64)), 0, n - 1)
    out[LABEL_KEY] = tf.cast(_dense(inputs["fare"], 0.0), tf.float32)
    return out


def build_model(tf_transform_output: Any) -> Any:
    import tensorflow as tf
    import tf_keras as keras

    inputs = {f"{k}_xf": keras.Input(shape=(), name=f"{k}_xf", dtype="float32") for k in NUMERIC}
    embedded = []
    for key, n in CATEGORICAL:
        inputs[f"{key}_xf"] = keras.Input(shape=(), name=f"{key}_xf", dtype="int64")
        e = keras.layers.Embedding(n, 3)(inputs[f"{key}_xf"][:, None])
        embedded.append(keras.layers.Flatten()(e))
    dense = tf.stack([inputs[f"{k}_xf"] for k in NUMERIC], axis=1)
    x = keras.layers.Concatenate()([dense, *embedded])
    for units in (32, 16):
        x = keras.layers.Dense(units, activation="relu")(x)
    z = keras.layers.Dense(1)(x)
    out = keras.layers.Rescaling(FARE_STD, offset=FARE_MEAN, name=OUTPUT_KEY)(z)
    model = keras.Model(inputs=inputs, outputs=out)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.Huber(delta=5.0),  # a few $100 fares must not steer the fit
        metrics=[keras.metrics.MeanAbsoluteError(name="mae")],
    )
    return model


def eval_config(baseline: bool) -> Any:
    """MAE with an upper bound and, against the serving model, a lower-is-better change."""
    import tensorflow_model_analysis as tfma
    from google.protobuf import text_format

    change = (
        f"change_threshold {{ direction: LOWER_IS_BETTER absolute {{ value: {MAE_MAX_RISE} }} }}"
        if baseline
        else ""
    )
    slicing = "\n".join(
        "slicing_specs { " + " ".join(f'feature_keys: "{k}"' for k in keys) + " }"
        for keys in SLICES
    )
    return text_format.Parse(
        f"""
        model_specs {{ label_key: "{LABEL_KEY}" }}
        slicing_specs {{}}
        {slicing}
        options {{ include_default_metrics {{ value: false }} }}
        metrics_specs {{
          metrics {{ class_name: "ExampleCount" }}
          metrics {{
            class_name: "MeanAbsoluteError"
            per_slice_thresholds {{
              slicing_specs {{}}
              threshold {{
                value_threshold {{ upper_bound {{ value: {MAE_UPPER_BOUND} }} }}
                {change}
              }}
            }}
          }}
          metrics {{ class_name: "MeanSquaredError" }}
          metrics {{ class_name: "MeanLabel" }}
          metrics {{ class_name: "MeanPrediction" }}
        }}
        """,
        tfma.EvalConfig(),
    )
