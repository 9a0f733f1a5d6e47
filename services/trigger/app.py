"""Wiring: ``create_app(settings)`` -> FastAPI app with a FastStream subscriber.

Records are consumed the one way every service consumes (:mod:`shared.consume`):
a validation is committed once its decision is recorded (and its run submitted);
an outage (Redis, the broker, the KFP API) holds it and retries without limit.
Handling it again is harmless: a seen window is skipped, and a run id is claimed in
Redis before submission, submitted again while the claim has no backend run id.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse
from faststream.kafka.fastapi import KafkaMessage
from pydantic import BaseModel, Field

from services.trigger.backends import Backend, KfpBackend, LocalBackend
from services.trigger.config import TriggerConfig, policy_from
from services.trigger.core import Trigger
from services.trigger.errors import TriggerError, UnknownModel
from services.trigger.metrics import TriggerMetrics
from services.trigger.pipeline import ComponentImages, compile_pipeline
from services.trigger.settings import TriggerSettings
from services.trigger.warm import WarmProcess
from shared import contract, topics
from shared.artifacts import ArtifactStore
from shared.config import Labels, config_of, model_settings
from shared.consume import Consumer, decode
from shared.events import (
    Event,
    ModelCandidate,
    PromotionEvent,
    TrainingRun,
    WindowScored,
    WindowValidated,
)
from shared.kafka import (
    BrokerEpoch,
    event_dead_letters,
    health,
    make_router,
    one_event_at_a_time,
)
from shared.labels import label_features
from shared.lease import Leadership, instance_name
from shared.metrics import Readiness, new_registry
from shared.periodic import every
from shared.redis import make_redis
from shared.schema import SchemaError, load_schema
from shared.serve import service_app, service_routes
from shared.settings import CommonSettings, SettingsError

log = logging.getLogger(__name__)


class TriggerRequest(BaseModel):
    reason: str = Field(default="manual", max_length=200, description="Why an operator asks.")


def make_backend(s: TriggerSettings) -> Backend:
    if s.backend == "local":
        return LocalBackend(
            fault_file=s.local_fault_file or None,
            step_worker=WarmProcess() if s.warm_worker else None,
        )
    if not s.kfp_host:
        raise SettingsError("backend=kfp needs CTRAIN_TRIGGER_KFP_HOST")
    package = s.pipeline_package or compile_pipeline(
        tempfile.mkstemp(suffix=".yaml", prefix="ctrain-pipeline-")[1],
        ComponentImages(base_image=s.base_image, trainer_gpus=s.trainer_gpus),
    )
    return KfpBackend(s.kfp_host, package, s.kfp_namespace or None, s.kfp_token or None)


@dataclass(frozen=True)
class ModelSetup:
    """One model this trigger trains: its stream, code, schema and effective settings."""

    model: str
    stream: str
    module_path: str
    schema_path: str
    settings: TriggerSettings
    task: str = "binary"
    labels: Labels | None = None


def models_from(common: CommonSettings, settings: TriggerSettings) -> list[ModelSetup]:
    cfg = config_of(common)
    if cfg is None:
        if not settings.module_path:
            raise SettingsError(
                "trigger needs CTRAIN_CONFIG (a models file) or CTRAIN_TRIGGER_MODULE_PATH "
                "(the model module file)"
            )
        stream = settings.stream or settings.model
        return [
            ModelSetup(
                settings.model,
                stream,
                settings.module_path,
                common.schema_path,
                settings,
                settings.task,
            )
        ]
    per = model_settings(cfg, settings, lambda m: m.trigger.given())
    return [
        ModelSetup(name, m.stream, m.module, m.schema_path, per[name], m.task, m.labels)
        for name, m in cfg.models.items()
    ]


def check_models(setups: list[ModelSetup], store: ArtifactStore) -> None:
    """Refuse to start on a module or schema that breaks the contract (docs/models.md):
    a broken module is reported now, not by a failed step minutes into a run. The
    TFMA configs the module builds are checked too; importing TFMA takes seconds, so a
    module whose exact bytes passed before (a restart) is not built again."""
    for s in setups:
        try:
            schema = load_schema(s.schema_path) if s.schema_path else None
            passed = store.uri("checks", f"{contract.sha256_file(s.module_path)}.ok")
            fresh = not store.exists(passed)
            contract.check(s.module_path, schema, eval_configs=fresh)
            _check_labels(s)
            if fresh:
                store.write_bytes(passed, s.module_path.encode())
        except (contract.ContractError, SchemaError) as e:
            raise SettingsError(f"model {s.model!r}: {e}") from e


def _check_labels(s: ModelSetup) -> None:
    """A default must give exactly the label features the module's label needs."""
    if s.labels is None or s.labels.label_default is None:
        return
    names = label_features(contract.import_module(s.module_path))
    given = set(s.labels.label_default)
    if given != set(names):
        raise SettingsError(
            f"model {s.model!r}: labels.label_default gives {', '.join(sorted(given)) or 'nothing'}"
            f"; the module's label features are {', '.join(names)}"
        )


