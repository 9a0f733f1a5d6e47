"""One loaded SavedModel version and the Predict/Classify/Regress logic run on it.

Mirrors ``tensorflow_serving/servables/tensorflow/{predict_util,classifier,regressor}.cc``:
signature lookup, input/output alias checks and their error texts. Inputs and outputs are
numpy arrays; the gRPC and REST layers convert from/to TensorProto or JSON.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from ctrain.modelserver.errors import (
    ServingError,
    code_from_value,
    failed_precondition,
    invalid_argument,
    not_found,
)

DEFAULT_SIGNATURE = "serving_default"
SERVE_TAG = "serve"
CLASSIFY_INPUTS = "inputs"
CLASSIFY_CLASSES = "classes"
CLASSIFY_SCORES = "scores"
REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"


@dataclass(frozen=True)
class Classification:
    labels: list[list[str]] | None  # [batch][n] or None when the model has no classes output
    scores: list[list[float]] | None


class SavedModelServable:
    """A SavedModel loaded with ``tf.saved_model.load`` (cached for the version's lifetime)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.meta_graph = _read_meta_graph(path)
        self.signature_defs: Mapping[str, meta_graph_pb2.SignatureDef] = (
            self.meta_graph.signature_def
        )
        try:
            self._obj = tf.saved_model.load(path, tags=[SERVE_TAG])
        except tf.errors.OpError as e:
            raise ServingError(code_from_value(e.error_code), _tf_message(e)) from e
        self._fns = {name: self._obj.signatures[name] for name in self._obj.signatures}

    # ------------------------------------------------------------- signatures
    def signature(self, name: str) -> meta_graph_pb2.SignatureDef:
        name = name or DEFAULT_SIGNATURE
        sig = self.signature_defs.get(name)
        if sig is None or name not in self._fns:
            raise failed_precondition(f'Serving signature key "{name}" not found.')
        return sig

    def _call(self, name: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        fn = self._fns[name]
        try:
            out = fn(**{k: tf.constant(v) for k, v in feeds.items()})
        except tf.errors.OpError as e:
            raise ServingError(code_from_value(e.error_code), _tf_message(e)) from e
        except (TypeError, ValueError) as e:
            raise invalid_argument(str(e)) from e
        return {k: v.numpy() for k, v in out.items()}

    # ---------------------------------------------------------------- predict
    def predict(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = (),
    ) -> tuple[str, dict[str, np.ndarray]]:
        """predict_util.cc RunPredict. Returns (signature name, outputs by alias)."""
        name = signature_name or DEFAULT_SIGNATURE
        sig = self.signature(name)
        _verify_inputs(sig, inputs)
        for i, alias in enumerate(sorted(inputs)):
            want = sig.inputs[alias].dtype
            got = _dtype_enum(inputs[alias])
            if want != got and not (
                want == tf.string.as_datatype_enum and inputs[alias].dtype == object
            ):
                raise invalid_argument(
                    f"Expects arg[{i}] to be {_dtype_name(want)} but {_dtype_name(got)} is provided"
                )
        aliases = _output_aliases(sig, output_filter)
        outputs = self._call(name, inputs)
        return name, {a: outputs[a] for a in aliases}

    # ----------------------------------------------------- classify / regress
    def classify(
        self, signature_name: str, serialized: list[bytes], *, strict: bool = False
    ) -> tuple[str, Classification]:
        """classifier.cc with a relaxation for single-probability models (see module doc)."""
        name = signature_name or DEFAULT_SIGNATURE
        sig = self._example_signature(name)
        input_alias = _example_input(sig, CLASSIFY_INPUTS, "classification", strict)
        has_canonical = CLASSIFY_CLASSES in sig.outputs or CLASSIFY_SCORES in sig.outputs
        if strict or has_canonical:
            if len(sig.outputs) not in (1, 2):
                raise invalid_argument(
                    f"Expected one or two output Tensors, found {len(sig.outputs)}"
                )
            if not has_canonical:
                raise failed_precondition(
                    "Expected classification signature outputs to contain at least one of "
                    f'"{CLASSIFY_CLASSES}" or "{CLASSIFY_SCORES}".'
                )
        outputs = self._call(name, {input_alias: _string_batch(serialized)})
        batch = len(serialized)
        if has_canonical:
            labels = scores = None
            if CLASSIFY_CLASSES in outputs:
                classes = _as_matrix(outputs[CLASSIFY_CLASSES], batch, "classes")
                labels = [[_decode(c) for c in row] for row in classes]
            if CLASSIFY_SCORES in outputs:
                scores = (
                    _as_matrix(outputs[CLASSIFY_SCORES], batch, "scores").astype(float).tolist()
                )
            return name, Classification(labels, scores)
        if len(outputs) != 1:
            raise invalid_argument(f"Expected one or two output Tensors, found {len(outputs)}")
        (values,) = outputs.values()
        matrix = _as_matrix(values, batch, "scores").astype(float)
        if matrix.shape[1] == 1:  # one probability p of the positive class
            p = matrix[:, 0]
            return name, Classification(
                [["0", "1"] for _ in range(batch)], np.stack([1.0 - p, p], axis=1).tolist()
            )
        return name, Classification(
            [[str(i) for i in range(matrix.shape[1])] for _ in range(batch)], matrix.tolist()
        )

    def regress(
        self, signature_name: str, serialized: list[bytes], *, strict: bool = False
    ) -> tuple[str, list[float]]:
        name = signature_name or DEFAULT_SIGNATURE
        sig = self._example_signature(name)
        input_alias = _example_input(sig, REGRESS_INPUTS, "regression", strict)
        if len(sig.outputs) != 1:
            raise invalid_argument("Expected one output Tensor.")
        if strict and REGRESS_OUTPUTS not in sig.outputs:
            raise failed_precondition(f"No regression outputs found in SignatureDef: {_short(sig)}")
        outputs = self._call(name, {input_alias: _string_batch(serialized)})
        (values,) = outputs.values()
        batch = len(serialized)
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1 or values.shape[0] != batch:
            raise invalid_argument(
                "Expected output Tensor shape to be either [batch_size] or "
                f"[batch_size, 1] but got {list(values.shape)}"
            )
        return name, values.astype(float).tolist()

    def _example_signature(self, name: str) -> meta_graph_pb2.SignatureDef:
        sig = self.signature_defs.get(name)
        if sig is None or name not in self._fns:
            raise invalid_argument(f"No signature was found with the name: {name}")
        return sig

    def call_signature(self, name: str, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Unchecked in-process call (benchmarks)."""
        return self._call(name or DEFAULT_SIGNATURE, feeds)


# --------------------------------------------------------------------- helpers
def load_servable(_model: str, _version: int, path: str) -> SavedModelServable:
    """The manager's loader: SavedModelBundle loading with TF Serving's error texts."""
    if not any(
        os.path.exists(os.path.join(path, f)) for f in ("saved_model.pb", "saved_model.pbtxt")
    ):
        raise not_found(
            "Could not find SavedModel .pb or .pbtxt at supplied export directory path: " + path
        )
    return SavedModelServable(path)


def _read_meta_graph(path: str) -> meta_graph_pb2.MetaGraphDef:
    sm = saved_model_pb2.SavedModel()
    pb = os.path.join(path, "saved_model.pb")
    if os.path.exists(pb):
        with open(pb, "rb") as f:
            sm.ParseFromString(f.read())
    else:
        from google.protobuf import text_format

        with open(os.path.join(path, "saved_model.pbtxt")) as f:
            text_format.Parse(f.read(), sm)
    for mg in sm.meta_graphs:
        if set(mg.meta_info_def.tags) == {SERVE_TAG}:
            return mg
    raise not_found(
        "Could not find meta graph def matching supplied tags: { serve }. To inspect "
        "available tag-sets in the SavedModel, please use the SavedModel CLI: "
        "`saved_model_cli`"
    )


def _verify_inputs(sig: meta_graph_pb2.SignatureDef, inputs: Mapping[str, Any]) -> None:
    if len(inputs) != len(sig.inputs):
        sent, want = set(inputs), set(sig.inputs)
        raise invalid_argument(
            f"input size does not match signature: {len(inputs)}!={len(sig.inputs)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(want))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - want))}}}. "
            f"Missing but required: {{{','.join(sorted(want - sent))}}}."
        )
    for alias in inputs:
        if alias not in sig.inputs:
            raise invalid_argument(
                f"input tensor alias not found in signature: {alias}. Inputs expected to "
                f"be in the set {{{','.join(sorted(sig.inputs))}}}."
            )


def _output_aliases(sig: meta_graph_pb2.SignatureDef, output_filter: Sequence[str]) -> list[str]:
    if not output_filter:
        return sorted(sig.outputs)
    seen: set[str] = set()
    for alias in output_filter:
        if alias not in sig.outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected to "
                f"be in the set {{{','.join(sorted(sig.outputs))}}}."
            )
        if alias in seen:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    return list(output_filter)


def _example_input(
    sig: meta_graph_pb2.SignatureDef, canonical: str, kind: str, strict: bool
) -> str:
    if len(sig.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    (alias,) = sig.inputs
    if strict and alias != canonical:
        raise failed_precondition(f"No {kind} inputs found in SignatureDef: {_short(sig)}")
    if sig.inputs[alias].dtype != tf.string.as_datatype_enum:
        raise failed_precondition(
            f"Expected {kind} input Tensor {alias} to be of type DT_STRING "
            "(serialized tf.Examples)."
        )
    return alias


def _short(sig: meta_graph_pb2.SignatureDef) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(sig, as_one_line=True)


def _string_batch(serialized: list[bytes]) -> np.ndarray:
    return np.array(serialized, dtype=object)


def _as_matrix(values: np.ndarray, batch: int, what: str) -> np.ndarray:
    if values.ndim == 1:
        values = values.reshape(-1, 1)
    if values.ndim != 2 or values.shape[0] != batch:
        raise invalid_argument(
            f"Expected {what} Tensor shape to be [batch_size, num_classes] with "
            f"batch_size {batch}, got {list(values.shape)}"
        )
    return values


def _decode(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _dtype_enum(array: np.ndarray) -> int:
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        return int(tf.string.as_datatype_enum)
    return int(tf.as_dtype(array.dtype).as_datatype_enum)


def _dtype_name(enum: int) -> str:
    return str(tf.dtypes.as_dtype(enum).name)


_STACK_NOISE = re.compile(r"^Graph execution error:.*?<stack traces unavailable>\n", re.S)
_OP_SUFFIX = re.compile(r"\s*\[Op:[^\]]*\]\s*$")


def _tf_message(e: tf.errors.OpError) -> str:
    """The status message TF Serving would show: without Python's eager decorations."""
    message = _STACK_NOISE.sub("", e.message)
    return _OP_SUFFIX.sub("", message).strip()
