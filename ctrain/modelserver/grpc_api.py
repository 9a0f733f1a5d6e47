"""gRPC PredictionService and ModelService over :class:`ServingCore`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from typing import NoReturn, TypeVar

import grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from ctrain.modelserver.errors import ServingError
from ctrain.modelserver.service import ServingCore

log = logging.getLogger("ctrain.modelserver")
PROTOCOL = "grpc"
T = TypeVar("T")
# TF Serving lifts gRPC's 4 MB default; -1 = unlimited.
_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def _run(context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except ServingError as e:
        _abort(context, e.code, e.message)
    except Exception as e:  # unexpected: INTERNAL, as TF Serving would report a crash-free error
        log.exception("unhandled error in gRPC handler")
        _abort(context, grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable")  # context.abort raises


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServingCore) -> None:
        self.core = core

    def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        return _run(context, lambda: self.core.predict(request, PROTOCOL))

    def Classify(
        self, request: classification_pb2.ClassificationRequest, context: grpc.ServicerContext
    ) -> classification_pb2.ClassificationResponse:
        return _run(context, lambda: self.core.classify(request, PROTOCOL))

    def Regress(
        self, request: regression_pb2.RegressionRequest, context: grpc.ServicerContext
    ) -> regression_pb2.RegressionResponse:
        return _run(context, lambda: self.core.regress(request, PROTOCOL))

    def GetModelMetadata(
        self,
        request: get_model_metadata_pb2.GetModelMetadataRequest,
        context: grpc.ServicerContext,
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        return _run(context, lambda: self.core.get_model_metadata(request, PROTOCOL))

    def MultiInference(
        self, request: inference_pb2.MultiInferenceRequest, context: grpc.ServicerContext
    ) -> inference_pb2.MultiInferenceResponse:
        _abort(
            context,
            grpc.StatusCode.UNIMPLEMENTED,
            "MultiInference is not implemented by the ctrain model server stand-in",
        )


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServingCore) -> None:
        self.core = core

    def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        return _run(context, lambda: self.core.get_model_status(request))

    def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        for i, model in enumerate(request.config.model_config_list.config):
            log.info(
                "Config entry index : %d path : %s name : %s platform : %s",
                i,
                model.base_path,
                model.name,
                model.model_platform,
            )

        def reload() -> model_management_pb2.ReloadConfigResponse:
            try:
                return self.core.reload_config(request)
            except ServingError as e:
                log.error("ReloadConfig failed: %s", e.message)
                raise

        return _run(context, reload)


def create_server(
    core: ServingCore, address: str, max_workers: int = 16
) -> tuple[grpc.Server, int]:
    """A started-but-not-yet-serving server and its bound port (0 picks one)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=_OPTIONS)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(core), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"Failed to bind gRPC server to {address}")
    return server, port