def create_app(common: CommonSettings, settings: TriggerSettings) -> FastAPI:
    setups = models_from(common, settings)
    store = ArtifactStore(common.artifact_root)
    check_models(setups, store)
    registry = new_registry()
    metrics = TriggerMetrics(registry)
    redis = make_redis(common)
    router = make_router(common)
    backend = make_backend(settings)

    async def publish(event: Event) -> None:
        topic = topics.CANDIDATES if isinstance(event, ModelCandidate) else topics.TRAINING
        assert isinstance(event, ModelCandidate | TrainingRun)
        await router.broker.publish(event.to_bytes(), topic=topic, key=event.key)

    leadership = Leadership(
        redis,
        "trigger",
        [s.model for s in setups],
        ttl_s=common.lease_ttl_s,
        holder=instance_name(common.instance),
        gauge=metrics.leader,
    )
    triggers = {
        s.model: Trigger(
            redis=redis,
            store=store,
            backend=backend,
            metrics=metrics,
            config=TriggerConfig(
                model=s.model,
                module_path=s.module_path,
                schema_path=s.schema_path,
                policy=policy_from(s.settings, s.labels),
                epochs=s.settings.epochs,
                blocking=tuple(s.settings.blocking_anomalies),
                task=s.task,
                label_features=label_features(contract.import_module(s.module_path)),
                label_default=s.labels.label_default if s.labels else None,
                beam_args=tuple(s.settings.beam_args),
            ),
            publish=publish,
            lease=leadership.lease(s.model),
        )
        for s in setups
    }

    async def gained(model: str) -> None:
        await triggers[model].resume()  # follow the run the last leader left in flight
        await triggers[model].tick()  # and start what a replica left to the leader

    async def lost(model: str) -> None:
        triggers[model].stop_following()  # the new leader follows its runs

    leadership.on_gain, leadership.on_loss = gained, lost
    # Validations are routed by their stream: another stream's drift is not this model's.
    by_stream = {s.stream: triggers[s.model] for s in setups}

    def pick(model: str | None) -> Trigger:
        if model is None:
            if len(triggers) == 1:
                return next(iter(triggers.values()))
            raise UnknownModel(
                f"name the model (?model=...); this trigger trains {', '.join(sorted(triggers))}",
                400,
            )
        if model not in triggers:
            raise UnknownModel(
                f"no model {model!r}; this trigger trains {', '.join(sorted(triggers))}", 404
            )
        return triggers[model]

    async def handle_validation(body: bytes) -> None:
        v = decode(WindowValidated, body)
        trigger = by_stream.get(v.stream)
        if trigger is None:
            metrics.foreign.inc()
            return
        d = await trigger.on_validation(v)
        if d is not None:
            log.info(
                "decision",
                extra={
                    "model": trigger.config.model,
                    "window": v.window_id,
                    "take": d.take,
                    "why": d.reason,
                },
            )

    async def handle_quality(body: bytes) -> None:
        ev = decode(WindowScored, body)
        if ev.model in triggers:
            await triggers[ev.model].on_quality(ev)

    async def handle_promotion(body: bytes) -> None:
        ev = decode(PromotionEvent, body)
        if ev.model in triggers:
            await triggers[ev.model].on_promotion(ev)

    dead_letters = event_dead_letters(router.broker, "trigger", settings.group_id)
    validations_in = Consumer(topics.VALIDATIONS, metrics.consumer, dead_letters)
    promotions_in = Consumer(topics.PROMOTIONS, metrics.consumer, dead_letters)
    quality_in = Consumer(topics.QUALITY, metrics.consumer, dead_letters)
    epoch = BrokerEpoch(common)
    ready = Readiness(
        registry,
        "trigger",
        lambda: health(
            redis,
            router.broker,
            validations_in.outage,
            promotions_in.outage,
            quality_in.outage,
            epoch=epoch,
        ),
    )

    @one_event_at_a_time(router, topics.VALIDATIONS, settings.group_id)
    async def on_validation(msg: KafkaMessage) -> None:
        await validations_in.consume(msg, handle_validation)

    @one_event_at_a_time(router, topics.PROMOTIONS, settings.group_id)
    async def on_promotion(msg: KafkaMessage) -> None:
        await promotions_in.consume(msg, handle_promotion)

    @one_event_at_a_time(router, topics.QUALITY, settings.group_id)
    async def on_quality(msg: KafkaMessage) -> None:
        await quality_in.consume(msg, handle_quality)

    async def tick() -> None:
        for model, trigger in triggers.items():
            d = await trigger.tick()
            if d is not None and d.take:
                log.info("decision on a tick", extra={"model": model, "why": d.reason})

    async def serve_requests() -> None:
        for trigger in triggers.values():
            await trigger.serve_requests()

    def followers() -> list[asyncio.Task[None]]:
        return [t for tr in triggers.values() for t in tr.followers.values()]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with router.lifespan_context(app):
            warm = getattr(backend, "step_worker", None)
            if warm is not None:
                warm.ensure()  # imports TensorFlow while nothing waits for it yet
            await leadership.step()  # lead before the first record, when nobody else does
            leading = asyncio.create_task(leadership.run())
            ticker = asyncio.create_task(
                every(settings.tick_s, tick, "deciding on a tick", metrics.tick_failures.inc)
            )
            readiness = asyncio.create_task(every(5, ready, "checking readiness"))
            relaying = asyncio.create_task(every(0.5, serve_requests, "answering requests"))
            yield
            relaying.cancel()
            ticker.cancel()
            readiness.cancel()
            leading.cancel()
            await leadership.release()  # another replica leads at its next renewal
            await epoch.close()
            for task in followers():
                task.cancel()  # the run goes on in its worker; a restart re-attaches
            if warm is not None:
                warm.stop()

    app = service_app("ctrain trigger", lifespan)
    app.include_router(router)
    service_routes(
        app,
        registry,
        ready,
        TriggerError,
        ok=lambda: {
            "models": sorted(triggers),
            "leads": sorted(m for m in triggers if leadership.leads(m)),
            "runs_in_flight": len(followers()),
        },
    )

    @app.get("/v1/leaders")
    async def leaders() -> JSONResponse:
        """Which replica leads each model (starts its runs), and this one's name."""
        return JSONResponse({"this": leadership.holder, "leaders": await leadership.leaders()})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse(
            {
                "models": [
                    {"model": s.model, "stream": s.stream, "module": s.module_path} for s in setups
                ]
            }
        )

    @app.post("/v1/trigger")
    async def manual(req: TriggerRequest, model: str | None = None) -> JSONResponse:
        trigger = pick(model)
        d, run_id = await trigger.manual(req.reason)
        body: dict[str, Any] = {
            "model": trigger.config.model,
            "started": d.take,
            "reason": d.reason,
            "run_id": run_id,
        }
        if d.guard == "leader":
            # The leader did not answer in time: the request stays recorded for it.
            body["leader"] = await leadership.lease(trigger.config.model).leader()
            return JSONResponse(body, 202)
        return JSONResponse(body, 202 if d.take else 409)

    @app.get("/v1/decisions")
    async def decisions(count: int = 50, model: str | None = None) -> JSONResponse:
        trigger = pick(model)
        return JSONResponse(
            {"model": trigger.config.model, "decisions": await trigger.decisions(count)}
        )

    @app.get("/v1/state")
    async def state(model: str | None = None) -> JSONResponse:
        return JSONResponse(await pick(model).state_view())

    @app.get("/v1/runs")
    async def runs(
        count: Annotated[int, Query(ge=1, le=500)] = 20, model: str | None = None
    ) -> JSONResponse:
        trigger = pick(model)
        return JSONResponse({"model": trigger.config.model, "runs": await trigger.runs(count)})

    @app.get("/v1/runs/{run_id}")
    async def run(run_id: str) -> JSONResponse:
        """A run by its id or a unique prefix of it, whichever model it belongs to."""
        for trigger in triggers.values():
            view = await trigger.run(run_id)
            if view is not None:
                return JSONResponse(view)
        matches = [
            (t, rid)
            for t in (triggers.values() if len(run_id) >= 4 else [])
            for rid in await t.run_ids_with_prefix(run_id)
        ]
        if len(matches) == 1:
            return JSONResponse(await matches[0][0].run(matches[0][1]))
        if matches:
            ids = ", ".join(rid for _, rid in matches[:5])
            return JSONResponse(
                {"detail": f"{run_id!r} is ambiguous: it starts {len(matches)} runs ({ids})"}, 400
            )
        return JSONResponse(
            {"detail": f"no run {run_id!r} of model(s) {', '.join(sorted(triggers))}"}, 404
        )

    app.state.triggers = triggers
    return app
