"""Keras 2 and tf.Transform run unconverted by autograph
(``steps.libraries_without_autograph``); Keras trains to exactly the same weights as
when autograph transpiles it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.unit


def _fit_weights() -> list[Any]:
    import tf_keras as keras

    keras.utils.set_random_seed(7)
    x = np.random.default_rng(0).normal(size=(512, 4)).astype("float32")
    y = (x[:, :1] + x[:, 1:2] > 0).astype("float32")
    inp = keras.Input((4,))
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Dense(8, "relu")(inp))
    model = keras.Model(inp, out)
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=[keras.metrics.AUC()])
    model.fit(x, y, batch_size=64, epochs=2, verbose=0, shuffle=False)
    return [w.copy() for w in model.get_weights()]


def test_keras_is_left_unconverted_and_trains_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    # The rules as TF ships them, whatever an earlier training step in this process
    # added (restored after the test).
    import tensorflow_transform as tft
    import tf_keras as keras
    from tensorflow.python.autograph.core import config, config_lib
    from tensorflow.python.autograph.impl import conversion

    from services.trigger import steps
    from services.trigger.steps.trainer import UNCONVERTED_LIBRARIES

    shipped = tuple(
        r
        for r in config.CONVERSION_RULES
        if not (
            isinstance(r, config_lib.DoNotConvert)
            and any(r.matches(lib) for lib in UNCONVERTED_LIBRARIES)
        )
    )
    monkeypatch.setattr(config, "CONVERSION_RULES", shipped)
    train_step = keras.Model.train_step
    tft_layer_call = tft.TransformFeaturesLayer.call  # what the serving signatures call
    assert not conversion.is_allowlisted(train_step)  # TF 2.16 as shipped converts Keras 2
    assert not conversion.is_allowlisted(tft_layer_call)  # and tf.Transform
    converted = _fit_weights()

    steps.libraries_without_autograph()
    steps.libraries_without_autograph()  # idempotent: one rule per library, not two
    assert conversion.is_allowlisted(train_step)
    assert conversion.is_allowlisted(tft_layer_call)
    for lib in UNCONVERTED_LIBRARIES:
        assert sum(r.matches(lib) for r in config.CONVERSION_RULES) == 1
    unconverted = _fit_weights()

    assert len(converted) == len(unconverted)
    for a, b in zip(converted, unconverted, strict=True):
        np.testing.assert_array_equal(a, b)
