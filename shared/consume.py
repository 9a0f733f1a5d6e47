"""One way to consume an event topic (docs/architecture.md §10), for every event-driven service.

A record is decoded, handled, its effects made durable, and only then is its offset
committed. The service subscribes with one record per poll and manual
acknowledgement (:func:`shared.kafka.one_event_at_a_time`); :class:`Consumer` never
returns before the record is settled, so no later ``ack()`` can commit past a record
that was not handled. What an error means decides what happens next:

* **an outage** (Redis, the broker, KFP or serving unreachable; :func:`outage_of`):
  not the record's fault. The same record is handled again after a capped exponential
  back-off, without limit; it is never dead-lettered. While it lasts the service's
  ``/healthz`` answers 503 with the reason and ``ctrain_<service>_outage`` is 1.
* **poison** (an exception whose class says ``retryable = False``, such as a record
  that does not parse; its class may name the dead letter's ``dlq_reason``): the
  record's own fault. It goes to its dead-letter topic at
  once, with a typed event, and is committed.
* **anything else** (a bug, a flaky step): handled again up to ``max_attempts`` times,
  then dead-lettered like poison, so one bad record never blocks its partition.

Handlers must be idempotent: a record can be handled again after any await point
(an outage in the middle, or a crash before the commit). Each service's handler
makes every effect safe to repeat (markers, claims, NX writes, deterministic ids).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiokafka.errors as kafka_errors
import redis.exceptions as redis_errors
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)
E = TypeVar("E", bound=BaseModel)
T = TypeVar("T")


class Outage(Exception):
    """A dependency did not answer: retry the same record without limit, never dead-letter."""

    retryable = True


class Poison(Exception):
    """The record itself cannot be handled: dead-letter it at once."""

    retryable = False


class InvalidEvent(Poison):
    """The record is not the event its topic carries."""

    dlq_reason = "invalid_event"


def decode(model: type[E], body: bytes) -> E:
    """``body`` as ``model``, or :class:`InvalidEvent` naming what is wrong with it."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise InvalidEvent(f"not a {model.__name__}: {e}") from e


# Errors that say a dependency is unreachable, never that the record is wrong.
OUTAGE_TYPES: tuple[type[BaseException], ...] = (
    Outage,
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.TryAgainError,
    kafka_errors.KafkaConnectionError,
    kafka_errors.KafkaTimeoutError,
    kafka_errors.NodeNotReadyError,
    kafka_errors.RequestTimedOutError,
    kafka_errors.NotLeaderForPartitionError,
    kafka_errors.LeaderNotAvailableError,
    kafka_errors.CoordinatorNotAvailableError,
    kafka_errors.NotCoordinatorError,
    ConnectionError,
    TimeoutError,
)


def outage_of(e: BaseException) -> str | None:
    """Why ``e`` is an outage ("ConnectionError: ..."), or None when it is not one.

    The chain of causes is followed: a service error raised ``from`` a Redis
    connection error is still an outage."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OUTAGE_TYPES):
            return f"{type(cur).__name__}: {cur}"[:300]
        cur = cur.__cause__ or cur.__context__
    return None


async def retry_outages(
    step: Callable[[], Awaitable[T]],
    what: str,
    *,
    backoff_s: float = 0.5,
    backoff_max_s: float = 10.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_outage: Callable[[str | None], None] | None = None,
) -> T:
    """``step()`` again after each outage (capped exponential back-off) until it returns;
    any other error propagates. For work outside a record's handling (a run's follower,
    a promotion) that must resume where an outage stopped it. ``on_outage`` hears the
    reason while it lasts, then None."""
    n = 0
    while True:
        try:
            result = await step()
        except Exception as e:
            why = outage_of(e)
            if why is None:
                raise
            n += 1
            if n == 1:
                log.warning("dependency unreachable; will retry", extra={"what": what, "why": why})
            if on_outage is not None:
                on_outage(why)
            await sleep(min(backoff_max_s, backoff_s * 2 ** (n - 1)))
            continue
        if n and on_outage is not None:
            on_outage(None)
        return result


def is_poison(e: BaseException) -> bool:
    return getattr(type(e), "retryable", True) is False


@dataclass(frozen=True)
class Record:
    """Where a record came from and its bytes, as a dead-letter event needs them."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    body: bytes

    @classmethod
    def of(cls, msg: Any) -> Record:
        raw = msg.raw_message
        return cls(
            topic=str(getattr(raw, "topic", "")),
            partition=int(getattr(raw, "partition", -1)),
            offset=int(getattr(raw, "offset", -1)),
            key=getattr(raw, "key", None),
            body=bytes(msg.body),
        )

    @classmethod
    def batch_of(cls, msg: Any) -> list[Record]:
        """The records of a batch subscriber's message."""
        raw = msg.raw_message
        return [
            cls(
                topic=str(r.topic),
                partition=int(r.partition),
                offset=int(r.offset),
                key=r.key,
                body=bytes(r.value or b""),
            )
            for r in (raw if isinstance(raw, tuple | list) else (raw,))
        ]


DeadLetterSink = Callable[[Record, str, str], Awaitable[None]]
"""Publishes a record's typed dead-letter event: (record, reason, message)."""


