"""Wiring: ``create_app(settings)`` -> FastAPI app with a FastStream subscriber.

Acknowledgement is manual: a validation is committed once its decision is
recorded (and its run submitted). Redelivery is harmless: a seen window is
skipped and run ids are claimed in Redis before submission.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse
from faststream.kafka.fastapi import KafkaMessage
from pydantic import BaseModel, Field, ValidationError

from services.trigger import policy as pol
from services.trigger.backends import Backend, KfpBackend, LocalBackend
from services.trigger.core import Trigger, TriggerConfig
from services.trigger.metrics import TriggerMetrics
from services.trigger.pipeline import ComponentImages, compile_pipeline
from services.trigger.settings import TriggerSettings
from shared import topics
from shared.artifacts import ArtifactStore
from shared.events import Event, ModelCandidate, PromotionEvent, TrainingRun, WindowValidated
from shared.kafka import health, make_router, one_event_at_a_time
from shared.metrics import metrics_endpoint, new_registry
from shared.periodic import every
from shared.redis import make_redis
from shared.settings import CommonSettings, SettingsError

log = logging.getLogger(__name__)


class TriggerRequest(BaseModel):
    reason: str = Field(default="manual", max_length=200, description="Why an operator asks.")


def make_backend(s: TriggerSettings) -> Backend:
    if s.backend == "local":
        return LocalBackend()
    if not s.kfp_host:
        raise SettingsError("backend=kfp needs CTRAIN_TRIGGER_KFP_HOST")
    package = s.pipeline_package or compile_pipeline(
        tempfile.mkstemp(suffix=".yaml", prefix="ctrain-pipeline-")[1],
        ComponentImages(base_image=s.base_image, trainer_gpus=s.trainer_gpus),
    )
    return KfpBackend(s.kfp_host, package, s.kfp_namespace or None, s.kfp_token or None)


def policy_from(s: TriggerSettings) -> pol.Policy:
    return pol.Policy(
        consecutive=s.consecutive,
        min_new_examples=s.min_new_examples,
        max_model_age_s=s.max_model_age_s,
        cooldown_s=s.cooldown_s,
        backoff=s.backoff,
        max_wait_s=s.max_wait_s,
        daily_budget=s.daily_budget,
        min_train_examples=s.min_train_examples,
        max_train_examples=s.max_train_examples,
        min_eval_examples=s.min_eval_examples,
        clock=s.clock,
    )


def create_app(common: CommonSettings, settings: TriggerSettings) -> FastAPI:
    if not settings.module_path:
        raise SettingsError("trigger needs CTRAIN_TRIGGER_MODULE_PATH (the model module file)")
    registry = new_registry()
    metrics = TriggerMetrics(registry)
    redis = make_redis(common)
    router = make_router(common)

    async def publish(event: Event) -> None:
        topic = topics.CANDIDATES if isinstance(event, ModelCandidate) else topics.TRAINING
        assert isinstance(event, ModelCandidate | TrainingRun)
        await router.broker.publish(event.to_bytes(), topic=topic, key=event.key)

    trigger = Trigger(
        redis=redis,
        store=ArtifactStore(common.artifact_root),
        backend=make_backend(settings),
        metrics=metrics,
        config=TriggerConfig(
            model=settings.model,
            module_path=settings.module_path,
            schema_path=common.schema_path,
            policy=policy_from(settings),
            epochs=settings.epochs,
            blocking=tuple(settings.blocking_anomalies),
        ),
        publish=publish,
    )

    @one_event_at_a_time(router, topics.VALIDATIONS, settings.group_id)
    async def on_validation(msg: KafkaMessage) -> None:
        try:
            v = WindowValidated.model_validate_json(msg.body)
        except ValidationError as e:
            log.error("not a WindowValidated; skipped", extra={"err": str(e)})
            await msg.ack()
            return
        d = await trigger.on_validation(v)
        if d is not None:
            log.info("decision", extra={"window": v.window_id, "take": d.take, "why": d.reason})
        await msg.ack()

    @one_event_at_a_time(router, topics.PROMOTIONS, settings.group_id)
    async def on_promotion(msg: KafkaMessage) -> None:
        try:
            ev = PromotionEvent.model_validate_json(msg.body)
        except ValidationError as e:
            log.error("not a PromotionEvent; skipped", extra={"err": str(e)})
            await msg.ack()
            return
        await trigger.on_promotion(ev)
        await msg.ack()

    async def tick() -> None:
        d = await trigger.tick()
        if d is not None and d.take:
            log.info("decision on a tick", extra={"why": d.reason})

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with router.lifespan_context(app):
            await trigger.resume()
            ticker = asyncio.create_task(
                every(settings.tick_s, tick, "deciding on a tick", metrics.tick_failures.inc)
            )
            yield
            ticker.cancel()
            for task in list(trigger.followers.values()):
                task.cancel()  # the run goes on in its worker; a restart re-attaches

    app = FastAPI(title="ctrain trigger", version="0.1.0", lifespan=lifespan)
    app.include_router(router)
    app.add_route("/metrics", metrics_endpoint(registry), methods=["GET"])

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        reason = await health(redis, router.broker)
        if reason:
            return JSONResponse({"status": "down", "reason": reason}, 503)
        return JSONResponse({"status": "ok", "runs_in_flight": len(trigger.followers)})

    @app.post("/v1/trigger")
    async def manual(req: TriggerRequest) -> JSONResponse:
        d, run_id = await trigger.manual(req.reason)
        body: dict[str, Any] = {"started": d.take, "reason": d.reason, "run_id": run_id}
        return JSONResponse(body, 202 if d.take else 409)

    @app.get("/v1/decisions")
    async def decisions(count: int = 50) -> JSONResponse:
        return JSONResponse({"model": settings.model, "decisions": await trigger.decisions(count)})

    @app.get("/v1/state")
    async def state() -> JSONResponse:
        return JSONResponse(await trigger.state_view())

    @app.get("/v1/runs")
    async def runs(count: Annotated[int, Query(ge=1, le=500)] = 20) -> JSONResponse:
        return JSONResponse({"model": settings.model, "runs": await trigger.runs(count)})

    @app.get("/v1/runs/{run_id}")
    async def run(run_id: str) -> JSONResponse:
        view = await trigger.run(run_id)
        if view is None:
            return JSONResponse({"detail": f"no run {run_id!r} of model {settings.model!r}"}, 404)
        return JSONResponse(view)

    app.state.trigger = trigger
    return app
