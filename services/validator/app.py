"""Wiring: ``create_app(settings)`` -> FastAPI app with a FastStream Kafka subscriber.

The subscriber is thin: parse, call the core, publish, commit, through the one
consumer every service uses (:mod:`shared.consume`): commit after WindowValidated
is published; an outage (Redis, broker) holds the window and retries it without
limit; a window the core cannot validate after ``max_attempts`` (or at once, for
non-retryable errors) goes to ``ctrain.windows.dlq`` with the reason, then is
committed, so one bad window never blocks its partition.
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import orjson
from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response
from faststream.kafka.fastapi import KafkaMessage

from services.validator import statsview
from services.validator.config import config_from
from services.validator.core import Validator, ValidatorConfig
from services.validator.errors import NoBaseline, UnknownWindow, ValidatorError
from services.validator.flow import WindowFlow
from services.validator.index import RedisWindowIndex
from services.validator.metrics import ValidatorMetrics
from services.validator.schemas import SchemaStore
from services.validator.settings import ValidatorSettings
from shared import contract, topics
from shared.artifacts import ArtifactStore
from shared.config import config_of, model_settings
from shared.consume import Consumer, Record
from shared.events import (
    DlqSource,
    WindowDeadLetter,
    WindowValidated,
)
from shared.kafka import BrokerEpoch, SourceOffsets, health, make_router, one_event_at_a_time
from shared.labels import label_features
from shared.metrics import Readiness, new_registry
from shared.periodic import every
from shared.redis import make_redis
from shared.serve import service_app, service_routes
from shared.settings import CommonSettings

log = logging.getLogger(__name__)
View = Literal["ctrain", "facets"]


def create_app(common: CommonSettings, settings: ValidatorSettings) -> FastAPI:
    registry = new_registry()
    metrics = ValidatorMetrics(registry)
    store = ArtifactStore(common.artifact_root)
    redis = make_redis(common)
    offsets = SourceOffsets(common)

    cfg = config_of(common)
    per_stream: dict[str, ValidatorConfig] = {}
    schemas: dict[str, str] = {}
    if cfg is not None:
        per = model_settings(cfg, settings, lambda m: m.validation.given())
        for name, m in cfg.models.items():
            optional = (
                frozenset(label_features(contract.import_module(m.module)))
                if m.labels.source == "stream"
                else frozenset()
            )
            per_stream[m.stream] = config_from(per[name], model=name, optional=optional)
            schemas[m.stream] = m.schema_path
    validator = Validator(
        store=store,
        schemas=SchemaStore(store, common.schema_path, schemas),
        index=RedisWindowIndex(redis),
        metrics=metrics,
        config=config_from(settings),
        redis=redis,
        end_offsets=offsets.end_offsets,
        per_stream=per_stream,
    )
    router = make_router(common)

    async def publish(r: WindowValidated) -> None:
        await router.broker.publish(r.to_bytes(), topic=topics.VALIDATIONS, key=r.key)

    flow = WindowFlow(validator, redis, publish)

    async def dead_letter(rec: Record, reason: str, message: str) -> None:
        metrics.dead_letters.labels(reason).inc()
        try:
            head = orjson.loads(rec.body)
        except orjson.JSONDecodeError:
            head = {}
        head = head if isinstance(head, dict) else {}
        letter = WindowDeadLetter(
            id=f"wdlq-{rec.topic}-{rec.partition}-{rec.offset}",
            reason=reason,
            message=message,
            source=DlqSource(topic=rec.topic, partition=rec.partition, offset=rec.offset),
            payload=rec.body.decode("utf-8", "replace"),
            window_id=head.get("window_id") if isinstance(head.get("window_id"), str) else None,
            stream=head.get("stream") if isinstance(head.get("stream"), str) else None,
        )
        await router.broker.publish(letter.to_bytes(), topic=topics.WINDOWS_DLQ, key=letter.key)

    windows_in = Consumer(
        topics.WINDOWS, metrics.consumer, dead_letter, max_attempts=settings.max_attempts
    )
    epoch = BrokerEpoch(common)
    ready = Readiness(
        registry,
        "validator",
        lambda: health(redis, router.broker, windows_in.outage, epoch=epoch),
    )

    @one_event_at_a_time(router, topics.WINDOWS, settings.group_id)
    async def on_window(msg: KafkaMessage) -> None:
        await windows_in.consume(msg, flow.handle)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with router.lifespan_context(app):
            task = asyncio.create_task(
                every(
                    max(1.0, min(10.0, settings.period_grace_s / 4)),
                    flow.judge_stale_periods,
                    "judging periods after their grace time",
                    metrics.timer_failures.inc,
                )
            )
            readiness = asyncio.create_task(every(5, ready, "checking readiness"))
            try:
                yield
            finally:
                task.cancel()
                readiness.cancel()
                await offsets.close()
                await epoch.close()

    app = service_app("ctrain validator", lifespan)
    app.include_router(router)
    service_routes(app, registry, ready, ValidatorError)

    index = validator.index
    assert isinstance(index, RedisWindowIndex)

    async def find(window_id: str) -> Any:
        ref = await index.get(window_id)
        stream = ref.stream if ref is not None else await index.period_stream(window_id)
        if stream is None:
            raise UnknownWindow(f"window {window_id!r} has not been validated")
        result = validator.load_result(stream, window_id)
        if result is None:
            raise UnknownWindow(f"window {window_id!r}: no stored result")
        return result

    async def baseline_stats(result: WindowValidated, baseline: str) -> tuple[str, Any]:
        """(id, statistics) of a result's drift or skew baseline: one indexed window, or
        the union of several (``base-...``, cached by the validator when it measured)."""
        if baseline not in ("drift", "skew"):
            raise UnknownWindow(f"baseline must be 'drift' or 'skew', not {baseline!r}")
        base_id = result.drift_baseline if baseline == "drift" else None
        if baseline == "skew":
            base_id = next((f.skew.baseline for f in result.features if f.skew is not None), None)
        if not base_id:
            raise NoBaseline(f"window {result.window_id!r} has no {baseline} baseline")
        ref = await index.get(base_id)
        if ref is not None:
            return base_id, validator.load_stats(ref.stats_uri)
        union = store.uri("validations", result.stream, "_baselines", f"{base_id}.pb")
        if store.exists(union):
            return base_id, validator.load_stats(union)
        raise NoBaseline(
            f"baseline {base_id!r} of window {result.window_id!r} is neither indexed nor stored"
        )

    @app.get("/v1/windows")
    async def list_windows(
        stream: Annotated[str, Query(min_length=1, max_length=200)],
        limit: Annotated[int, Query(ge=1, le=500)] = 20,
    ) -> JSONResponse:
        """The latest validated windows of a stream (newest first) with what crossed."""
        out = []
        for ref in await validator.index.latest(stream, limit):
            r = validator.load_result(ref.stream, ref.window_id)
            if r is not None:
                out.append(window_summary(r))
        return JSONResponse({"stream": stream, "windows": out})

    @app.get("/v1/periods")
    async def list_periods(
        stream: Annotated[str, Query(min_length=1, max_length=200)],
        limit: Annotated[int, Query(ge=1, le=500)] = 20,
    ) -> JSONResponse:
        """The latest judged periods of a stream (newest first): the verdicts the trigger
        acts on, each over all its partitions' windows (``members``)."""
        out = []
        for pid in await index.latest_periods(stream, limit):
            r = validator.load_result(stream, pid)
            if r is not None:
                out.append({**window_summary(r), "members": [m.window_id for m in r.members]})
        return JSONResponse({"stream": stream, "periods": out})

    @app.get("/v1/windows/{window_id}/features/{feature}")
    async def feature(window_id: str, feature: str, baseline: str = "drift") -> JSONResponse:
        """One feature's distribution beside its drift or skew baseline's (JSON for charts);
        a window without that baseline (the first) comes with ``baseline: null``."""
        result = await find(window_id)
        stats = validator.load_stats(result.stats_uri)
        try:
            base_id, base = await baseline_stats(result, baseline)
        except NoBaseline:
            base_id, base = None, None
        data = statsview.feature_data(stats, base, feature)
        if data is None:
            raise UnknownWindow(f"window {window_id!r} has no feature {feature!r}")
        return JSONResponse({"window_id": window_id, "baseline_id": base_id, **data})

    @app.get("/v1/windows/{window_id}")
    async def get_window(window_id: str) -> Response:
        result = await find(window_id)
        return Response(result.to_bytes(), media_type="application/json")

    @app.get("/v1/windows/{window_id}/stats.html", response_class=HTMLResponse)
    async def stats_html(window_id: str, view: View = "ctrain") -> HTMLResponse:
        """The window's statistics (``view=facets``: TFDV's Facets page, which loads its
        scripts from a CDN and so needs the network)."""
        result = await find(window_id)
        stats = validator.load_stats(result.stats_uri)
        title = f"Statistics of {window_id}"
        if view == "facets":
            return HTMLResponse(_page(title, _facets(stats, None, window_id, "")))
        return HTMLResponse(statsview.render(stats, None, window_id, title=title))

    @app.get("/v1/windows/{window_id}/compare.html", response_class=HTMLResponse)
    async def compare_html(
        window_id: str, baseline: str = "drift", view: View = "ctrain"
    ) -> HTMLResponse:
        result = await find(window_id)
        base_id, base_stats = await baseline_stats(result, baseline)
        stats = validator.load_stats(result.stats_uri)
        title = f"{window_id} against its {baseline} baseline {base_id}"
        rhs = f"{baseline} baseline {base_id}"
        if view == "facets":
            return HTMLResponse(_page(title, _facets(stats, base_stats, window_id, rhs)))
        return HTMLResponse(statsview.render(stats, base_stats, window_id, rhs, title=title))

    app.state.validator = validator
    app.state.registry = registry
    return app


