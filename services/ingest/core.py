"""The ingest core: records in, DLQ entries and durable windows out.

No Kafka client and no HTTP here: the adapter feeds records per partition and
performs the commits this object hands back. Order of effects for each close
(docs/architecture.md §4): shard renamed into place -> window.json -> partition checkpoint
(the decision, durable) -> WindowClosed published -> offsets committed.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, Protocol

import numpy as np
import orjson
import pyarrow as pa

from services.ingest.decode import BatchResult, Decoder, Reason, Rejected
from services.ingest.metrics import IngestMetrics
from services.ingest.windowing import (
    ClosedRange,
    CloseReason,
    OpenWindow,
    PartitionWindows,
    WindowPolicy,
)
from shared.artifacts import ArtifactStore
from shared.events import DeadLetter, DlqSource, OffsetRange, PartitionIdle, WindowClosed
from shared.ids import stable_id
from shared.shard import OFFSETS_NAME, OFFSETS_SCHEMA, SHARD_NAME, ShardWriter
from shared.topics import END_OF_INPUT, WATERMARK_HEADER

log = logging.getLogger(__name__)


class Record(Protocol):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class Sink(Protocol):
    """Where the core's events go (Kafka in production, lists in unit tests)."""

    # dead_letter and window_closed may return before the broker has the event;
    # flush returns once it has every event sent so far.
    async def dead_letter(self, letter: DeadLetter) -> None: ...
    async def flush(self) -> None: ...
    async def window_closed(self, event: WindowClosed) -> None: ...
    async def partition_idle(self, event: PartitionIdle) -> None: ...


TopicPartition = tuple[str, int]


@dataclass
class _Shard:
    """An open window's files: its rows, and beside them each row's source offset (which
    makes the example's id, ``shared.ids.example_id``, that delayed labels join on)."""

    rows: ShardWriter
    offsets: ShardWriter
    uri: str
    offsets_uri: str

    def abort(self) -> None:
        self.rows.abort()
        self.offsets.abort()


@dataclass
class _Partition:
    windows: PartitionWindows
    writers: dict[str, _Shard] = field(default_factory=dict)
    last_read_wall: float = 0.0
    next_offset: int | None = None
    committed: int | None = None
    idle_announced: bool = False
    # A watermark record left nothing open: announce the partition idle without waiting.
    ended: bool = False


# A partition, and the windows a batch (or the idle timer) just closed on it.
_Closing = tuple[TopicPartition, "_Partition", list[tuple[OpenWindow, CloseReason]]]


def dead_letter(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    r: Rejected,
    letter_id: str | None = None,
) -> DeadLetter:
    raw = value or b""
    try:
        payload, enc = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        payload, enc = base64.b64encode(raw).decode(), "base64"
    return DeadLetter(
        id=letter_id or f"dlq-{topic}-{partition}-{offset}",
        reason=r.reason,
        message=r.message,
        source=DlqSource(topic=topic, partition=partition, offset=offset),
        payload=payload,
        payload_encoding=enc,  # type: ignore[arg-type]
        source_key=key.decode("utf-8", "replace") if key else None,
    )


def _share(res: BatchResult, lo: int, hi: int) -> BatchResult:
    """The part of a batch's result for input positions lo..hi-1, renumbered from 0."""
    first, last = (int(k) for k in np.searchsorted(res.accepted, (lo, hi)))
    return BatchResult(
        batch=res.batch.slice(first, last - first),
        accepted=res.accepted[first:last] - lo,
        event_ms=res.event_ms[first:last],
        rejected=[(i - lo, why) for i, why in res.rejected if lo <= i < hi],
    )


# Below this many records a decode is quicker than the hand-off to a thread.
_THREAD_MIN = 256
_VALUE = attrgetter("value")
_TIMESTAMP = attrgetter("timestamp")
_OFFSET = attrgetter("offset")
_HEADERS = attrgetter("headers")


@dataclass(frozen=True)
class _Mark:
    """A watermark record among a partition's records: after how many examples of the
    batch it came, and its watermark (ms; None: the end of the producer's input)."""

    after: int
    watermark_ms: int | None


