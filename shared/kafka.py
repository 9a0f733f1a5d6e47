"""Kafka clients: FastStream broker, aiokafka producer/consumer, topic admin.

Producers use ``acks=all``; idempotence follows ``CTRAIN_KAFKA_IDEMPOTENT``.
Consumers never auto-commit: each service commits explicitly once what depends
on an offset is durable (docs/architecture.md §4, §10).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shared import topics
from shared.settings import CommonSettings

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def make_producer(settings: CommonSettings, **overrides: Any) -> AIOKafkaProducer:
    opts: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "acks": "all",
        "enable_idempotence": settings.kafka_idempotent,
        "linger_ms": 5,
        "max_batch_size": 1 << 20,
        "max_request_size": MAX_MESSAGE_BYTES + 65536,
        "compression_type": None,
    }
    opts.update(overrides)
    return AIOKafkaProducer(**opts)


def make_consumer(
    settings: CommonSettings, group_id: str, *topic_names: str, **overrides: Any
) -> AIOKafkaConsumer:
    opts: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": 8 << 20,
        "fetch_max_bytes": 32 << 20,
        "isolation_level": "read_uncommitted",
    }
    opts.update(overrides)
    return AIOKafkaConsumer(*topic_names, **opts)


class SourceOffsets:
    """Log end offsets of a topic's partitions, read with a group-less consumer that is
    started on first use (nothing connects at import or construction time)."""

    def __init__(self, settings: CommonSettings) -> None:
        self.settings = settings
        self._consumer: AIOKafkaConsumer | None = None

    async def end_offsets(self, topic: str) -> dict[int, int]:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False
            )
            await consumer.start()
            self._consumer = consumer
        await self._consumer.topics()  # refreshes metadata: partitions may have been added
        parts = self._consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return {}
        ends = await self._consumer.end_offsets(tps)
        return {tp.partition: int(off) for tp, off in ends.items()}

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


async def write_epoch(settings: CommonSettings) -> bool:
    """Create ``ctrain.epoch`` and write its one record, unless it has one; True when
    written. Only the dev stack does: its embedded broker keeps every topic in memory."""
    await ensure_topics(settings, (topics.EPOCH,), partitions=1)
    offsets = SourceOffsets(settings)
    try:
        if sum((await offsets.end_offsets(topics.EPOCH)).values()):
            return False
    finally:
        await offsets.close()
    producer = make_producer(settings)
    await producer.start()
    try:
        body = orjson.dumps({"epoch": uuid.uuid4().hex, "written_at": time.time()})
        await producer.send_and_wait(topics.EPOCH, body, partition=0)
    finally:
        await producer.stop()
    return True


class BrokerEpoch:
    """Notices a broker that came back without its data: ``ctrain.epoch`` had its record
    when first looked at and has none (or no topic) now. A broker that never had one (a
    production cluster: nothing writes it there) is never judged."""

    LOST = (
        "the Kafka broker lost its data: its ctrain.epoch record is gone, so topics, "
        "committed offsets and ingest's checkpoints no longer agree (the dev stack's "
        "embedded broker keeps everything in memory and restarted?); run `ctrain dev reset`"
    )

    def __init__(self, settings: CommonSettings) -> None:
        self.offsets = SourceOffsets(settings)
        self.seen: bool | None = None  # None: not looked yet

    async def lost(self) -> str | None:
        """Why the broker is not the one this service started with, or None."""
        try:
            have = sum((await self.offsets.end_offsets(topics.EPOCH)).values()) > 0
        except Exception:  # noqa: BLE001 - an unreachable broker is health()'s to report
            await self.offsets.close()
            return None
        if self.seen is None:
            self.seen = have
        return self.LOST if self.seen and not have else None

    async def close(self) -> None:
        await self.offsets.close()


async def read_to_end(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic`` from the beginning up to its end offsets now (no group,
    nothing committed): for tools and tests that look at a topic's history."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        await consumer.topics()  # fetches the cluster's metadata
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                out.extend(recs)
        return out
    finally:
        await consumer.stop()


async def ensure_topics(
    settings: CommonSettings, names: tuple[str, ...] = topics.ALL, partitions: int | None = None
) -> list[str]:
    """Create missing topics; returns the ones it created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        n_part = partitions or settings.kafka_partitions
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(n, n_part, settings.kafka_replication) for n in missing]
                )
            except TopicAlreadyExistsError:
                log.info("topics created concurrently", extra={"topics": missing})
        return missing
    finally:
        await admin.close()


