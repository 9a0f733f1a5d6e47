"""Wiring: ``create_app(settings)`` builds the FastAPI app; nothing connects at import.

Lifespan: start the producer and consumer, run the poll loop as a task; on
shutdown (uvicorn turns SIGTERM into it) stop polling, make the DLQ durable,
checkpoint and commit, leave the group, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.ingest.core import Ingestor, dead_letter
from services.ingest.decode import Decoder, DecoderConfig, Rejected
from services.ingest.errors import BodyTooLarge, IngestError, NotReady, UnknownStream
from services.ingest.gc_tuning import gc_tuned
from services.ingest.kafka_io import ConsumeLoop, KafkaSink
from services.ingest.metrics import IngestMetrics
from services.ingest.settings import IngestSettings
from services.ingest.streams import Streams
from services.ingest.windowing import WindowPolicy
from shared import contract, topics
from shared.artifacts import ArtifactStore
from shared.config import ModelSpec, config_of, model_settings
from shared.kafka import BrokerEpoch, make_consumer, make_producer
from shared.labels import label_features
from shared.metrics import new_registry
from shared.schema import example_spec, load_schema
from shared.serve import service_app, service_routes
from shared.settings import CommonSettings, SettingsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamSetup:
    """One stream this process windows: where it arrives and how it is cut."""

    stream: str
    topic: str
    schema_path: str
    settings: IngestSettings
    # Label features its examples may arrive without (labels joined from their stream).
    optional: tuple[str, ...] = ()


def streams_from(common: CommonSettings, settings: IngestSettings) -> list[StreamSetup]:
    """Every model's stream from the models file, or the one stream of the environment."""
    cfg = config_of(common)
    if cfg is None:
        if not common.schema_path:
            raise SettingsError(
                "ingest needs CTRAIN_CONFIG (a models file) or CTRAIN_SCHEMA (path of schema.pbtxt)"
            )
        return [StreamSetup(settings.stream, topics.EXAMPLES, common.schema_path, settings)]
    per = model_settings(cfg, settings, lambda m: m.windows.given())
    return [
        StreamSetup(m.stream, m.topic, m.schema_path, per[name], _optional(m))
        for name, m in cfg.models.items()
    ]


def _optional(m: ModelSpec) -> tuple[str, ...]:
    if m.labels.source != "stream":
        return ()
    return label_features(contract.import_module(m.module))


def decoder_from(schema_path: str, s: IngestSettings, optional: tuple[str, ...] = ()) -> Decoder:
    return Decoder(
        example_spec(load_schema(schema_path), optional=optional),
        DecoderConfig(
            max_bytes=s.max_example_bytes,
            reject_unknown=s.reject_unknown_features,
            event_time_field=s.event_time_field,
            event_time_unit=s.event_time_unit,
            max_future_ms=int(s.max_future_s * 1000),
        ),
    )


def policy_from(s: IngestSettings) -> WindowPolicy:
    return WindowPolicy(
        max_count=s.window_max_count,
        duration_ms=int(s.window_duration_s * 1000) if s.window_duration_s else None,
        allowed_lateness_ms=int(s.allowed_lateness_s * 1000),
    )


