"""The ingest poll loop against rebalances that land while a batch is in hand.

aiokafka runs the rebalance listener in its coordinator task, concurrently with the
poll loop. These tests make the listener fire at the loop's await points (a DLQ
send in the middle of a batch; the wait inside ``getmany``) and check that no
record is lost: the partition is checkpointed only between batches, and a batch
fetched across a rebalance is fetched again from where the core expects it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError

from services.ingest.core import Ingestor
from services.ingest.kafka_io import ConsumeLoop
from services.ingest.streams import Streams
from shared.artifacts import ArtifactStore
from shared.events import DeadLetter
from tests.unit.helpers import ListSink, Rec
from tests.unit.test_core_recovery import TP, WindowPolicy, ingestor

pytestmark = pytest.mark.unit
KTP = TopicPartition(*TP)


def records(first: int, n: int, bad: set[int] = frozenset()) -> list[Rec]:  # type: ignore[assignment]
    out = []
    for off in range(first, first + n):
        value = (
            b"{oops" if off in bad else orjson.dumps({"x": off * 0.5, "c": "k", "t": 1000 + off})
        )
        out.append(Rec(TP[0], TP[1], off, None, value, 0))
    return out


class FakeConsumer:
    """The part of AIOKafkaConsumer the loop uses; batches come from a script."""

    def __init__(self, batches: list[list[Rec]], before: dict[int, Callable[[], Awaitable[None]]]):
        self.batches = batches
        self.before = before  # call number -> listener action run inside getmany
        self.calls = 0
        self.assigned = {KTP}
        self.commits: list[int] = []
        self.seeks: list[int | str] = []
        self.stop: Callable[[], None] = lambda: None

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Rec]]:
        self.calls += 1
        hook = self.before.get(self.calls)
        if hook is not None:
            await hook()
        if not self.batches:
            self.stop()
            return {}
        return {KTP: self.batches.pop(0)}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets[KTP])

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append(offset)

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.seeks.append("beginning")

    async def committed(self, tp: TopicPartition) -> int | None:
        return None

    async def position(self, tp: TopicPartition) -> int:
        return 0


class GatedSink(ListSink):
    """Holds the first dead letter's send open until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def dead_letter(self, letter: DeadLetter) -> None:
        if not self.entered.is_set():
            self.entered.set()
            await self.gate.wait()
        await super().dead_letter(letter)


def make_loop(tmp: Path, sink: ListSink, consumer: FakeConsumer) -> tuple[ConsumeLoop, Ingestor]:
    ing = ingestor(ArtifactStore(str(tmp)), sink, WindowPolicy(max_count=100), [2e9])
    loop = ConsumeLoop(consumer, Streams({TP[0]: ing}), 500)
    consumer.stop = loop.stop
    return loop, ing


def checkpoint(tmp: Path, ing: Ingestor) -> dict[str, Any]:
    return orjson.loads(ing.store.read_bytes(ing.checkpoint_uri(TP)))


async def test_revoke_waits_for_the_batch_in_hand(tmp_path: Path) -> None:
    sink = GatedSink()
    consumer = FakeConsumer([records(0, 10, bad={0})], {})
    loop, ing = make_loop(tmp_path, sink, consumer)
    await ing.assign(TP)
    task = asyncio.create_task(loop.run())
    await sink.entered.wait()  # the loop is inside the batch, at the DLQ send of offset 0
    revoke = asyncio.create_task(loop.listener.on_partitions_revoked([KTP]))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not revoke.done(), "the partition was released in the middle of a batch"
    sink.gate.set()
    await revoke
    await task
    # Offsets 1..9 sit in the open window, so the next owner must start at 1. Released
    # mid-batch, before they were routed, the checkpoint said 10: nine examples lost.
    assert checkpoint(tmp_path, ing)["commit"] == 1
    assert consumer.commits[-1] == 1
    assert TP not in ing.parts
    assert [d.source.offset for d in sink.letters] == [0]


