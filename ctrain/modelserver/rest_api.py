"""TF Serving's HTTP/REST API (``/v1/models/...``) and the Prometheus endpoint.

Routing, JSON<->tensor conversion and error texts follow
``tensorflow_serving/model_servers/http_rest_api_handler.cc`` and
``tensorflow_serving/util/json_tensor.cc``: the path regexes, the row (``instances`` ->
``predictions``) and columnar (``inputs`` -> ``outputs``) formats, ``{"b64": ...}`` for
binary strings (and for outputs whose alias ends in ``_bytes``), ``{"error": ...}``
bodies and the status-code -> HTTP mapping.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    regression_pb2,
)

from ctrain.modelserver.errors import ServingError, invalid_argument
from ctrain.modelserver.model import DEFAULT_SIGNATURE, SavedModelServable
from ctrain.modelserver.service import SIGNATURE_DEF_FIELD, ServingCore

PROTOCOL = "rest"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
_V1 = re.compile(r"/v1/.*", re.I)
_PREDICTION = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.I,
)
_STATUS = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.I,
)
_INT64_MAX = 2**63 - 1
_JSON_HEADERS = {"Content-Type": "application/json"}
_FLOAT_KINDS = {tf.float16.as_datatype_enum, tf.bfloat16.as_datatype_enum}
_FLOAT_KINDS |= {tf.float32.as_datatype_enum, tf.float64.as_datatype_enum}
_INT_KINDS = {
    d.as_datatype_enum
    for d in (tf.int8, tf.int16, tf.int32, tf.int64, tf.uint8, tf.uint16, tf.uint32, tf.uint64)
}


# ------------------------------------------------------------------ dispatch
def handle(core: ServingCore, method: str, path: str, body: bytes) -> tuple[int, str]:
    """HttpRestApiHandler::ProcessRequest: (HTTP status, JSON body)."""
    try:
        return 200, _dispatch(core, method, path, body)
    except ServingError as e:
        return e.http_status, json.dumps({"error": e.message})


def _dispatch(core: ServingCore, method: str, path: str, body: bytes) -> str:
    if method == "POST" and (m := _PREDICTION.fullmatch(path)):
        name, version, label, verb = m.groups()
        spec = _model_spec(name, version, label)
        if verb == "predict":
            return _predict(core, spec, body)
        if verb == "classify":
            return _classify(core, spec, body)
        if verb == "regress":
            return _regress(core, spec, body)
    elif method == "GET" and (m := _STATUS.fullmatch(path)):
        name, version, label, sub = m.groups()
        if not name:
            raise invalid_argument("Missing model name in request.")
        spec = _model_spec(name, version, label)
        if sub is not None:
            if sub != "metadata":
                raise invalid_argument(f"Malformed request: {method} {path}")
            return _metadata(core, spec)
        return _status(core, spec)
    raise invalid_argument(f"Malformed request: {method} {path}")


def _model_spec(name: str, version: str | None, label: str | None) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name)
    if version:
        number = int(version)
        if number > _INT64_MAX:
            raise invalid_argument(f"Failed to convert version: {version} to numeric.")
        spec.version.value = number
    if label:
        spec.version_label = label
    return spec


# ------------------------------------------------------------ status/metadata
def _status(core: ServingCore, spec: model_pb2.ModelSpec) -> str:
    request = get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
    response = core.get_model_status(request)
    # protobuf 4.25's keyword (newer stubs only know its successor's name).
    return json_format.MessageToJson(  # type: ignore[call-arg,unused-ignore]
        response, including_default_value_fields=True, indent=1
    )


def _metadata(core: ServingCore, spec: model_pb2.ModelSpec) -> str:
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=spec, metadata_field=[SIGNATURE_DEF_FIELD]
    )
    response = core.get_model_metadata(request, PROTOCOL)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[SIGNATURE_DEF_FIELD].Unpack(sig_map)
    opts: dict[str, Any] = {
        "including_default_value_fields": True,
        "preserving_proto_field_name": True,
    }
    doc = {
        "model_spec": json_format.MessageToDict(response.model_spec, **opts),
        "metadata": {"signature_def": json_format.MessageToDict(sig_map, **opts)},
    }
    return json.dumps(doc, indent=1)


# -------------------------------------------------------------------- predict
def _predict(core: ServingCore, spec: model_pb2.ModelSpec, body: bytes) -> str:
    doc = _parse_json(body)
    _fill_signature(doc, spec)
    instances, inputs = doc.get("instances"), doc.get("inputs")
    if "instances" in doc and "inputs" in doc:
        raise _format_error(
            doc,
            "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ",
        )
    if "instances" in doc:
        if not isinstance(instances, list):
            raise _format_error(doc, "Excepting 'instances' to be an list/array")
        if not instances:
            raise _format_error(doc, "No values in 'instances' array")
        row = True
    elif "inputs" in doc:
        row = False
    else:
        raise invalid_argument("Missing 'inputs' or 'instances' key")

    def build(servable: SavedModelServable) -> dict[str, np.ndarray]:
        infos = _input_infos(servable, spec.signature_name)
        if row:
            assert isinstance(instances, list)
            return _from_instances(instances, infos)
        return _from_inputs(inputs, infos)

    _, _, outputs = core.predict_arrays(spec, build, [], PROTOCOL)
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    return _rows_json(outputs) if row else _columns_json(outputs)


def _input_infos(
    servable: SavedModelServable, signature_name: str
) -> dict[str, meta_graph_pb2.TensorInfo]:
    name = signature_name or DEFAULT_SIGNATURE
    sig = servable.signature_defs.get(name)
    if sig is None:
        raise invalid_argument(f'Serving signature name: "{name}" not found in signature def')
    if not sig.inputs:
        raise invalid_argument(
            f"Failed to get input map for signature: {signature_name or 'DEFAULT'}"
        )
    return dict(sig.inputs)


def _from_instances(
    instances: list[Any], infos: dict[str, meta_graph_pb2.TensorInfo]
) -> dict[str, np.ndarray]:
    if not isinstance(instances[0], dict) and len(infos) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    objects = _is_object(instances[0])
    items: dict[str, list[np.ndarray]] = {}
    names = set(infos)
    for i, elem in enumerate(instances):
        if objects:
            if not _is_object(elem):
                raise invalid_argument(f"Expecting object but got list at item {i} of input list")
            for key, value in elem.items():
                try:
                    if key not in infos:
                        raise invalid_argument(f"JSON object: does not have named input: {key}")
                    _add_item(items, key, value, infos[key].dtype)
                except ServingError as e:
                    raise invalid_argument(
                        f"Failed to process element: {i} key: {key} of 'instances' list. Error: {e}"
                    ) from e
            if set(elem) != names:
                raise invalid_argument(
                    f"Failed to process element: {i} of 'instances' list. JSON object: "
                    f"{_dump(elem)} must only have keys: {','.join(sorted(names))}"
                )
        else:
            if _is_object(elem):
                raise invalid_argument(
                    f"Expecting value/list but got object at item {i} of input list"
                )
            (name,) = infos
            try:
                _add_item(items, name, elem, infos[name].dtype)
            except ServingError as e:
                raise invalid_argument(
                    f"Failed to process element: {i} of 'instances' list. Error: {e}"
                ) from e
    return {name: np.stack(arrays) for name, arrays in items.items()}


def _add_item(items: dict[str, list[np.ndarray]], name: str, value: Any, dtype: int) -> None:
    array = json_to_array(value, dtype)
    previous = items.setdefault(name, [])
    if previous and previous[0].shape != array.shape:
        if previous[0].size != array.size:
            raise invalid_argument(
                f"Expecting tensor size: {previous[0].size} but got: {array.size}"
            )
        raise invalid_argument(
            f"Expecting shape {_shape_str(previous[0].shape)} but got: {_shape_str(array.shape)}"
        )
    previous.append(array)


def _from_inputs(value: Any, infos: dict[str, meta_graph_pb2.TensorInfo]) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or _is_b64(value):
        if len(infos) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        ((name, info),) = infos.items()
        return {name: json_to_array(value, info.dtype)}
    out = {}
    for name, info in infos.items():
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        out[name] = json_to_array(value[name], info.dtype)
    return out


def json_to_array(value: Any, dtype: int) -> np.ndarray:
    """json_tensor.cc FillTensorProto: a dense tensor from nested JSON lists."""
    shape: list[int] = []
    probe = value
    while isinstance(probe, list):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    flat: list[Any] = []
    _fill(value, 0, shape, dtype, flat)
    np_dtype = object if dtype == tf.string.as_datatype_enum else tf.as_dtype(dtype).as_numpy_dtype
    try:
        return np.array(flat, dtype=np_dtype).reshape(shape)
    except (OverflowError, ValueError) as e:
        raise invalid_argument(str(e)) from e


def _fill(value: Any, level: int, shape: list[int], dtype: int, out: list[Any]) -> None:
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(
                f"JSON Value: {_dump(value)} found at incorrect level: {level + 1} in the "
                f"JSON DOM. Expected at level: {rank}"
            )
        out.append(_leaf(value, dtype))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}"
        )
    for v in value:
        _fill(v, level + 1, shape, dtype, out)


def _leaf(value: Any, dtype: int) -> Any:
    if dtype == tf.string.as_datatype_enum:
        if isinstance(value, str):
            return value.encode()
        if isinstance(value, dict):
            return _b64decode(value)
    elif dtype in _FLOAT_KINDS:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif dtype in _INT_KINDS:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif dtype == tf.bool.as_datatype_enum:
        if isinstance(value, bool):
            return value
    else:
        raise ServingError(
            grpc.StatusCode.UNIMPLEMENTED,
            f"Conversion of JSON Value: {_dump(value)} to type: {_dtype_name(dtype)}",
        )
    raise invalid_argument(
        f"JSON Value: {_dump(value)} Type: {_json_type(value)} is not of expected type: "
        f"{_dtype_name(dtype)}"
    )


def _b64decode(value: dict[str, Any]) -> bytes:
    if not _is_b64(value):
        raise invalid_argument(
            f"JSON Value: {_dump(value)} not formatted correctly for base64 data"
        )
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as e:
        raise invalid_argument("Unable to base64 decode") from e


def _rows_json(outputs: dict[str, np.ndarray]) -> str:
    batch = 0
    for name, tensor in outputs.items():
        if tensor.ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        if tensor.shape[0] < 1:
            raise invalid_argument(f"Tensor name: {name} has invalid batch size: {tensor.shape[0]}")
        if batch and tensor.shape[0] != batch:
            raise invalid_argument(
                f"Tensor name: {name} has inconsistent batch size: {tensor.shape[0]} "
                f"expecting: {batch}"
            )
        batch = tensor.shape[0]
    columns = {name: _to_json(name, t) for name, t in outputs.items()}
    if len(columns) == 1:
        (values,) = columns.values()
        predictions: list[Any] = values
    else:
        predictions = [{n: columns[n][i] for n in columns} for i in range(batch)]
    return json.dumps({"predictions": predictions})


def _columns_json(outputs: dict[str, np.ndarray]) -> str:
    columns = {name: _to_json(name, t) for name, t in outputs.items()}
    if len(columns) == 1:
        (values,) = columns.values()
        return json.dumps({"outputs": values})
    return json.dumps({"outputs": columns})


def _to_json(name: str, tensor: np.ndarray) -> Any:
    if tensor.dtype == object or tensor.dtype.kind == "S":
        if name.endswith("_bytes"):
            conv: Callable[[Any], Any] = lambda b: {"b64": base64.b64encode(b).decode()}  # noqa: E731
        else:
            conv = lambda b: b.decode("utf-8", "replace")  # noqa: E731
        return np.frompyfunc(conv, 1, 1)(tensor).tolist() if tensor.ndim else conv(tensor.item())
    if tensor.dtype in (np.float32, np.float16):
        shortest = np.frompyfunc(_float32, 1, 1)(tensor)
        return shortest.tolist() if tensor.ndim else shortest
    return tensor.tolist()


def _float32(value: Any) -> float:
    """TF Serving writes floats with the fewest digits that round-trip the float32."""
    f = float(value)
    return f if not math.isfinite(f) else float(str(np.float32(f)))


# ---------------------------------------------------------- classify/regress
def _examples_request(doc: dict[str, Any], request: Any) -> None:
    has_context = "context" in doc
    if has_context:
        _example_from_json(doc["context"], request.input.example_list_with_context.context)
    if "examples" not in doc:
        raise _format_error(
            doc, "When method is classify, key 'examples' is expected and was not found"
        )
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise _format_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise _format_error(doc, "'examples' value is an empty array")
    for value in examples:
        target = (
            request.input.example_list_with_context.examples.add()
            if has_context
            else request.input.example_list.examples.add()
        )
        _example_from_json(value, target)


def _example_from_json(value: Any, example: example_pb2.Example) -> None:
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {_json_type(value)}")
    for name, content in value.items():
        feature = feature_pb2.Feature()
        for v in content if isinstance(content, list) else [content]:
            _add_feature_value(v, name, feature)
        example.features.feature[name].CopyFrom(feature)


def _add_feature_value(value: Any, name: str, feature: feature_pb2.Feature) -> None:
    kind = feature.WhichOneof("kind")

    def expect(k: str) -> None:
        if kind not in (None, k):
            names = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}
            raise invalid_argument(
                f"Unexpected element type in feature: {name} expecting type: {names[kind or k]}"
            )

    if value is None or isinstance(value, list):
        raise invalid_argument(
            f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}"
        )
    if isinstance(value, bool):
        expect("int64_list")
        feature.int64_list.value.append(int(value))
    elif isinstance(value, dict):
        if not _is_b64(value):
            raise invalid_argument(
                f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}"
            )
        expect("bytes_list")
        feature.bytes_list.value.append(_b64decode(value))
    elif isinstance(value, str):
        expect("bytes_list")
        feature.bytes_list.value.append(value.encode())
    elif isinstance(value, float):
        expect("float_list")
        feature.float_list.value.append(value)
    elif isinstance(value, int):
        expect("int64_list")
        if value > _INT64_MAX:
            raise invalid_argument(f"Feature: {name} has uint64 element. Only int64 is supported.")
        feature.int64_list.value.append(value)


def _classify(core: ServingCore, spec: model_pb2.ModelSpec, body: bytes) -> str:
    doc = _parse_json(body)
    _fill_signature(doc, spec)
    request = classification_pb2.ClassificationRequest(model_spec=spec)
    _examples_request(doc, request)
    result = core.classify(request, PROTOCOL).result
    if not result.classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    results = [
        [[c.label, _float32(c.score)] for c in classifications.classes]
        for classifications in result.classifications
    ]
    return json.dumps({"results": results})


def _regress(core: ServingCore, spec: model_pb2.ModelSpec, body: bytes) -> str:
    doc = _parse_json(body)
    _fill_signature(doc, spec)
    request = regression_pb2.RegressionRequest(model_spec=spec)
    _examples_request(doc, request)
    result = core.regress(request, PROTOCOL).result
    if not result.regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    return json.dumps({"results": [_float32(r.value) for r in result.regressions]})


# -------------------------------------------------------------------- helpers
def _parse_json(body: bytes) -> dict[str, Any]:
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        offset = getattr(e, "pos", 0)
        raise invalid_argument(f"JSON Parse error: {e} at offset: {offset}") from e
    if not isinstance(doc, dict):
        raise _format_error(doc, "Is not object")
    return doc


def _fill_signature(doc: dict[str, Any], spec: model_pb2.ModelSpec) -> None:
    if "signature_name" in doc:
        if not isinstance(doc["signature_name"], str):
            raise _format_error(doc, "'signature_name' key must be a string value.")
        spec.signature_name = doc["signature_name"]


def _format_error(doc: Any, message: str) -> ServingError:
    return invalid_argument(f"JSON Value: {_dump(doc)} {message}")


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_object(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _dtype_name(dtype: int) -> str:
    return str(tf.dtypes.as_dtype(dtype).name)


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))[:1000]


def _shape_str(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


# ------------------------------------------------------------------------ app
def create_app(core: ServingCore) -> Starlette:
    async def metrics(_: Request) -> Response:
        return Response(core.metrics.render(), media_type="text/plain; version=0.0.4")

    async def api(request: Request) -> Response:
        path = request.url.path
        if not _V1.fullmatch(path):
            return Response(status_code=404)  # TF Serving's dispatcher ignores the request
        body = await request.body()
        status, text = await run_in_threadpool(handle, core, request.method, path, body)
        return Response(text, status_code=status, headers=_JSON_HEADERS)

    return Starlette(
        routes=[
            Route(PROMETHEUS_PATH, metrics, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/{path:path}", api, methods=["GET", "POST"]),
        ]
    )
