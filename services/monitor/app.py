"""Wiring: ``create_app(settings)`` -> FastAPI app with two FastStream subscribers.

``ctrain.validations`` (each judged period's shards indexed for the label join, then
scored by the stable version), one record at a time, and ``ctrain.labels`` (labels joined
to their examples, :mod:`services.monitor.labeljoin`), a batch at a time, each through the
one consumer every service uses (:mod:`shared.consume`): a serving or Redis outage holds
the record (or batch) and retries it without limit; a record that is not an event, and a
label the join refuses, goes to ``ctrain.events.dlq`` at once, with its reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse, Response
from faststream.kafka.fastapi import KafkaMessage

from services.monitor.core import Monitor
from services.monitor.data import ModelView
from services.monitor.errors import MonitorError
from services.monitor.labeljoin import JoinModel, LabelJoin, Source
from services.monitor.labelstate import LabelState
from services.monitor.metrics import MonitorMetrics
from services.monitor.serving import Scorer
from services.monitor.settings import MonitorSettings
from services.monitor.store import QualityStore
from shared import contract, topics
from shared import labels as lb
from shared.artifacts import ArtifactStore
from shared.config import Labels, config_of, model_settings
from shared.consume import Consumer, InvalidEvent, Record, decode
from shared.events import EventDeadLetter, LabelRecord, WindowScored, WindowValidated
from shared.kafka import (
    BrokerEpoch,
    batches_of_events,
    event_dead_letters,
    health,
    make_router,
    one_event_at_a_time,
    topic_group,
)
from shared.lease import Leadership, instance_name
from shared.metrics import Readiness, new_registry
from shared.periodic import every
from shared.redis import make_redis
from shared.serve import service_app, service_routes
from shared.settings import CommonSettings, SettingsError

log = logging.getLogger(__name__)


def view_of(
    name: str,
    stream: str,
    module_path: str,
    task: str,
    s: MonitorSettings,
    labels: Labels | None = None,
) -> ModelView:
    """A model as the monitor sees it: its settings and what its module declares."""
    if not module_path:
        raise SettingsError(
            f"model {name!r}: the monitor needs its module (CTRAIN_MONITOR_MODULE_PATH, or "
            "CTRAIN_CONFIG naming a models file)"
        )
    module = contract.import_module(module_path)
    problems = contract.check_module(module)
    if problems:
        raise contract.ContractError(f"model module {module_path}", problems)
    return ModelView(
        name=name,
        stream=stream,
        task=task,
        label_key=str(module.LABEL_KEY),
        raw_label_features=tuple(module.RAW_LABEL_FEATURES),
        slices=tuple(tuple(x) for x in getattr(module, "SLICES", [])),
        output_key=contract.output_key(module, task),
        threshold=s.threshold,
        coverage_steps=tuple(s.coverage_steps),
        example_id_field=labels.id_field if labels else "",
        slice_min_examples=s.slice_min_examples,
        label_features=lb.label_features(module),
    )


def join_model(view: ModelView, labels: Labels | None) -> JoinModel:
    spec = labels or Labels()
    return JoinModel(
        name=view.name,
        stream=view.stream,
        features=view.label_features,
        id_field=spec.id_field,
        horizon_s=spec.horizon_s,
        early_tolerance_s=spec.early_tolerance_s,
    )


def models_of(
    common: CommonSettings, settings: MonitorSettings
) -> dict[str, tuple[ModelView, JoinModel]]:
    cfg = config_of(common)
    if cfg is None:
        s = settings
        view = view_of(s.model, s.stream or s.model, s.module_path, s.task, s)
        return {s.model: (view, join_model(view, None))}
    per = model_settings(cfg, settings, lambda m: m.quality.given())
    out = {}
    for name, m in cfg.models.items():
        view = view_of(name, m.stream, m.module, m.task, per[name], m.labels)
        out[name] = (view, join_model(view, m.labels))
    return out


def create_app(common: CommonSettings, settings: MonitorSettings) -> FastAPI:
    registry = new_registry()
    metrics = MonitorMetrics(registry)
    both = models_of(common, settings)
    models = {n: v for n, (v, _) in both.items()}
    metrics.touch(list(models))
    redis = make_redis(common)
    router = make_router(common)
    scorer = Scorer(
        common.serving_grpc, settings.batch_rows, settings.in_flight, settings.serving_timeout_s
    )

    async def publish(e: WindowScored) -> None:
        await router.broker.publish(e.to_bytes(), topic=topics.QUALITY, key=e.key)

    async def dead_letter(letter: EventDeadLetter) -> None:
        await router.broker.publish(letter.to_bytes(), topic=topics.EVENTS_DLQ, key=letter.key)

    store = ArtifactStore(common.artifact_root)
    join = LabelJoin(
        {n: j for n, (_, j) in both.items()},
        store,
        LabelState(redis),
        dead_letter,
        lambda model, outcome, n: metrics.labels.labels(model, outcome).inc(n),
        group_id=topic_group(settings.group_id, topics.LABELS),
    )
    monitor = Monitor(models, store, QualityStore(redis), scorer, metrics, publish, join)
    join.on_joined = monitor.on_joined
    sink = event_dead_letters(router.broker, "monitor", settings.group_id)
    windows_in = Consumer(
        topics.VALIDATIONS, metrics.consumer, sink, max_attempts=settings.max_attempts
    )
    labels_in = Consumer(topics.LABELS, metrics.consumer, sink, max_attempts=settings.max_attempts)
    epoch = BrokerEpoch(common)
    ready = Readiness(
        registry,
        "monitor",
        lambda: health(redis, router.broker, windows_in.outage, labels_in.outage, epoch=epoch),
    )

    async def on_validation_body(body: bytes) -> None:
        await monitor.on_validation(decode(WindowValidated, body))

    @one_event_at_a_time(router, topics.VALIDATIONS, settings.group_id)
    async def on_validation(msg: KafkaMessage) -> None:
        await windows_in.consume(msg, on_validation_body)

    async def join_batch(records: list[Record]) -> None:
        batch = []
        for r in records:
            try:
                rec = decode(LabelRecord, r.body)
            except InvalidEvent as e:
                await labels_in.reject(r, e)
                continue
            batch.append(
                (rec, Source(r.topic, r.partition, r.offset, r.body.decode("utf-8", "replace")))
            )
        await join.join(batch)

    @batches_of_events(router, topics.LABELS, settings.group_id, settings.label_batch_records)
    async def on_labels(msg: KafkaMessage) -> None:
        await labels_in.consume_batch(msg, join_batch)

    leadership = Leadership(
        redis,
        "monitor",
        list(models),
        ttl_s=common.lease_ttl_s,
        holder=instance_name(common.instance),
        gauge=metrics.leader,
    )

    async def expire() -> None:
        # Joining and scoring run on every replica (claims make them safe to share);
        # giving up on held labels is the leader's, one replica per model.
        await join.expire(only=[m for m in models if leadership.leads(m)])
        for name in models:
            metrics.pending.labels(name).set(await join.state.pending_count(name))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with router.lifespan_context(app):
            leading = asyncio.create_task(leadership.run())
            upkeep = asyncio.create_task(
                every(30, expire, "expiring held labels", metrics.timer_failures.inc)
            )
            readiness = asyncio.create_task(every(5, ready, "checking readiness"))
            try:
                yield
            finally:
                upkeep.cancel()
                readiness.cancel()
                leading.cancel()
                await leadership.release()
                await scorer.close()
                await epoch.close()

    app = service_app("ctrain monitor", lifespan)
    app.include_router(router)
    service_routes(app, registry, ready, MonitorError, ok={"models": sorted(models)})

    @app.get("/v1/quality")
    async def quality_over_windows(
        model: Annotated[str | None, Query(max_length=63)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> JSONResponse:
        """The serving model's quality on the latest windows (newest first)."""
        name = model or (next(iter(models)) if len(models) == 1 else None)
        if name is None:
            return JSONResponse(
                {"error": "BadRequest", "detail": f"name a model: {', '.join(sorted(models))}"},
                400,
            )
        return JSONResponse({"model": name, "windows": await monitor.history(name, limit)})

    @app.get("/v1/quality/{window_id}")
    async def quality_of_window(
        window_id: str, model: Annotated[str | None, Query(max_length=63)] = None
    ) -> Response:
        name = model or next(iter(models))
        return Response(
            (await monitor.scored(name, window_id)).to_bytes(), media_type="application/json"
        )

    app.state.monitor = monitor
    app.state.join = join
    app.state.registry = registry
    return app
