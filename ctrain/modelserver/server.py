"""Process wiring: flags (tensorflow_model_server's), startup order, shutdown."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

import grpc
import uvicorn

from ctrain.modelserver import config as cfg
from ctrain.modelserver.errors import ServingError
from ctrain.modelserver.grpc_api import create_server
from ctrain.modelserver.manager import LoadFn, ModelManager
from ctrain.modelserver.metrics import Metrics
from ctrain.modelserver.model import load_servable
from ctrain.modelserver.rest_api import create_app
from ctrain.modelserver.service import ServingCore

log = logging.getLogger("ctrain.modelserver")


@dataclass
class Options:
    port: int = 8500
    rest_api_port: int = 0  # 0: no REST server, as in tensorflow_model_server
    model_config_file: str = ""
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file_poll_wait_seconds: float = 0.0
    file_system_poll_wait_seconds: float = 1.0
    allow_version_labels_for_unavailable_models: bool = False
    strict_classify_regress: bool = False
    bind_address: str = "0.0.0.0"
    grpc_max_threads: int = 16

    def initial_config(self) -> cfg.ModelServerConfig:
        if self.model_config_file:
            return cfg.load_config_file(self.model_config_file)
        if not self.model_base_path:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "Both server_model_config_file and model_base_path are empty!",
            )
        return cfg.single_model_config(self.model_name, self.model_base_path)


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {value}")


def parse_args(argv: Sequence[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m ctrain.modelserver",
        description="TF-Serving-compatible model server (a dev/test stand-in).",
    )
    d = Options()
    p.add_argument("--port", type=int, default=d.port, help="gRPC port")
    p.add_argument("--rest_api_port", type=int, default=d.rest_api_port, help="0 disables REST")
    p.add_argument("--model_config_file", default=d.model_config_file)
    p.add_argument("--model_name", default=d.model_name)
    p.add_argument("--model_base_path", default=d.model_base_path)
    p.add_argument(
        "--model_config_file_poll_wait_seconds",
        type=float,
        default=d.model_config_file_poll_wait_seconds,
    )
    p.add_argument(
        "--file_system_poll_wait_seconds", type=float, default=d.file_system_poll_wait_seconds
    )
    for flag in ("allow_version_labels_for_unavailable_models", "strict_classify_regress"):
        p.add_argument(f"--{flag}", type=_bool, nargs="?", const=True, default=False)
    p.add_argument("--bind_address", default=d.bind_address)
    p.add_argument("--grpc_max_threads", type=int, default=d.grpc_max_threads)
    return Options(**vars(p.parse_args(argv)))


class ModelServer:
    """Manager + gRPC + REST in one process. ``start`` blocks until models are loaded."""

    def __init__(self, options: Options, load: LoadFn = load_servable) -> None:
        self.options = options
        self.manager = ModelManager(
            load,
            allow_version_labels_for_unavailable_models=(
                options.allow_version_labels_for_unavailable_models
            ),
            file_system_poll_wait_seconds=options.file_system_poll_wait_seconds,
        )
        self.metrics = Metrics(self.manager.loaded_versions)
        self.core = ServingCore(
            self.manager, self.metrics, strict_classify_regress=options.strict_classify_regress
        )
        self.grpc_port = 0
        self.rest_port = 0
        self._grpc: grpc.Server | None = None
        self._rest: uvicorn.Server | None = None
        self._rest_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._config_poller: threading.Thread | None = None

    def start(self) -> None:
        opts = self.options
        initial = opts.initial_config()
        self.manager.start()
        # ServerCore::Create: labels checked, then every model must become available.
        self.manager.reload_config(initial)
        self._grpc, self.grpc_port = create_server(
            self.core, f"{opts.bind_address}:{opts.port}", opts.grpc_max_threads
        )
        self._grpc.start()
        log.info("Running gRPC ModelServer at %s:%d ...", opts.bind_address, self.grpc_port)
        if opts.rest_api_port:
            self._start_rest()
        if opts.model_config_file and opts.model_config_file_poll_wait_seconds > 0:
            self._config_poller = threading.Thread(
                target=self._poll_config_file, name="modelserver-config-poll", daemon=True
            )
            self._config_poller.start()

    def _start_rest(self) -> None:
        opts = self.options
        config = uvicorn.Config(
            create_app(self.core),
            host=opts.bind_address,
            port=opts.rest_api_port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self._rest = uvicorn.Server(config)
        self._rest_thread = threading.Thread(
            target=self._rest.run, name="modelserver-rest", daemon=True
        )
        self._rest_thread.start()
        while not self._rest.started:
            if not self._rest_thread.is_alive():
                raise OSError(f"Failed to start HTTP server on port {opts.rest_api_port}")
            self._rest_thread.join(0.01)
        self.rest_port = opts.rest_api_port
        log.info("Exporting HTTP/REST API at:%s:%d ...", opts.bind_address, self.rest_port)

    def _poll_config_file(self) -> None:
        path = self.options.model_config_file
        while not self._stop.wait(self.options.model_config_file_poll_wait_seconds):
            try:
                new = cfg.load_config_file(path)
                if new != self.manager.config:
                    log.info("Reloading config from %s", path)
                    self.manager.reload_config(new)
            except (ServingError, OSError) as e:
                log.error("Failed to reload config from %s: %s", path, e)

    def stop(self, grace: float = 5.0) -> None:
        self._stop.set()
        if self._rest is not None:
            self._rest.should_exit = True
        if self._grpc is not None:
            self._grpc.stop(grace).wait(grace + 1)
        if self._rest_thread is not None:
            self._rest_thread.join(grace + 1)
        self.manager.stop()
        log.info("Server stopped")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname).1s %(name)s] %(message)s",
        stream=sys.stderr,
    )
    options = parse_args(argv)
    server = ModelServer(options)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("Received signal %d, shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    failure: list[BaseException] = []
    started = threading.Event()

    def start() -> None:
        try:
            server.start()
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            failure.append(e)
        finally:
            started.set()

    starter = threading.Thread(target=start, name="modelserver-start", daemon=True)
    starter.start()
    while not stop.wait(0.2):
        if started.is_set() and failure:
            err = failure[0]
            print(f"Failed to start server. Error: {err}", file=sys.stderr, flush=True)
            server.stop(grace=0)
            return 1
    server.stop()
    return 0