async def test_a_batch_fetched_across_a_rebalance_is_fetched_again(tmp_path: Path) -> None:
    sink = ListSink()
    # The first batch came from the old owner's fetch position (offset 5): handing it to
    # the freshly restored core would skip offsets 0..4 for good.
    consumer = FakeConsumer([records(5, 5), records(0, 10)], {})
    loop, ing = make_loop(tmp_path, sink, consumer)

    async def reassign() -> None:
        await loop.listener.on_partitions_revoked([KTP])
        await loop.listener.on_partitions_assigned([KTP])

    consumer.before[1] = reassign
    await ing.assign(TP)
    await loop.run()
    assert consumer.seeks == ["beginning"]  # no checkpoint, no commit: the reset policy
    (window,) = ing.parts[TP].windows.open.values()
    assert (window.first, window.count) == (0, 10)


async def test_stale_batch_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    sink = ListSink()
    store = ArtifactStore(str(tmp_path))
    # A previous owner closed offsets 0..99 (count) and checkpointed commit 100.
    first = ingestor(store, sink, WindowPolicy(max_count=100), [2e9])
    await first.assign(TP)
    await first.process(TP, records(0, 100))
    assert checkpoint(tmp_path, first)["commit"] == 100
    consumer = FakeConsumer([records(130, 5), records(100, 35)], {})
    loop, ing = make_loop(tmp_path, sink, consumer)

    async def reassign() -> None:
        await loop.listener.on_partitions_assigned([KTP])

    consumer.before[1] = reassign
    await loop.run()
    assert consumer.seeks[:2] == [100, 100]  # the assign's seek, then the stale batch's
    (window,) = ing.parts[TP].windows.open.values()
    assert (window.first, window.count) == (100, 35)


async def test_a_refused_commit_does_not_stop_the_loop(tmp_path: Path) -> None:
    class Refusing(FakeConsumer):
        async def commit(self, offsets: dict[TopicPartition, int]) -> None:
            if not self.commits:
                self.commits.append(-1)
                raise CommitFailedError("the group has already rebalanced")
            await super().commit(offsets)

    sink = ListSink()
    consumer = Refusing([records(0, 100), records(100, 100)], {})
    loop, ing = make_loop(tmp_path, sink, consumer)
    await ing.assign(TP)
    await loop.run()  # the first window's commit is refused; the second batch still runs
    assert consumer.commits == [-1, 200]
    assert [w.example_count for w in sink.windows] == [100, 100]
    # The refused commit's position is kept by the checkpoint a new owner resumes from.
    assert await make_loop(tmp_path, ListSink(), FakeConsumer([], {}))[1].assign(TP) == 200


async def test_stopping_cancels_the_poll_fetched_ahead(tmp_path: Path) -> None:
    """The loop fetches the next poll while it handles one; on stop, that poll is
    cancelled and none of it reaches the core (the checkpoint is where it resumes)."""
    cancelled = asyncio.Event()

    class Hanging(FakeConsumer):
        async def getmany(
            self, timeout_ms: int, max_records: int
        ) -> dict[TopicPartition, list[Rec]]:
            self.calls += 1
            if self.calls == 1:
                return {KTP: records(0, 150)}
            loop.stop()  # SIGTERM arrives while the next poll waits for the broker
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return {KTP: records(150, 50)}

    class Yielding(ListSink):
        async def flush(self) -> None:
            await asyncio.sleep(0)  # a broker round trip: the fetch ahead starts here
            await super().flush()

    sink = Yielding()
    consumer = Hanging([], {})
    loop, ing = make_loop(tmp_path, sink, consumer)
    await ing.assign(TP)
    await asyncio.wait_for(loop.run(), 10)
    assert cancelled.is_set() and not loop.running
    assert consumer.calls == 2  # the second poll was in flight while the first was handled
    await loop.drain()
    assert [w.example_count for w in sink.windows] == [100]
    assert checkpoint(tmp_path, ing)["commit"] == 100  # the open window's 50 are replayed