def window_summary(r: WindowValidated) -> dict[str, Any]:
    """One window for lists and live views: verdict, counts, largest distances first."""
    dists: list[dict[str, Any]] = []
    for f in r.features:
        for kind, d in (("drift", f.drift), ("skew", f.skew)):
            if d is not None and d.value is not None:
                dists.append(
                    {
                        "feature": f.name,
                        "kind": kind,
                        "measure": d.measure,
                        "value": d.value,
                        "threshold": d.threshold,
                        "crossed": d.crossed,
                    }
                )
    dists.sort(key=lambda d: (not d["crossed"], -d["value"] / (d["threshold"] or 1)))
    return {
        "window_id": r.window_id,
        "start": r.window_start.isoformat() if r.window_start else None,
        "end": r.window_end.isoformat() if r.window_end else None,
        "example_count": r.example_count,
        "verdict": r.verdict,
        "anomalies": [a.model_dump() for a in r.anomalies],
        "distances": dists,
    }


def _facets(stats: Any, base: Any, lhs: str, rhs: str) -> str:
    import tensorflow_data_validation as tfdv

    if base is None:
        return str(tfdv.get_statistics_html(stats, lhs_name=lhs))
    return str(tfdv.get_statistics_html(stats, base, lhs_name=lhs, rhs_name=rhs))


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
