"""Several streams through one ingest process: one :class:`Ingestor` per stream.

Each stream's examples arrive on a topic of their own (``ctrain.yaml``'s
``topic``), so routing needs nothing from the record: the partition a record
came from names its stream. The consume loop talks to this object exactly as
it would to a single ingestor; each call goes to the ingestor of the topic.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from services.ingest.core import Ingestor, Record, TopicPartition, _Partition


class Streams:
    def __init__(self, by_topic: dict[str, Ingestor]) -> None:
        if not by_topic:
            raise ValueError("ingest needs at least one stream")
        self.by_topic = by_topic

    @property
    def topics(self) -> list[str]:
        return sorted(self.by_topic)

    @property
    def parts(self) -> dict[TopicPartition, _Partition]:
        out: dict[TopicPartition, _Partition] = {}
        for ing in self.by_topic.values():
            out.update(ing.parts)
        return out

    def _of(self, tp: TopicPartition) -> Ingestor:
        return self.by_topic[tp[0]]

    async def assign(self, tp: TopicPartition) -> int | None:
        return await self._of(tp).assign(tp)

    def revoke(self, tp: TopicPartition) -> None:
        self._of(tp).revoke(tp)

    async def process_many(
        self, batches: dict[TopicPartition, Iterable[Record]]
    ) -> dict[TopicPartition, int]:
        by_stream: dict[str, dict[TopicPartition, Iterable[Record]]] = {}
        for tp, records in batches.items():
            by_stream.setdefault(tp[0], {})[tp] = records
        out: dict[TopicPartition, int] = {}
        for topic, share in by_stream.items():
            out.update(await self.by_topic[topic].process_many(share))
        return out

    async def drain_one(self, tp: TopicPartition) -> int | None:
        return await self._of(tp).drain_one(tp)

    async def close_idle(self) -> dict[TopicPartition, int]:
        out: dict[TopicPartition, int] = {}
        for ing in self.by_topic.values():
            out.update(await ing.close_idle())
        return out

    async def announce_idle(self, position: Callable[[TopicPartition], Awaitable[int]]) -> int:
        return sum([await ing.announce_idle(position) for ing in self.by_topic.values()])

    async def drain(self) -> dict[TopicPartition, int]:
        out: dict[TopicPartition, int] = {}
        for ing in self.by_topic.values():
            out.update(await ing.drain())
        return out