def _watermark_of(rec: Record, limit_ms: int) -> int | Rejected | None:
    raw = next(v for k, v in rec.headers if k == WATERMARK_HEADER)
    if raw == END_OF_INPUT:
        return None
    try:
        t = int(raw)
    except (TypeError, ValueError):
        return Rejected(
            Reason.BAD_WATERMARK,
            f"header {WATERMARK_HEADER}={raw!r} is neither an event time in ms "
            f"nor {END_OF_INPUT.decode()!r}",
        )
    if t > limit_ms:
        # Seconds sent as ms are caught by the window closing nothing; µs or ns sent as
        # ms would move the watermark centuries ahead and make every later example late.
        return Rejected(
            Reason.BAD_WATERMARK,
            f"header {WATERMARK_HEADER}={raw!r} is {_ts_or_far(t)}, past the latest "
            f"event time accepted now ({_ts(limit_ms).isoformat()})",
        )
    return t


def _ts_or_far(ms: int) -> str:
    try:
        return _ts(ms).isoformat()
    except (OverflowError, OSError, ValueError):
        return "beyond year 9999"


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class Ingestor:
    def __init__(
        self,
        *,
        stream: str,
        decoder: Decoder,
        policy: WindowPolicy,
        store: ArtifactStore,
        sink: Sink,
        metrics: IngestMetrics,
        batch_rows: int = 8192,
        idle_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stream = stream
        self.decoder = decoder
        self.policy = policy
        self.store = store
        self.sink = sink
        self.metrics = metrics
        self.batch_rows = batch_rows
        self.idle_timeout_s = idle_timeout_s
        self.clock = clock
        self.parts: dict[TopicPartition, _Partition] = {}

    # ----------------------------------------------------------- layout
    def window_dir(self, window_id: str) -> str:
        return self.store.uri("windows", self.stream, window_id)

    def checkpoint_uri(self, tp: TopicPartition) -> str:
        return self.store.uri("windows", self.stream, "_checkpoints", f"{tp[0]}-{tp[1]}.json")

    # ------------------------------------------------------- partitions
    async def assign(self, tp: TopicPartition) -> int | None:
        """Take a partition: restore its checkpoint; return the offset to resume at."""
        windows = PartitionWindows(self.stream, tp[0], tp[1], self.policy)
        part = _Partition(windows)
        self.parts[tp] = part
        uri = self.checkpoint_uri(tp)
        if not self.store.exists(uri):
            return None
        ck = orjson.loads(self.store.read_bytes(uri))
        windows.watermark = ck["watermark_ms"]
        windows.closed = [ClosedRange(**c) for c in ck["closed"]]
        part.committed = ck["commit"]
        # The last step may have died between its checkpoint and its publish.
        for ev in ck["pending"]:
            await self.sink.window_closed(WindowClosed.model_validate(ev))
        if ck["pending"]:
            await self.sink.flush()
        log.info(
            "partition restored",
            extra={
                "tp": f"{tp[0]}-{tp[1]}",
                "commit": ck["commit"],
                "republished": len(ck["pending"]),
            },
        )
        return int(ck["commit"])

    def revoke(self, tp: TopicPartition) -> None:
        """Give a partition up: its open windows are rebuilt by the next owner."""
        part = self.parts.pop(tp, None)
        if part is None:
            return
        for shard in part.writers.values():
            shard.abort()
        self._update_open_gauge()

    # ----------------------------------------------------------- records
    async def process(self, tp: TopicPartition, records: Iterable[Record]) -> int | None:
        """Handle one batch of one partition; return an offset to commit, if any."""
        return (await self.process_many({tp: records})).get(tp)

    async def process_many(
        self, batches: dict[TopicPartition, Iterable[Record]]
    ) -> dict[TopicPartition, int]:
        """Handle one poll's batches of several partitions; return offsets to commit.

        The records of all partitions are decoded in one call (a verdict never depends
        on a record's neighbours, so this changes nothing but the per-call costs), then
        each partition's share is routed to its own windows, in partition order.
        """
        fresh: list[tuple[TopicPartition, _Partition, list[Record], list[_Mark]]] = []
        for tp, records in batches.items():
            part = await self._owned(tp)
            recs = self._unseen(part, list(records))
            if recs:
                part.next_offset = recs[-1].offset + 1
            marks: list[_Mark] = []
            if any(map(_HEADERS, recs)):  # rare: most records carry no header at all
                n = len(recs)
                recs, marks = await self._split_marks(recs)
                if len(recs) < n:
                    # Watermark records moved the partition's end: one announced idle
                    # before them is announced again, at its new next offset (the
                    # validator counts a partition idle only while nothing was written
                    # past the offset it announced).
                    part.idle_announced = False
                    part.last_read_wall = self.clock()
            fresh.append((tp, part, recs, marks))
        every = [r for _, _, recs, _ in fresh for r in recs]
        args = (list(map(_VALUE, every)), list(map(_TIMESTAMP, every)), int(self.clock() * 1000))
        if len(every) < _THREAD_MIN:
            res = self.decoder.decode_batch(*args)
        else:
            # Off the event loop: Arrow's reader and compute kernels release the GIL,
            # so the consumer fetches and unpacks the next poll meanwhile.
            res = await asyncio.to_thread(self.decoder.decode_batch, *args)
        settling: list[_Closing] = []
        lo = 0
        for tp, part, recs, marks in fresh:
            hi = lo + len(recs)
            closing = []
            at = 0
            for m in marks:
                closing += await self._route(
                    tp, part, recs[at : m.after], _share(res, lo + at, lo + m.after)
                )
                closing += part.windows.advance(m.watermark_ms)
                # Nothing left open after the producer's word: announce the partition
                # idle now rather than after the timeout.
                part.ended = not part.windows.open
                at = m.after
            closing += await self._route(tp, part, recs[at:], _share(res, lo + at, hi))
            if marks and part.windows.watermark is not None:
                self.metrics.watermark.labels(str(tp[1])).set(part.windows.watermark / 1000)
            settling.append((tp, part, closing))
            lo = hi
        return await self._settle(settling)

    async def _split_marks(self, recs: list[Record]) -> tuple[list[Record], list[_Mark]]:
        """A partition's examples, and the watermark records among them (a watermark
        record that does not parse is dead-lettered with its reason)."""
        examples: list[Record] = []
        marks: list[_Mark] = []
        limit = int(self.clock() * 1000) + self.decoder.config.max_future_ms
        for r in recs:
            if not r.headers or all(k != WATERMARK_HEADER for k, _ in r.headers):
                examples.append(r)
                continue
            wm = _watermark_of(r, limit)
            if isinstance(wm, Rejected):
                await self._reject(r, wm)
                continue
            marks.append(_Mark(len(examples), wm))
            self.metrics.watermarks.inc()
        return examples, marks

    async def _owned(self, tp: TopicPartition) -> _Partition:
        part = self.parts.get(tp)
        if part is None:
            # Never route a partition without its checkpoint (the consume loop assigns
            # first; this keeps a direct caller from windowing it afresh).
            await self.assign(tp)
            part = self.parts[tp]
        return part

    def _unseen(self, part: _Partition, recs: list[Record]) -> list[Record]:
        """The records of a batch not yet routed nor durable."""
        if part.committed is not None and recs and recs[0].offset < part.committed:
            # Below the checkpoint everything is durable already. The consumer may
            # resume from Kafka's committed offset, which can trail the checkpoint
            # (a crash between the two writes, or the client re-reading its committed
            # offset after our seek): never process those records twice.
            before = len(recs)
            recs = [r for r in recs if r.offset >= part.committed]
            self.metrics.replayed.inc(before - len(recs))
        if part.next_offset is not None and recs and recs[0].offset < part.next_offset:
            # Already routed by this owner: the seek to the checkpoint in the
            # rebalance listener can land after the fetcher has delivered records
            # from the group's committed offset, and the same records come again.
            before = len(recs)
            recs = [r for r in recs if r.offset >= part.next_offset]
            self.metrics.replayed.inc(before - len(recs))
        return recs

    async def _route(
        self, tp: TopicPartition, part: _Partition, recs: list[Record], res: BatchResult
    ) -> list[tuple[OpenWindow, CloseReason]]:
        """Route one partition's share of a batch; return the windows it closes."""
        windows = part.windows
        n = len(recs)
        if not n:
            return []
        part.ended = False
        for i, why in res.rejected:
            await self._reject(recs[i], why)
        acc = res.accepted
        offs = np.fromiter(map(_OFFSET, recs), np.int64, n)[acc]
        routed = windows.route_many(offs, res.event_ms)
        for j, late in routed.late:
            t = int(res.event_ms[j])
            await self._reject(
                recs[acc[j]],
                Rejected(
                    Reason.LATE,
                    f"event time {_ts(t).isoformat()} belongs to window starting "
                    f"{_ts(late.bucket).isoformat()}, closed at watermark "
                    f"{_ts(late.watermark).isoformat()}",
                ),
            )
        self.metrics.replayed.inc(routed.skipped)
        accepted = 0
        for w, start, stop in routed.adds:
            writer = part.writers.get(w.window_id)
            if writer is None:
                writer = part.writers[w.window_id] = self._new_writer(w.window_id)
            # Zero-copy slices: the shard writer cuts row groups itself.
            writer.rows.add(res.batch.slice(start, stop - start))
            writer.offsets.add(
                pa.RecordBatch.from_arrays([pa.array(offs[start:stop])], schema=OFFSETS_SCHEMA)
            )
            accepted += stop - start
        if n:
            part.last_read_wall = self.clock()
            part.idle_announced = False
        self.metrics.accepted.inc(accepted)
        if windows.watermark is not None:
            self.metrics.watermark.labels(str(tp[1])).set(windows.watermark / 1000)
        return routed.closing

    async def close_idle(self) -> dict[TopicPartition, int]:
        """Close the open windows of partitions that have been quiet too long."""
        now = self.clock()
        settling: list[_Closing] = []
        for tp, part in list(self.parts.items()):
            if part.windows.open and now - part.last_read_wall >= self.idle_timeout_s:
                closing: list[tuple[OpenWindow, CloseReason]] = []
                for w in list(part.windows.open.values()):
                    part.windows.close(w)
                    closing.append((w, "idle"))
                settling.append((tp, part, closing))
        return await self._settle(settling)

    async def announce_idle(self, position: Callable[[TopicPartition], Awaitable[int]]) -> int:
        """Tell the validator which partitions are quiet with no open window (once per quiet
        spell): a period need not wait for a partition that has nothing for it. Returns how
        many were announced. ``position``: the consumer's next offset of a partition."""
        now = self.clock()
        n = 0
        for tp, part in list(self.parts.items()):
            if part.idle_announced or part.windows.open:
                continue
            if now - part.last_read_wall < self.idle_timeout_s and not part.ended:
                continue
            # After a watermark record, the offset after what was handled: the consumer's
            # position may already be past records fetched for the next poll.
            ended_at = part.next_offset if part.ended else None
            nxt = ended_at if ended_at is not None else await position(tp)
            await self.sink.partition_idle(
                PartitionIdle(
                    id=stable_id("idle", self.stream, tp[0], tp[1], nxt),
                    stream=self.stream,
                    topic=tp[0],
                    partition=tp[1],
                    next_offset=nxt,
                    watermark_ms=part.windows.watermark,
                )
            )
            part.idle_announced = True
            n += 1
        return n

    async def drain(self) -> dict[TopicPartition, int]:
        """On shutdown: make the DLQ durable, checkpoint, return offsets to commit.

        Open windows are not cut short: the next owner rebuilds them from Kafka,
        so a restart does not change how the stream is windowed.
        """
        out: dict[TopicPartition, int] = {}
        for tp in list(self.parts):
            commit = await self.drain_one(tp)
            if commit is not None:
                out[tp] = commit
            self.revoke(tp)
        return out

    async def drain_one(self, tp: TopicPartition) -> int | None:
        await self.sink.flush()
        return (await self._settle([(tp, self.parts[tp], [])], force=True)).get(tp)

    # ------------------------------------------------------------ inner
    def _new_writer(self, window_id: str) -> _Shard:
        uri = f"{self.window_dir(window_id)}/{SHARD_NAME}"
        offsets_uri = f"{self.window_dir(window_id)}/{OFFSETS_NAME}"
        return _Shard(
            ShardWriter(self.decoder.schema, self.store.temp_path(uri), self.batch_rows),
            ShardWriter(OFFSETS_SCHEMA, self.store.temp_path(offsets_uri), self.batch_rows),
            uri,
            offsets_uri,
        )

    async def _reject(self, rec: Record, r: Rejected) -> None:
        self.metrics.rejected.labels(r.reason).inc()
        await self.sink.dead_letter(
            dead_letter(rec.topic, rec.partition, rec.offset, rec.key, rec.value, r)
        )

    def _finish_window(
        self, tp: TopicPartition, part: _Partition, w: OpenWindow, reason: CloseReason
    ) -> WindowClosed:
        shard = part.writers.pop(w.window_id)
        uri = shard.uri
        # The offsets first: whoever finds the shard finds its example ids.
        shard.offsets.finish()
        self.store.publish_file(shard.offsets.path, shard.offsets_uri)
        sha = shard.rows.finish()
        self.store.publish_file(shard.rows.path, uri)
        start, end = part.windows.bounds(w)
        event = WindowClosed(
            window_id=w.window_id,
            stream=self.stream,
            start=_ts(start),
            end=_ts(end),
            example_count=w.count,
            offsets=[OffsetRange(topic=tp[0], partition=tp[1], first=w.first, last=w.last)],
            data_uri=uri,
            sha256=sha,
            close_reason=reason,
            min_event_time=_ts(w.min_t) if w.min_t is not None else None,
            max_event_time=_ts(w.max_t) if w.max_t is not None else None,
            period_ms=self.policy.duration_ms,
        )
        self.store.write_bytes(f"{self.window_dir(w.window_id)}/window.json", event.to_bytes())
        return event

    async def _settle(
        self, settling: list[_Closing], force: bool = False
    ) -> dict[TopicPartition, int]:
        """Make closed windows durable and checkpoint the partitions whose commit point
        moved; return those commit points. Each step is done for all partitions before
        the next, so a poll that closes windows on six partitions waits for the broker
        twice, not twice per partition (docs/architecture.md §4's order holds for each
        partition)."""
        steps: list[tuple[TopicPartition, _Partition, list[WindowClosed], int, int | None]] = []
        for tp, part, closing in settling:
            events = [self._finish_window(tp, part, w, why) for w, why in closing]
            if part.next_offset is None:
                continue
            commit, wm = part.windows.commit_point(part.next_offset)
            if not events and not force and (part.windows.open or commit == part.committed):
                continue
            if commit == part.committed and not events:
                continue
            steps.append((tp, part, events, commit, wm))
        if not steps:
            return {}
        await self.sink.flush()  # DLQ entries below the commit points must be durable
        for tp, part, events, commit, wm in steps:
            part.windows.prune(commit)
            checkpoint: dict[str, Any] = {
                "commit": commit,
                "watermark_ms": wm,
                "closed": [c.__dict__ for c in part.windows.closed],
                "pending": [e.model_dump(mode="json") for e in events],
            }
            self.store.write_bytes(self.checkpoint_uri(tp), orjson.dumps(checkpoint))
        for _, _, events, _, _ in steps:
            for e in events:
                await self.sink.window_closed(e)
        # Every WindowClosed acknowledged before any offset is committed (and before
        # the next checkpoint of its partition drops it from "pending").
        await self.sink.flush()
        now = self.clock()
        out: dict[TopicPartition, int] = {}
        for tp, part, events, commit, _ in steps:
            for e in events:
                self.metrics.windows.labels(e.close_reason).inc()
                self.metrics.window_size.observe(e.example_count)
                self.metrics.close_lag.observe(max(0.0, now - part.last_read_wall))
                log.info(
                    "window closed",
                    extra={
                        "window_id": e.window_id,
                        "count": e.example_count,
                        "why": e.close_reason,
                    },
                )
            part.committed = out[tp] = commit
        self._update_open_gauge()
        return out

    def _update_open_gauge(self) -> None:
        self.metrics.open_windows.set(sum(len(p.windows.open) for p in self.parts.values()))
