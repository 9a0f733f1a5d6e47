"""TF Serving through its own gRPC API: the same client for tensorflow/serving and
the embedded stand-in (``ctrain.modelserver``).

Order of a label move (docs/architecture.md §10): a config that loads N+1 beside N → poll
``GetModelStatus`` until N+1 is AVAILABLE → a config that moves the label. A
model left out of a submitted config is unloaded, so configs always carry
every version and label that must stay.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from services.promoter.errors import ServingError, ServingUnavailable
from shared import contract
from shared import tfserving as tfs


def refused(what: str, e: grpc.aio.AioRpcError) -> ServingError:
    """The error for a failed call: an outage when the server is not there."""
    text = f"{what}: {e.code().name}: {e.details()}"
    return ServingUnavailable(text) if e.code() in tfs.DOWN else ServingError(text)


@dataclass(frozen=True)
class ModelLayout:
    name: str
    base_path: str
    versions: tuple[int, ...]
    labels: dict[str, int] = field(default_factory=dict)


def server_config(models: list[ModelLayout]) -> model_server_config_pb2.ModelServerConfig:
    cfg = model_server_config_pb2.ModelServerConfig()
    for m in models:
        c = cfg.model_config_list.config.add()
        c.name = m.name
        c.base_path = m.base_path
        c.model_platform = "tensorflow"
        c.model_version_policy.specific.versions.extend(sorted(m.versions))
        for label, version in m.labels.items():
            c.version_labels[label] = version
    return cfg


class ServingClient:
    def __init__(self, address: str, timeout_s: float = 10.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None

    def _ch(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                self.address, options=[("grpc.max_receive_message_length", 64 << 20)]
            )
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def probe(self, timeout_s: float = 2.0) -> str | None:
        """None when the server answers (any answer but "not there"), else why not."""
        stub = model_service_pb2_grpc.ModelServiceStub(self._ch())
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = "ctrain-probe"  # a name no one serves: NOT_FOUND is an answer
        try:
            await stub.GetModelStatus(req, timeout=timeout_s)
        except grpc.aio.AioRpcError as e:
            if e.code() in tfs.DOWN:
                return f"serving unreachable at {self.address}: {e.code().name}"
        return None

    async def reload(self, models: list[ModelLayout]) -> None:
        stub = model_service_pb2_grpc.ModelServiceStub(self._ch())
        req = model_management_pb2.ReloadConfigRequest(config=server_config(models))
        try:
            resp = await stub.HandleReloadConfigRequest(req, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as e:
            raise refused("reload", e) from e
        if resp.status.error_code != 0:
            raise ServingError(f"reload failed: {resp.status.error_message}")

    async def status(self, model: str) -> dict[int, str]:
        """Version -> state name (START, LOADING, AVAILABLE, UNLOADING, END)."""
        stub = model_service_pb2_grpc.ModelServiceStub(self._ch())
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = model
        try:
            resp = await stub.GetModelStatus(req, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return {}
            raise refused(f"status of {model}", e) from e
        names = get_model_status_pb2.ModelVersionStatus.State.Name
        return {int(s.version): names(s.state) for s in resp.model_version_status}

    async def label_version(self, model: str, label: str) -> int | None:
        """The version ``label`` resolves to on the server, or None when the server has
        no such model or label. A server that does not answer is not "no label": that
        raises :class:`ServingUnavailable`."""
        stub = model_service_pb2_grpc.ModelServiceStub(self._ch())
        req = get_model_status_pb2.GetModelStatusRequest()
        req.model_spec.name = model
        req.model_spec.version_label = label
        try:
            resp = await stub.GetModelStatus(req, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as e:
            # No such model or label (GetModelStatus says INVALID_ARGUMENT for a label).
            if e.code() in tfs.MISSING or e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return None
            raise refused(f"label {label} of {model}", e) from e
        versions = [int(s.version) for s in resp.model_version_status]
        return versions[0] if versions else None

    async def wait_available(self, model: str, version: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last: dict[int, str] = {}
        while time.monotonic() < deadline:
            last = await self.status(model)
            if last.get(version) == "AVAILABLE":
                return
            if last.get(version) == "END":
                raise ServingError(f"{model} version {version} failed to load (state END)")
            await asyncio.sleep(0.1)  # poll GetModelStatus, as TF Serving requires
        raise ServingError(f"{model} version {version} not AVAILABLE after {timeout_s}s: {last}")

    async def predict_examples(
        self,
        model: str,
        examples: list[bytes],
        version: int | None = None,
        label: str | None = None,
        input_name: str = contract.SERVING_INPUT,
        signature: str = contract.SERVING_SIGNATURE,
    ) -> dict[str, list[float]]:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(self._ch())
        req = tfs.predict_request(
            model,
            examples,
            version=version,
            label=label,
            signature=signature,
            input_name=input_name,
        )
        try:
            resp = await stub.Predict(req, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as e:
            raise refused(f"predict on {model}", e) from e
        try:
            return {k: tfs.array(v).reshape(-1).tolist() for k, v in resp.outputs.items()}
        except ValueError as e:
            raise ServingError(f"predict on {model}: {e}") from e


def replicas(target: str) -> list[str]:
    """Every model server the setting names (shared.tfserving.replicas); a name that does
    not resolve is an outage."""
    try:
        return tfs.replicas(target)
    except OSError as e:
        raise ServingUnavailable(f"cannot resolve {target}: {e}") from e


class ServingFleet:
    """Every replica of the model server behind one client (the promoter's): a config is
    applied to each, a version is AVAILABLE when every replica reports it so, a label
    reads as the version every replica agrees on, and a smoke test asks each one.

    ``config_file``: where the applied config is also written, so a replica that
    (re)starts reads the current layout before it serves (``--model_config_file``)."""

    def __init__(self, target: str, timeout_s: float = 10.0, config_file: str = "") -> None:
        self.target = target
        self.address = target
        self.timeout_s = timeout_s
        self.config_file = config_file
        self._clients: dict[str, ServingClient] = {}
        self.last: list[ModelLayout] | None = None

    def clients(self) -> list[ServingClient]:
        out = []
        for addr in replicas(self.target):
            if addr not in self._clients:
                self._clients[addr] = ServingClient(addr, self.timeout_s)
            out.append(self._clients[addr])
        if not out:
            raise ServingUnavailable(f"no model server in {self.target!r}")
        return out

    async def close(self) -> None:
        for c in self._clients.values():
            await c.close()
        self._clients.clear()

    async def probe(self, timeout_s: float = 2.0) -> str | None:
        for c in self.clients():
            why = await c.probe(timeout_s)
            if why:
                return why
        return None

    async def reload(self, models: list[ModelLayout]) -> None:
        if self.config_file:
            self._write(models)
        self.last = list(models)
        for c in self.clients():
            await c.reload(models)

    def _write(self, models: list[ModelLayout]) -> None:
        import os

        from google.protobuf import text_format

        tmp = f"{self.config_file}.tmp"
        with open(tmp, "w") as f:
            f.write(text_format.MessageToString(server_config(models)))
        os.replace(tmp, self.config_file)

    async def status(self, model: str) -> dict[int, str]:
        """Version -> state, AVAILABLE only where every replica reports it so (else the
        state of the first replica that does not)."""
        reports = [await c.status(model) for c in self.clients()]
        out: dict[int, str] = {}
        for v in sorted({v for r in reports for v in r}):
            states = [r.get(v, "START") for r in reports]
            out[v] = next((s for s in states if s != "AVAILABLE"), "AVAILABLE")
        return out

    async def label_version(self, model: str, label: str) -> int | None:
        """The version every replica resolves ``label`` to; None when one has no such
        label or they disagree (a label move in progress, a replica behind)."""
        seen = {await c.label_version(model, label) for c in self.clients()}
        return seen.pop() if len(seen) == 1 else None

    async def behind(self, model: str, labels: dict[str, int]) -> list[str]:
        """Replicas whose labels differ from ``labels`` (restarted with an older config)."""
        out = []
        for c in self.clients():
            for label, version in labels.items():
                if await c.label_version(model, label) != version:
                    out.append(c.address)
                    break
        return out

    async def catch_up(self, address: str, models: list[ModelLayout]) -> None:
        """Bring one replica toward ``models`` the way a promotion moves a label: a label
        moves only to a version that replica already reports AVAILABLE (else it keeps what
        it has while the version loads); the next call completes the move."""
        client = next(c for c in self.clients() if c.address == address)
        staged = []
        for m in models:
            states = await client.status(m.name)
            labels: dict[str, int] = {}
            for label, version in m.labels.items():
                if states.get(version) == "AVAILABLE":
                    labels[label] = version
                else:
                    now = await client.label_version(m.name, label)
                    if now is not None and now in m.versions:
                        labels[label] = now
            staged.append(ModelLayout(m.name, m.base_path, m.versions, labels))
        await client.reload(staged)

    async def wait_available(self, model: str, version: int, timeout_s: float) -> None:
        for c in self.clients():
            await c.wait_available(model, version, timeout_s)

    async def predict_examples(
        self,
        model: str,
        examples: list[bytes],
        version: int | None = None,
        label: str | None = None,
        input_name: str = contract.SERVING_INPUT,
        signature: str = contract.SERVING_SIGNATURE,
    ) -> dict[str, list[float]]:
        """Every replica answers (a smoke test); the first one's outputs."""
        outs = [
            await c.predict_examples(model, examples, version, label, input_name, signature)
            for c in self.clients()
        ]
        return outs[0]