class ConsumerMetrics:
    """The consumer's metrics, on the service's injected registry."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        p = f"ctrain_{service}"
        self.handled = Counter(
            f"{p}_records_handled", "Records settled", ["topic"], registry=registry
        )
        self.retries = Counter(
            f"{p}_record_retries",
            "Records handled again, by kind (outage: a dependency was unreachable; "
            "error: the handler failed)",
            ["topic", "kind"],
            registry=registry,
        )
        self.dead_letters = Counter(
            f"{p}_record_dead_letters",
            "Records sent to a dead-letter topic, by reason",
            ["topic", "reason"],
            registry=registry,
        )
        self.outage = Gauge(
            f"{p}_outage",
            "1 while a record waits on an unreachable dependency (Redis, broker, KFP, serving)",
            ["topic"],
            registry=registry,
        )

    def touch(self, topic: str) -> None:
        """Create the topic's series at zero, so increase() sees the first event."""
        self.handled.labels(topic)
        self.outage.labels(topic).set(0)
        for kind in ("outage", "error"):
            self.retries.labels(topic, kind)


class Consumer:
    """Settles one record at a time: handled, or dead-lettered, then committed."""

    def __init__(
        self,
        topic: str,
        metrics: ConsumerMetrics,
        dead_letter: DeadLetterSink,
        *,
        max_attempts: int = 3,
        backoff_s: float = 0.5,
        backoff_max_s: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.topic = topic
        self.metrics = metrics
        self.dead_letter = dead_letter
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.sleep = sleep
        self.outage: str | None = None
        metrics.touch(topic)

    def _wait(self, n: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** max(0, n - 1)))

    async def _outage(self, why: str, n: int) -> None:
        if self.outage is None:
            log.warning("dependency unreachable; holding the record", extra={"why": why})
        self.outage = why
        self.metrics.outage.labels(self.topic).set(1)
        self.metrics.retries.labels(self.topic, "outage").inc()
        await self.sleep(self._wait(n))

    def _recovered(self) -> None:
        if self.outage is not None:
            log.info("dependency reachable again", extra={"was": self.outage})
        self.outage = None
        self.metrics.outage.labels(self.topic).set(0)

    async def _settle(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run a step that only an outage can stop (a dead letter, a commit) until done."""
        n = 0
        while True:
            try:
                await step()
                return
            except Exception as e:
                why = outage_of(e)
                if why is None:
                    raise
                n += 1
                await self._outage(why, n)

    async def consume(self, msg: Any, handle: Callable[[bytes], Awaitable[None]]) -> None:
        """Handle ``msg`` until it is settled, then commit its offset."""
        record = Record.of(msg)

        async def give_up(e: Exception) -> None:
            await self.reject(record, e)

        await self._until_settled(msg, lambda: handle(msg.body), give_up, 1)

    async def consume_batch(
        self, msg: Any, handle: Callable[[list[Record]], Awaitable[None]]
    ) -> None:
        """Handle a batch until it is settled, then commit it. The handler dead-letters a
        record that is its own fault itself; a batch that keeps failing otherwise is
        dead-lettered record by record after ``max_attempts``."""
        records = Record.batch_of(msg)

        async def give_up(e: Exception) -> None:
            for r in records:
                await self.reject(r, e)

        await self._until_settled(msg, lambda: handle(records), give_up, len(records))

    async def _until_settled(
        self,
        msg: Any,
        attempt: Callable[[], Awaitable[None]],
        give_up: Callable[[Exception], Awaitable[None]],
        records: int,
    ) -> None:
        errors = outages = 0
        while True:
            try:
                await attempt()
                break
            except Exception as e:  # noqa: BLE001 - every failure is settled here, by kind
                why = outage_of(e)
                if why is not None:
                    outages += 1
                    await self._outage(why, outages)
                    continue
                errors += 1
                if is_poison(e) or errors >= self.max_attempts:
                    await give_up(e)
                    break
                log.warning(
                    "handling failed; trying again",
                    extra={"topic": self.topic, "attempt": errors, "err": repr(e)},
                )
                self.metrics.retries.labels(self.topic, "error").inc()
                await self.sleep(self._wait(errors))
        self._recovered()
        try:
            await self._settle(msg.ack)
        except kafka_errors.CommitFailedError as e:
            # The group rebalanced under us: the partition's next owner (or this consumer,
            # from the committed offset) handles the record again, idempotently.
            log.warning("commit refused after a rebalance", extra={"err": str(e)})
        self._recovered()
        self.metrics.handled.labels(self.topic).inc(records)

    async def reject(self, record: Record, e: Exception) -> None:
        """Dead-letter one record (its own fault, or it kept failing), with its reason."""
        reason = str(getattr(type(e), "dlq_reason", "") or type(e).__name__)
        detail = str(e)[:4000] or reason
        self.metrics.dead_letters.labels(self.topic, reason).inc()
        log.error(
            "record dead-lettered",
            extra={"topic": record.topic, "offset": record.offset, "reason": reason},
        )
        sink = self.dead_letter
        await self._settle(lambda: sink(record, reason, detail))


def outages(consumers: list[Consumer]) -> str | None:
    """The first outage any consumer is waiting on (for ``/healthz``), or None."""
    for c in consumers:
        if c.outage is not None:
            return f"{c.topic}: {c.outage}"
    return None
