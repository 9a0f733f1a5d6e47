"""Scoring through TF Serving's gRPC ``PredictionService``, as any client would.

Requests are batched (``batch_rows`` examples each, a few in flight) and address the
model by label (``stable``) or version; the response names the version that answered,
so a label that moves between two batches cannot mix two versions in one score: every
batch after the first asks for the version the first one got.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from services.monitor.errors import ServingError, ServingUnavailable
from shared import contract

_DOWN = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
# A label or version the server does not have.
_MISSING = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}


class NoSuchVersion(ServingError):
    """The label (or version) is not served: nothing to score with."""

    status_code = 404


def _strings(values: Sequence[bytes]) -> tensor_pb2.TensorProto:
    t = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
    t.tensor_shape.CopyFrom(
        tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))]
        )
    )
    t.string_val.extend(values)
    return t


def _array(t: tensor_pb2.TensorProto) -> np.ndarray:
    shape = [d.size for d in t.tensor_shape.dim]
    if t.tensor_content:
        dtype = {
            types_pb2.DT_FLOAT: np.float32,
            types_pb2.DT_DOUBLE: np.float64,
            types_pb2.DT_INT64: np.int64,
            types_pb2.DT_INT32: np.int32,
        }.get(t.dtype)
        if dtype is None:
            raise ServingError(f"unexpected output dtype {types_pb2.DataType.Name(t.dtype)}")
        return np.frombuffer(t.tensor_content, dtype=dtype).reshape(shape)
    for field in ("float_val", "double_val", "int64_val", "int_val"):
        vals = getattr(t, field)
        if len(vals):
            return np.asarray(vals).reshape(shape)
    return np.zeros(shape)


def channel_target(address: str) -> str:
    """One gRPC target over every model server replica the setting names (a comma list of
    host:port, resolved now, or dns:///name:port, which gRPC resolves and re-resolves),
    requests spread round-robin by gRPC itself."""
    parts = [x.strip() for x in address.split(",") if x.strip()]
    if len(parts) < 2:
        return address
    import socket

    ips = []
    for part in parts:
        host, _, port = part.rpartition(":")
        for info in socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM):
            ips.append(f"{info[4][0]}:{port}")
    return "ipv4:" + ",".join(dict.fromkeys(ips))


class Scorer:
    """Batched Predict calls against TF Serving (or the embedded stand-in): one replica,
    or every replica round-robin."""

    def __init__(
        self, address: str, batch_rows: int = 2048, in_flight: int = 2, timeout_s: float = 30.0
    ) -> None:
        self.address = address
        self.batch_rows = batch_rows
        self.in_flight = in_flight
        self.timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None

    def _stub(self) -> prediction_service_pb2_grpc.PredictionServiceStub:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                channel_target(self.address),
                options=[
                    ("grpc.max_receive_message_length", -1),
                    ("grpc.max_send_message_length", -1),
                    ("grpc.lb_policy_name", "round_robin"),
                ],
            )
        return prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _one(
        self,
        model: str,
        examples: Sequence[bytes],
        signature: str,
        output: str,
        version: int | None,
        label: str | None,
    ) -> tuple[int, np.ndarray]:
        req = predict_pb2.PredictRequest()
        req.model_spec.name = model
        req.model_spec.signature_name = signature
        if version is not None:
            req.model_spec.version.value = version
        elif label is not None:
            req.model_spec.version_label = label
        req.inputs[contract.SERVING_INPUT].CopyFrom(_strings(examples))
        req.output_filter.append(output)
        what = f"{model} {'version ' + str(version) if version is not None else label}"
        try:
            resp = await self._stub().Predict(req, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as e:
            text = f"predict on {what} ({signature}): {e.code().name}: {e.details()}"
            if e.code() in _DOWN:
                raise ServingUnavailable(text) from e
            if e.code() in _MISSING or (
                # TF Serving's answer for a label it does not have.
                e.code() == grpc.StatusCode.INVALID_ARGUMENT
                and "version label" in (e.details() or "")
            ):
                raise NoSuchVersion(text) from e
            raise ServingError(text) from e
        if output not in resp.outputs:
            raise ServingError(f"{what} answered without output {output!r}")
        return int(resp.model_spec.version.value), _array(resp.outputs[output])

    async def predict(
        self,
        model: str,
        examples: Sequence[bytes],
        output: str,
        *,
        version: int | None = None,
        label: str | None = None,
        signature: str = contract.SERVING_SIGNATURE,
    ) -> tuple[int, np.ndarray]:
        """(the version that answered, the output for every example, in order)."""
        if not examples:
            raise ServingError("nothing to score")
        chunks = [
            examples[i : i + self.batch_rows] for i in range(0, len(examples), self.batch_rows)
        ]
        # The first batch resolves the label; the rest ask for that version.
        v, first = await self._one(model, chunks[0], signature, output, version, label)
        gate = asyncio.Semaphore(self.in_flight)

        async def rest(chunk: Sequence[bytes]) -> np.ndarray:
            async with gate:
                return (await self._one(model, chunk, signature, output, v, None))[1]

        others = await asyncio.gather(*(rest(c) for c in chunks[1:]))
        return v, np.concatenate([first, *others], axis=0)
