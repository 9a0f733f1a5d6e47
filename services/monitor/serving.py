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
from tensorflow_serving.apis import prediction_service_pb2_grpc

from services.monitor.errors import ServingError, ServingUnavailable
from shared import contract
from shared import tfserving as tfs


class NoSuchVersion(ServingError):
    """The label (or version) is not served: nothing to score with."""

    status_code = 404


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
                tfs.channel_target(self.address),
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
        req = tfs.predict_request(
            model, examples, version=version, label=label, signature=signature, outputs=[output]
        )
        what = f"{model} {'version ' + str(version) if version is not None else label}"
        try:
            resp = await self._stub().Predict(req, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as e:
            text = f"predict on {what} ({signature}): {e.code().name}: {e.details()}"
            if e.code() in tfs.DOWN:
                raise ServingUnavailable(text) from e
            if tfs.missing(e):
                raise NoSuchVersion(text) from e
            raise ServingError(text) from e
        if output not in resp.outputs:
            raise ServingError(f"{what} answered without output {output!r}")
        try:
            return int(resp.model_spec.version.value), tfs.array(resp.outputs[output])
        except ValueError as e:
            raise ServingError(f"{what}: {e}") from e

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