def create_app(common: CommonSettings, settings: IngestSettings) -> FastAPI:
    registry = new_registry()
    metrics = IngestMetrics(registry)
    setups = streams_from(common, settings)
    decoders = {s.stream: decoder_from(s.schema_path, s.settings, s.optional) for s in setups}
    topic_of = {s.stream: s.topic for s in setups}
    store = ArtifactStore(common.artifact_root)
    state: dict[str, Any] = {}
    epoch = BrokerEpoch(common)

    def build(sink: KafkaSink) -> Streams:
        return Streams(
            {
                s.topic: Ingestor(
                    stream=s.stream,
                    decoder=decoders[s.stream],
                    policy=policy_from(s.settings),
                    store=store,
                    sink=sink,
                    metrics=metrics,
                    batch_rows=s.settings.batch_rows,
                    idle_timeout_s=s.settings.idle_timeout_s,
                )
                for s in setups
            }
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        producer = make_producer(common)
        await producer.start()
        consumer = make_consumer(common, settings.group_id)
        streams = build(KafkaSink(producer))
        loop = ConsumeLoop(consumer, streams, settings.poll_max_records)
        loop.subscribe()
        await consumer.start()
        task = asyncio.create_task(loop.run(), name="ingest-poll")
        state.update(producer=producer, loop=loop, task=task)
        await epoch.lost()  # what the broker holds now: /healthz says when that is lost
        log.info(
            "ingest started",
            extra={"streams": {s.stream: s.topic for s in setups}, "group": settings.group_id},
        )
        try:
            with gc_tuned(settings.gc_young_threshold):
                yield
        finally:
            loop.stop()
            try:
                await task
            finally:
                await loop.drain()
                await consumer.stop()
                await producer.stop()
                await epoch.close()
                log.info("ingest stopped cleanly")

    app = service_app("ctrain ingest", lifespan)
    app.state.metrics = metrics
    app.state.registry = registry

    async def why_not_ready() -> str | None:
        loop: ConsumeLoop | None = state.get("loop")
        task: asyncio.Task[None] | None = state.get("task")
        if loop is None or task is None or task.done():
            if task is not None and task.done() and task.exception() is not None:
                return f"poll loop failed: {task.exception()!r}"
            return "poll loop not running"
        return await epoch.lost()

    def partitions() -> dict[str, int]:
        loop: ConsumeLoop | None = state.get("loop")
        return {"partitions": len(loop.ingestor.parts) if loop is not None else 0}

    service_routes(app, registry, why_not_ready, IngestError, ok=partitions)

    @app.post("/v1/examples")
    async def post_examples(request: Request, stream: str | None = None) -> JSONResponse:
        """JSON lines in; valid lines go to the stream's topic, invalid ones to the DLQ.

        Answers with the outcome of every line, so a client knows which to fix.
        ``stream`` may be left out when this ingest serves one stream.
        """
        if stream is None and len(decoders) == 1:
            stream = next(iter(decoders))
        if stream not in decoders:
            raise UnknownStream(
                f"no stream {stream!r}; this ingest serves: {', '.join(sorted(decoders))}"
                if stream
                else f"name the stream (?stream=...): this ingest serves "
                f"{', '.join(sorted(decoders))}"
            )
        decoder = decoders[stream]
        producer = state.get("producer")
        if producer is None:
            raise NotReady("ingest is starting; retry shortly")
        body = await request.body()
        if len(body) > settings.http_max_body_bytes:
            raise BodyTooLarge(
                f"body is {len(body)} bytes; the limit is {settings.http_max_body_bytes}"
            )
        now_ms = int(time.time() * 1000)
        # HTTP lines have no offset: a request id keeps their dead letters' ids unique.
        request_id = uuid.uuid4().hex[:16]
        errors: list[dict[str, Any]] = []
        futures = []
        accepted = 0
        lines = body.split(b"\n")
        for i, line in enumerate(lines, start=1):
            if not line.strip() and i == len(lines):
                continue  # the trailing newline
            res = decoder.decode(line.strip(), now_ms, now_ms)
            if isinstance(res, Rejected):
                letter_id = f"dlq-http-{request_id}-{i}"
                errors.append(
                    {
                        "line": i,
                        "reason": res.reason,
                        "message": res.message,
                        "dead_letter_id": letter_id,
                    }
                )
                letter = dead_letter("http", -1, i, None, line, res, letter_id)
                futures.append(await producer.send(topics.EXAMPLES_DLQ, letter.to_bytes()))
                metrics.http_lines.labels("rejected").inc()
                continue
            futures.append(await producer.send(topic_of[stream], line.strip()))
            accepted += 1
            metrics.http_lines.labels("accepted").inc()
        await asyncio.gather(*futures)
        if accepted == 0 and errors:
            return JSONResponse(
                {
                    "request_id": request_id,
                    "accepted": 0,
                    "rejected": len(errors),
                    "errors": errors,
                },
                422,
            )
        return JSONResponse(
            {
                "request_id": request_id,
                "accepted": accepted,
                "rejected": len(errors),
                "errors": errors,
            }
        )

    return app
