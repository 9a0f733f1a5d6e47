"""The one consumer (shared.consume): how a record is settled for each kind of failure."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.exceptions
from aiokafka.errors import CommitFailedError, KafkaConnectionError
from prometheus_client import CollectorRegistry

from shared.consume import (
    Consumer,
    ConsumerMetrics,
    InvalidEvent,
    Outage,
    Poison,
    Record,
    decode,
    outage_of,
    outages,
    retry_outages,
)
from shared.events import WindowValidated

pytestmark = pytest.mark.unit


@dataclass
class Raw:
    topic: str = "ctrain.validations"
    partition: int = 1
    offset: int = 41
    key: bytes | None = b"k"


@dataclass
class Msg:
    """A FastStream message as the consumer sees it: body, raw record, ack()."""

    body: bytes = b"{}"
    raw_message: Raw = field(default_factory=Raw)
    acks: int = 0
    ack_errors: list[BaseException] = field(default_factory=list)

    async def ack(self) -> None:
        if self.ack_errors:
            raise self.ack_errors.pop(0)
        self.acks += 1


class Harness:
    def __init__(self, max_attempts: int = 3) -> None:
        self.registry = CollectorRegistry()
        self.letters: list[tuple[Record, str, str]] = []
        self.sink_errors: list[BaseException] = []
        self.sleeps: list[float] = []
        self.consumer = Consumer(
            "ctrain.validations",
            ConsumerMetrics(self.registry, "svc"),
            self.sink,
            max_attempts=max_attempts,
            backoff_s=0.5,
            backoff_max_s=4.0,
            sleep=self.sleep,
        )

    async def sink(self, rec: Record, reason: str, message: str) -> None:
        if self.sink_errors:
            raise self.sink_errors.pop(0)
        self.letters.append((rec, reason, message))

    async def sleep(self, s: float) -> None:
        self.sleeps.append(s)

    def value(self, name: str, **labels: str) -> float:
        v = self.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v


def failing(*errors: BaseException) -> tuple[list[int], Any]:
    """A handler that raises ``errors`` in turn, then succeeds; and its call count."""
    calls = [0]
    queue = list(errors)

    async def handle(_: bytes) -> None:
        calls[0] += 1
        if queue:
            raise queue.pop(0)

    return calls, handle


def test_an_outage_is_retried_without_limit_never_dead_lettered_and_visible() -> None:
    h = Harness(max_attempts=2)
    seen: list[str | None] = []
    down = redis.exceptions.ConnectionError("Connection refused")
    calls, handle = failing(*[down] * 9)

    async def watch(_: bytes) -> None:
        seen.append(h.consumer.outage)
        await handle(b"")

    msg = Msg()
    asyncio.run(h.consumer.consume(msg, watch))
    assert calls[0] == 10 and msg.acks == 1 and h.letters == []  # 9 outages > max_attempts
    assert seen[1] is not None and "Connection refused" in seen[1]  # /healthz said why
    assert outages([h.consumer]) is None and h.consumer.outage is None  # and recovered
    assert h.sleeps == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]  # capped back-off
    retries = "ctrain_svc_record_retries_total"
    assert h.value(retries, topic="ctrain.validations", kind="outage") == 9
    assert h.value("ctrain_svc_outage", topic="ctrain.validations") == 0
    assert h.value("ctrain_svc_records_handled_total", topic="ctrain.validations") == 1


def test_the_outage_gauge_is_up_while_it_lasts() -> None:
    h = Harness()
    during: list[float] = []

    async def sleep(_: float) -> None:
        during.append(h.value("ctrain_svc_outage", topic="ctrain.validations"))

    h.consumer.sleep = sleep
    _, handle = failing(KafkaConnectionError("broker gone"))
    asyncio.run(h.consumer.consume(Msg(), handle))
    assert during == [1.0] and h.value("ctrain_svc_outage", topic="ctrain.validations") == 0


def test_an_error_is_retried_then_dead_lettered_and_committed() -> None:
    h = Harness(max_attempts=3)
    calls, handle = failing(*[ValueError("bug")] * 5)
    msg = Msg(body=b'{"x": 1}')
    asyncio.run(h.consumer.consume(msg, handle))
    assert calls[0] == 3 and msg.acks == 1
    [(rec, reason, message)] = h.letters
    assert (rec.topic, rec.partition, rec.offset, rec.body) == (
        "ctrain.validations",
        1,
        41,
        b'{"x": 1}',
    )
    assert reason == "ValueError" and message == "bug"
    assert h.value("ctrain_svc_record_retries_total", topic="ctrain.validations", kind="error") == 2
    assert (
        h.value(
            "ctrain_svc_record_dead_letters_total", topic="ctrain.validations", reason="ValueError"
        )
        == 1
    )


def test_an_error_that_goes_away_is_handled_once_not_dead_lettered() -> None:
    h = Harness(max_attempts=3)
    calls, handle = failing(RuntimeError("flaky"))
    msg = Msg()
    asyncio.run(h.consumer.consume(msg, handle))
    assert calls[0] == 2 and msg.acks == 1 and h.letters == []


def test_poison_is_dead_lettered_at_once_with_its_reason() -> None:
    h = Harness(max_attempts=5)
    calls, handle = failing(InvalidEvent("not a WindowValidated"))
    asyncio.run(h.consumer.consume(Msg(), handle))
    assert calls[0] == 1
    assert [(r, m) for _, r, m in h.letters] == [("invalid_event", "not a WindowValidated")]

    class Refused(Poison):
        pass

    h2 = Harness(max_attempts=5)
    _, handle = failing(Refused("no"))
    asyncio.run(h2.consumer.consume(Msg(), handle))
    assert [r for _, r, _ in h2.letters] == ["Refused"]


def test_a_dead_letter_that_meets_an_outage_is_sent_later_never_lost() -> None:
    h = Harness(max_attempts=1)
    h.sink_errors = [KafkaConnectionError("dlq broker down")] * 3
    msg = Msg()
    asyncio.run(h.consumer.consume(msg, failing(ValueError("x"))[1]))
    assert len(h.letters) == 1 and msg.acks == 1 and len(h.sleeps) == 3


def test_nothing_is_committed_before_the_record_is_settled() -> None:
    """The bug this consumer exists for: a failed handler must not let ack() run."""
    h = Harness()
    order: list[str] = []

    async def handle(_: bytes) -> None:
        order.append("handle")
        if len(order) < 3:
            raise Outage("redis down")

    class Watched(Msg):
        async def ack(self) -> None:
            order.append("ack")
            await super().ack()

    asyncio.run(h.consumer.consume(Watched(), handle))
    assert order == ["handle", "handle", "handle", "ack"]


def test_a_commit_is_retried_on_an_outage_and_given_up_after_a_rebalance() -> None:
    h = Harness()
    msg = Msg(ack_errors=[KafkaConnectionError("coordinator gone")])
    asyncio.run(h.consumer.consume(msg, failing()[1]))
    assert msg.acks == 1 and h.sleeps == [0.5]
    # A rebalance refuses the commit: the partition's next owner handles it again.
    msg = Msg(ack_errors=[CommitFailedError("rebalanced")])
    asyncio.run(h.consumer.consume(msg, failing()[1]))
    assert msg.acks == 0 and h.letters == []


def test_cancellation_stops_without_committing() -> None:
    """SIGTERM during an outage: the record stays uncommitted for the next start."""
    h = Harness()
    msg = Msg()

    async def forever(_: float) -> None:
        raise asyncio.CancelledError

    h.consumer.sleep = forever
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(h.consumer.consume(msg, failing(Outage("down"))[1]))
    assert msg.acks == 0


def test_outage_of_follows_causes_and_tells_outages_from_bugs() -> None:
    try:
        try:
            raise redis.exceptions.ConnectionError("refused")
        except redis.exceptions.ConnectionError as e:
            raise RuntimeError("saving state failed") from e
    except RuntimeError as wrapped:
        assert outage_of(wrapped) == "ConnectionError: refused"
    assert outage_of(ValueError("bad")) is None
    assert outage_of(ConnectionResetError("reset")) is not None
    assert outage_of(redis.exceptions.BusyLoadingError("loading AOF")) is not None
    assert outage_of(redis.exceptions.ResponseError("WRONGTYPE")) is None


def test_decode_names_the_event_it_wanted() -> None:
    with pytest.raises(InvalidEvent, match="not a WindowValidated"):
        decode(WindowValidated, b'{"event_type": "window_validated"}')


def test_retry_outages_resumes_and_reports() -> None:
    states: list[str | None] = []
    calls, step = failing(Outage("serving down"), Outage("serving down"))

    async def sleep(_: float) -> None:
        return None

    asyncio.run(retry_outages(lambda: step(b""), "x", sleep=sleep, on_outage=states.append))
    assert calls[0] == 3 and states == ["Outage: serving down", "Outage: serving down", None]
    with pytest.raises(ValueError):
        asyncio.run(retry_outages(lambda: failing(ValueError("no"))[1](b""), "x", sleep=sleep))


@dataclass
class BatchRaw:
    topic: str = "ctrain.labels"
    partition: int = 0
    offset: int = 0
    key: bytes | None = None
    value: bytes | None = b"{}"


@dataclass
class BatchMsg:
    raw_message: tuple[BatchRaw, ...] = ()
    acks: int = 0

    async def ack(self) -> None:
        self.acks += 1


def batch(n: int) -> BatchMsg:
    return BatchMsg(tuple(BatchRaw(offset=i, value=f'{{"i": {i}}}'.encode()) for i in range(n)))


def test_a_batch_waits_out_an_outage_then_commits_once() -> None:
    h = Harness()
    msg = batch(3)
    seen: list[list[int]] = []

    async def handle(records: list[Record]) -> None:
        seen.append([r.offset for r in records])
        if len(seen) < 3:
            raise redis.exceptions.ConnectionError("redis down")

    asyncio.run(h.consumer.consume_batch(msg, handle))
    assert seen == [[0, 1, 2]] * 3 and msg.acks == 1 and h.letters == []
    assert h.sleeps == [0.5, 1.0] and h.consumer.outage is None
    assert h.value("ctrain_svc_records_handled_total", topic="ctrain.validations") == 3


def test_a_batch_that_keeps_failing_is_dead_lettered_record_by_record() -> None:
    h = Harness(max_attempts=2)
    msg = batch(2)

    async def handle(records: list[Record]) -> None:
        raise ValueError("a bug")

    asyncio.run(h.consumer.consume_batch(msg, handle))
    assert [(r.offset, reason) for r, reason, _ in h.letters] == [
        (0, "ValueError"),
        (1, "ValueError"),
    ]
    assert h.letters[1][0].body == b'{"i": 1}' and msg.acks == 1


def test_one_record_of_a_batch_rejected_by_its_handler() -> None:
    h = Harness()
    msg = batch(2)

    async def handle(records: list[Record]) -> None:
        await h.consumer.reject(records[1], InvalidEvent("not JSON"))

    asyncio.run(h.consumer.consume_batch(msg, handle))
    [(rec, reason, message)] = h.letters
    assert rec.offset == 1 and reason == "invalid_event" and message == "not JSON"
    assert msg.acks == 1
