"""Candidates not in serving yet, scored in-process from their SavedModel.

A candidate waiting for approval has no TF Serving version (the promoter copies it into
serving's layout only once approved), so the monitor loads it the way serving would (the
same ``serving_default`` signature over serialized tf.Examples) to score it beside
``stable``. A couple of models stay loaded; the least recently used goes first.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from services.monitor.errors import ServingError
from shared import contract


class LocalModels:
    def __init__(self, keep: int = 2, batch_rows: int = 2048) -> None:
        self.keep = keep
        self.batch_rows = batch_rows
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def _fn(self, model_uri: str) -> Any:
        import tensorflow as tf

        with self._lock:
            fn = self._loaded.pop(model_uri, None)
            if fn is None:
                try:
                    loaded = tf.saved_model.load(model_uri)
                except (OSError, ValueError, tf.errors.OpError) as e:
                    raise ServingError(f"cannot load candidate model {model_uri}: {e}") from e
                fn = loaded.signatures[contract.SERVING_SIGNATURE]
            self._loaded[model_uri] = fn
            while len(self._loaded) > self.keep:
                self._loaded.popitem(last=False)
            return fn

    def _predict(self, model_uri: str, examples: list[bytes], output: str) -> np.ndarray:
        import tensorflow as tf

        fn = self._fn(model_uri)
        parts = []
        for i in range(0, len(examples), self.batch_rows):
            out = fn(**{contract.SERVING_INPUT: tf.constant(examples[i : i + self.batch_rows])})
            if output not in out:
                raise ServingError(f"candidate model {model_uri} has no output {output!r}")
            parts.append(np.asarray(out[output]))
        return np.concatenate(parts, axis=0)

    async def predict(self, model_uri: str, examples: list[bytes], output: str) -> np.ndarray:
        return await asyncio.to_thread(self._predict, model_uri, examples, output)