async def start_subscribers_together(broker: Any) -> None:
    """Start a FastStream broker's subscribers concurrently, then its publishers.

    FastStream starts them one after another, and an aiokafka consumer's start waits
    until its group has assigned it partitions (a JoinGroup and a SyncGroup round: ~5 s
    on the embedded broker). With a group per topic (``topic_group``) the joins are
    independent, so a service reading three topics was ready after three joins in a row
    (the trigger took ~15 s to start); together it waits for the slowest one."""
    await broker.connect()
    await asyncio.gather(*(sub.start() for sub in broker.subscribers))
    for pub in broker.publishers:
        await pub.start()
    broker.running = True


def make_router(settings: CommonSettings) -> Any:
    """A FastStream router for a FastAPI app, with ctrain's producer defaults; its
    subscribers start together (``start_subscribers_together``)."""
    from faststream.kafka import KafkaBroker
    from faststream.kafka.fastapi import KafkaRouter

    class TogetherBroker(KafkaBroker):
        async def start(self) -> None:
            await start_subscribers_together(self)

    class Router(KafkaRouter):
        broker_class = TogetherBroker

    return Router(
        settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=settings.kafka_idempotent,
        schema_url=None,
        include_in_schema=False,
    )


def topic_group(group_id: str, topic: str) -> str:
    """The consumer group of one service on one topic: ``<group_id>.<topic>``.

    One group per topic rather than one per service: a consumer's start waits until its
    group has assigned it partitions, and every member that joins a group makes all of
    that group's members rejoin. With the service's consumers in one group, each of a
    starting replica's subscribers re-shuffled the others in turn (the trigger took
    ~20 s to start, and a rolling restart kept the promoters' group rebalancing); with
    a group per topic, a join touches only the consumers of that topic."""
    return f"{group_id}.{topic}"


def one_event_at_a_time(router: Any, topic: str, group_id: str) -> Any:
    """Subscriber decorator for services whose unit of work is one event.

    Acknowledgement is manual (docs/architecture.md §10: never ACK_FIRST): the handler commits
    after its effects are durable; one record per poll keeps that commit exact.
    """
    from faststream import AckPolicy

    return router.subscriber(
        topic,
        group_id=topic_group(group_id, topic),
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        max_poll_records=1,
        include_in_schema=False,
    )


def batches_of_events(router: Any, topic: str, group_id: str, max_records: int) -> Any:
    """Subscriber decorator for a topic whose records are handled a batch at a time (the
    label join: one write per shard per batch instead of per record). Acknowledgement is
    manual and commits the whole batch once its effects are durable."""
    from faststream import AckPolicy

    return router.subscriber(
        topic,
        group_id=topic_group(group_id, topic),
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        batch=True,
        max_records=max_records,
        include_in_schema=False,
    )


def event_dead_letters(broker: Any, service: str, group_id: str) -> Any:
    """The dead-letter sink of a service's event consumers: an ``EventDeadLetter`` on
    ``ctrain.events.dlq``, its id fixed by the source record (a retry publishes the
    same id, which ``ctrain dlq`` counts once)."""
    from shared.consume import Record
    from shared.events import DlqSource, EventDeadLetter

    async def sink(rec: Record, reason: str, message: str) -> None:
        letter = EventDeadLetter(
            id=f"edlq-{service}-{rec.topic}-{rec.partition}-{rec.offset}",
            reason=reason,
            message=message,
            source=DlqSource(topic=rec.topic, partition=rec.partition, offset=rec.offset),
            payload=rec.body.decode("utf-8", "replace"),
            service=service,
            group_id=topic_group(group_id, rec.topic),
        )
        await broker.publish(letter.to_bytes(), topic=topics.EVENTS_DLQ, key=letter.key)

    return sink


async def health(
    redis: Any, broker: Any, *held_by: str | None, epoch: BrokerEpoch | None = None
) -> str | None:
    """None when Redis and the broker answer, the broker still has the data it had (its
    ``epoch``) and no consumer waits on an outage (``held_by``: what each one waits on),
    else why not (for /healthz)."""
    for why in held_by:
        if why:
            return why
    try:
        await redis.ping()
        if not await broker.ping(timeout=2):
            return "Kafka broker does not answer"
    except Exception as e:  # noqa: BLE001 - health reports, it does not raise
        return f"{type(e).__name__}: {e}"
    return await epoch.lost() if epoch is not None else None
