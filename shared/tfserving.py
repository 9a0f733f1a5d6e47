"""What every ctrain client of TF Serving's gRPC API shares (the promoter's and the
monitor's): which status codes mean "not there", the Predict request, its outputs as
arrays, and how a setting names the replicas. Without TensorFlow: the protos only.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from shared import contract

# The server is not there (down, restarting, paused): an outage, never "no such model".
DOWN = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)
# What TF Serving answers for a model, version or label it does not have.
MISSING = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION})


def missing(e: grpc.aio.AioRpcError) -> bool:
    """TF Serving's answers for a model, version or label it does not have (a label
    comes back as INVALID_ARGUMENT naming the "version label")."""
    return e.code() in MISSING or (
        e.code() == grpc.StatusCode.INVALID_ARGUMENT and "version label" in (e.details() or "")
    )


def strings(values: Sequence[bytes]) -> tensor_pb2.TensorProto:
    """A 1-D DT_STRING tensor (serialized tf.Examples)."""
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
    t.tensor_shape.CopyFrom(
        tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))]
        )
    )
    t.string_val.extend(values)
    return t


def array(t: tensor_pb2.TensorProto) -> np.ndarray:
    """A numeric output tensor as an array; ValueError for another dtype."""
    shape = [d.size for d in t.tensor_shape.dim]
    if t.tensor_content:
        dtype = {
            types_pb2.DT_FLOAT: np.float32,
            types_pb2.DT_DOUBLE: np.float64,
            types_pb2.DT_INT64: np.int64,
            types_pb2.DT_INT32: np.int32,
        }.get(t.dtype)
        if dtype is None:
            raise ValueError(f"unexpected output dtype {types_pb2.DataType.Name(t.dtype)}")
        return np.frombuffer(t.tensor_content, dtype=dtype).reshape(shape)
    for field in ("float_val", "double_val", "int64_val", "int_val"):
        vals = getattr(t, field)
        if len(vals):
            return np.asarray(vals).reshape(shape)
    return np.zeros(shape)


def predict_request(
    model: str,
    examples: Sequence[bytes],
    *,
    version: int | None = None,
    label: str | None = None,
    signature: str = contract.SERVING_SIGNATURE,
    input_name: str = contract.SERVING_INPUT,
    outputs: Sequence[str] = (),
) -> predict_pb2.PredictRequest:
    """Predict on serialized tf.Examples by version, else by label (else the latest)."""
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    elif label is not None:
        req.model_spec.version_label = label
    req.inputs[input_name].CopyFrom(strings(examples))
    req.output_filter.extend(outputs)
    return req


def replicas(target: str) -> list[str]:
    """``host:port`` of every model server the setting names: a comma-separated list, or
    ``dns:///name:port`` (a Kubernetes headless Service) resolved now to its pods
    (OSError when it does not resolve)."""
    if target.startswith("dns:///"):
        host, _, port = target.removeprefix("dns:///").rpartition(":")
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        return sorted({f"{i[4][0]}:{port}" for i in infos})
    return [x.strip() for x in target.split(",") if x.strip()]


def channel_target(address: str) -> str:
    """One gRPC target over every model server replica the setting names (a comma list of
    host:port, resolved now, or dns:///name:port, which gRPC resolves and re-resolves),
    requests spread round-robin by gRPC itself."""
    parts = [x.strip() for x in address.split(",") if x.strip()]
    if len(parts) < 2:
        return address
    ips = []
    for part in parts:
        host, _, port = part.rpartition(":")
        for info in socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM):
            ips.append(f"{info[4][0]}:{port}")
    return "ipv4:" + ",".join(dict.fromkeys(ips))
