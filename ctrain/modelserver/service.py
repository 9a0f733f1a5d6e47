"""The request handlers shared by gRPC and REST (TF Serving's *ServiceImpl classes).

Each method takes the ``tensorflow_serving.apis`` request proto (REST builds the same
protos from JSON, as TF Serving's http_rest_api_handler does) and returns the response
proto, raising :class:`ServingError` with TF Serving's code and text on failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    input_pb2,
    model_management_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
)

from ctrain.modelserver.errors import ServingError, invalid_argument
from ctrain.modelserver.manager import ModelManager
from ctrain.modelserver.metrics import Metrics
from ctrain.modelserver.model import SavedModelServable

SIGNATURE_DEF_FIELD = "signature_def"
Inputs = dict[str, np.ndarray] | Callable[[SavedModelServable], dict[str, np.ndarray]]


@dataclass
class _Call:
    model: str
    api: str
    protocol: str
    version: str = ""
    code: str = field(default="OK")


def spec_choice(spec: model_pb2.ModelSpec) -> tuple[int | None, str | None]:
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.version.value, None
    if choice == "version_label":
        return None, spec.version_label
    return None, None


def input_to_serialized(inp: input_pb2.Input) -> list[bytes]:
    """util.cc InputToSerializedExampleTensor: context is merged into every example."""
    kind = inp.WhichOneof("kind")
    if kind == "example_list":
        out = [e.SerializeToString() for e in inp.example_list.examples]
    elif kind == "example_list_with_context":
        ctx = inp.example_list_with_context.context.SerializeToString()
        out = [ctx + e.SerializeToString() for e in inp.example_list_with_context.examples]
    else:
        out = []
    if not out:
        raise invalid_argument("Input is empty.")
    return out


class ServingCore:
    def __init__(
        self, manager: ModelManager, metrics: Metrics, *, strict_classify_regress: bool = False
    ) -> None:
        self.manager = manager
        self.metrics = metrics
        self.strict = strict_classify_regress

    @contextmanager
    def _observe(self, model: str, api: str, protocol: str) -> Iterator[_Call]:
        call = _Call(model=model, api=api, protocol=protocol)
        start = time.perf_counter()
        try:
            yield call
        except ServingError as e:
            call.code = e.code.name
            raise
        except Exception:
            call.code = grpc.StatusCode.INTERNAL.name
            raise
        finally:
            self.metrics.observe(
                call.model, call.version, api, protocol, call.code, time.perf_counter() - start
            )

    def _servable(self, spec: model_pb2.ModelSpec, call: _Call) -> tuple[int, SavedModelServable]:
        version, label = spec_choice(spec)
        resolved, servable = self.manager.get_servable(spec.name, version, label)
        call.version = str(resolved)
        return resolved, servable

    # ---------------------------------------------------------------- predict
    def predict_arrays(
        self,
        spec: model_pb2.ModelSpec,
        inputs: Inputs,
        output_filter: list[str],
        protocol: str,
    ) -> tuple[int, str, dict[str, np.ndarray]]:
        """Predict on arrays; ``inputs`` may be built from the resolved servable (REST)."""
        with self._observe(spec.name, "predict", protocol) as call:
            version, servable = self._servable(spec, call)
            feeds = inputs(servable) if callable(inputs) else inputs
            signature, outputs = servable.predict(spec.signature_name, feeds, output_filter)
            return version, signature, outputs

    def predict(
        self, request: predict_pb2.PredictRequest, protocol: str
    ) -> predict_pb2.PredictResponse:
        inputs: dict[str, np.ndarray] = {}
        for alias, proto in request.inputs.items():
            try:
                inputs[alias] = tf.make_ndarray(proto)
            except Exception as e:  # any malformed TensorProto
                raise invalid_argument(f"tensor parsing error: {alias}") from e
        version, signature, outputs = self.predict_arrays(
            request.model_spec, inputs, list(request.output_filter), protocol
        )
        response = predict_pb2.PredictResponse()
        _fill_spec(response.model_spec, request.model_spec.name, version, signature)
        for alias, value in outputs.items():
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(value))
        return response

    # ----------------------------------------------------- classify / regress
    def classify(
        self, request: classification_pb2.ClassificationRequest, protocol: str
    ) -> classification_pb2.ClassificationResponse:
        with self._observe(request.model_spec.name, "classify", protocol) as call:
            version, servable = self._servable(request.model_spec, call)
            examples = input_to_serialized(request.input)
            signature, result = servable.classify(
                request.model_spec.signature_name, examples, strict=self.strict
            )
        response = classification_pb2.ClassificationResponse()
        _fill_spec(response.model_spec, request.model_spec.name, version, signature)
        rows = len(result.labels if result.labels is not None else result.scores or [])
        for i in range(rows):
            classifications = response.result.classifications.add()
            labels = result.labels[i] if result.labels is not None else None
            scores = result.scores[i] if result.scores is not None else None
            for j in range(len(labels if labels is not None else scores or [])):
                cls = classifications.classes.add()
                if labels is not None:
                    cls.label = labels[j]
                if scores is not None:
                    cls.score = scores[j]
        return response

    def regress(
        self, request: regression_pb2.RegressionRequest, protocol: str
    ) -> regression_pb2.RegressionResponse:
        with self._observe(request.model_spec.name, "regress", protocol) as call:
            version, servable = self._servable(request.model_spec, call)
            examples = input_to_serialized(request.input)
            signature, values = servable.regress(
                request.model_spec.signature_name, examples, strict=self.strict
            )
        response = regression_pb2.RegressionResponse()
        _fill_spec(response.model_spec, request.model_spec.name, version, signature)
        for value in values:
            response.result.regressions.add().value = value
        return response

    # --------------------------------------------------------------- metadata
    def get_model_metadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, protocol: str
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        with self._observe(request.model_spec.name, "get_model_metadata", protocol) as call:
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            if not request.metadata_field:
                raise invalid_argument(
                    "GetModelMetadataRequest must specify at least one metadata_field"
                )
            for f in request.metadata_field:
                if f != SIGNATURE_DEF_FIELD:
                    raise invalid_argument(f"Metadata field {f} is not supported")
            version, servable = self._servable(request.model_spec, call)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for name, sig in servable.signature_defs.items():
            sig_map.signature_def[name].CopyFrom(sig)
        response.metadata[SIGNATURE_DEF_FIELD].Pack(sig_map)
        return response

    # ----------------------------------------------------------- model service
    def get_model_status(
        self, request: get_model_status_pb2.GetModelStatusRequest
    ) -> get_model_status_pb2.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        version, label = spec_choice(request.model_spec)
        statuses = self.manager.model_status(request.model_spec.name, version, label)
        response = get_model_status_pb2.GetModelStatusResponse()
        for s in statuses:
            entry = response.model_version_status.add()
            entry.version = s.version
            entry.state = int(s.state)
            entry.status.error_code = s.error_code.value[0]
            entry.status.error_message = s.error_message
        return response

    def reload_config(
        self, request: model_management_pb2.ReloadConfigRequest
    ) -> model_management_pb2.ReloadConfigResponse:
        """ModelServiceImpl::HandleReloadConfigRequest (raises on a non-OK status)."""
        if request.config.WhichOneof("config") != "model_config_list":
            raise invalid_argument(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                "Only ModelConfigList is currently supported"
            )
        self.manager.reload_config(request.config)
        return model_management_pb2.ReloadConfigResponse()


def _fill_spec(spec: model_pb2.ModelSpec, name: str, version: int, signature: str) -> None:
    spec.name = name
    spec.version.value = version
    spec.signature_name = signature
