"""The Kafka side of ingest: a Sink over an aiokafka producer, and the poll loop.

The loop uses aiokafka directly rather than a FastStream subscriber: the offset
ingest may commit is the first record of the oldest *open* window, not the
position FastStream's ack would commit, so commits are explicit per partition.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from services.ingest.streams import Streams
from shared import topics
from shared.events import DeadLetter, PartitionIdle, WindowClosed

log = logging.getLogger(__name__)


class KafkaSink:
    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self._inflight: list[asyncio.Future[Any]] = []

    async def dead_letter(self, letter: DeadLetter) -> None:
        await self._send(topics.EXAMPLES_DLQ, letter.to_bytes(), letter.key)

    async def window_closed(self, event: WindowClosed) -> None:
        # Not awaited one by one: the core flushes once for all of a poll's windows.
        await self._send(topics.WINDOWS, event.to_bytes(), event.key)

    async def _send(self, topic: str, value: bytes, key: bytes) -> None:
        self._inflight.append(await self.producer.send(topic, value, key=key))
        if len(self._inflight) >= 10_000:
            await self.flush()

    async def flush(self) -> None:
        if self._inflight:
            pending, self._inflight = self._inflight, []
            await asyncio.gather(*pending)

    async def partition_idle(self, event: PartitionIdle) -> None:
        await self.producer.send_and_wait(topics.WINDOWS, event.to_bytes(), key=event.key)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, loop: ConsumeLoop) -> None:
        self.loop = loop

    # aiokafka calls these from its coordinator task, concurrently with the poll loop:
    # both wait for the loop's lock, so a partition is never checkpointed, dropped or
    # restored while one of its batches is half handled.
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.loop.lock:
            self.loop.generation += 1
            await self.loop.release(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self.loop.lock:
            self.loop.generation += 1
            for tp in assigned:
                resume = await self.loop.ingestor.assign((tp.topic, tp.partition))
                if resume is not None:
                    self.loop.consumer.seek(tp, resume)


class ConsumeLoop:
    """Polls every stream's topic and hands each partition's batch to its stream's core."""

    def __init__(self, consumer: AIOKafkaConsumer, ingestor: Streams, max_records: int) -> None:
        self.consumer = consumer
        self.ingestor = ingestor
        self.max_records = max_records
        self._stopping = asyncio.Event()
        self.running = False
        self.listener = _Rebalance(self)
        # Held while a batch is handled and while partitions move (see _Rebalance).
        self.lock = asyncio.Lock()
        # Bumped by every revoke/assign: a batch fetched under an older assignment is stale.
        self.generation = 0

    def subscribe(self) -> None:
        self.consumer.subscribe(self.ingestor.topics, listener=self.listener)

    async def run(self) -> None:
        self.running = True
        fetch: asyncio.Future[dict[TopicPartition, list[Any]]] | None = None
        try:
            while not self._stopping.is_set():
                if fetch is None:
                    seen, fetch = self.generation, self._poll()
                batch = await fetch
                fetch = None
                async with self.lock:
                    if self.generation != seen:
                        await self._refetch(batch)
                        continue
                    # The next poll is fetched while this one is handled: the core
                    # decodes off the event loop, and the consumer's own work runs
                    # meanwhile. Partitions moving in between make it stale, as above.
                    seen, fetch = self.generation, self._poll()
                    await self._handle(batch)
                # Outside the lock: position() can wait for an assignment in progress.
                await self.ingestor.announce_idle(self._position)
        finally:
            self.running = False
            if fetch is not None:
                # Records fetched and never handled are fetched again by whoever
                # resumes from the checkpoint: nothing is lost by dropping them.
                fetch.cancel()
                await asyncio.gather(fetch, return_exceptions=True)

    def _poll(self) -> asyncio.Future[dict[TopicPartition, list[Any]]]:
        return asyncio.ensure_future(
            self.consumer.getmany(timeout_ms=200, max_records=self.max_records)
        )

    async def _handle(self, batch: dict[TopicPartition, list[Any]]) -> None:
        if self._stopping.is_set():
            return  # not processed: replayed from the committed offset
        commits = await self.ingestor.process_many(
            {(tp.topic, tp.partition): records for tp, records in batch.items()}
        )
        await self._commit(commits)
        await self._commit(await self.ingestor.close_idle())

    async def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit to the group, all partitions in one request; the checkpoint, not this
        commit, is where a new owner resumes, so a commit refused because the group is
        rebalancing loses nothing."""
        if not offsets:
            return
        try:
            await self.consumer.commit({TopicPartition(*tp): o for tp, o in offsets.items()})
        except (CommitFailedError, IllegalStateError) as e:
            log.warning(
                "offset commit refused (the group is rebalancing); the checkpoint keeps it",
                extra={
                    "offsets": {f"{t}-{p}": o for (t, p), o in offsets.items()},
                    "error": repr(e),
                },
            )

    async def _refetch(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Partitions moved while this batch was in hand: hand none of it to the core.

        A partition we lost belongs to its new owner. One we (re)gained was restored and
        sought to its checkpoint, but the batch may have come from the old position, or
        from the new one already, moving the fetch position past records nobody routed:
        seek back to where the core expects its next record.
        """
        assigned = self.consumer.assignment()
        for tp, records in batch.items():
            part = self.ingestor.parts.get((tp.topic, tp.partition))
            if tp not in assigned or part is None or not records:
                continue
            resume = part.next_offset if part.next_offset is not None else part.committed
            if resume is None:
                # Nothing routed, no checkpoint: where a fresh owner starts (the group's
                # commit, else the beginning: the consumer's auto_offset_reset).
                resume = await self.consumer.committed(tp)
            if resume is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, resume)
        log.info("batch fetched across a rebalance dropped", extra={"partitions": len(batch)})

    async def _position(self, tp: tuple[str, int]) -> int:
        return int(await self.consumer.position(TopicPartition(*tp)))

    def stop(self) -> None:
        self._stopping.set()

    async def release(self, tps: list[TopicPartition]) -> None:
        """Checkpoint and commit partitions we are about to lose, then drop them."""
        for tp in tps:
            key = (tp.topic, tp.partition)
            if key not in self.ingestor.parts:
                continue
            commit = await self.ingestor.drain_one(key)
            if commit is not None:
                await self._commit({key: commit})
            self.ingestor.revoke(key)

    async def drain(self) -> None:
        async with self.lock:
            await self._commit(await self.ingestor.drain())
