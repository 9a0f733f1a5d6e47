"""``ctrain replay PATH``: stream a CSV, Parquet or JSON-lines file into ctrain.examples.

Rows go out in event-time order (``--time-column``), optionally paced by a fixed
rate or by the data's own clock sped up. Sending uses aiokafka batches
(``create_batch``) so one core sustains well over 50,000 examples/s.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from aiokafka import errors as kafka_errors

from shared import topics
from shared.kafka import make_producer
from shared.settings import CommonSettings


class ReplayError(ValueError):
    """The input cannot be replayed as asked (unknown format, missing column...)."""


@dataclass
class ReplaySummary:
    path: str
    topic: str
    sent: int
    seconds: float
    partitions: dict[int, int]
    first_event_time: float | None = None
    last_event_time: float | None = None

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else math.inf


def read_table(path: str | Path) -> pa.Table:
    p = Path(path)
    if not p.is_file():
        raise ReplayError(f"{p} does not exist")
    suffix = "".join(p.suffixes[-2:]) if p.suffix == ".gz" else p.suffix
    if suffix in (".csv", ".csv.gz"):
        from pyarrow import csv

        # An empty field is a missing value, for strings too (not an empty string).
        return csv.read_csv(p, convert_options=csv.ConvertOptions(strings_can_be_null=True))
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return pq.read_table(p)
    if suffix in (".jsonl", ".ndjson", ".json", ".jsonl.gz"):
        from pyarrow import json

        return json.read_json(p)
    raise ReplayError(f"{p}: unknown format {suffix!r}; use .csv, .parquet or .jsonl")


def order_by_time(table: pa.Table, time_column: str | None) -> pa.Table:
    if not time_column:
        return table
    if time_column not in table.column_names:
        raise ReplayError(
            f"time column {time_column!r} not in file; columns: {', '.join(table.column_names)}"
        )
    idx = pc.sort_indices(table, sort_keys=[(time_column, "ascending")])
    return table.take(idx)


def encode_rows(table: pa.Table) -> list[bytes]:
    """One compact JSON object per row; nulls are left out (a missing feature)."""
    out: list[bytes] = []
    dumps = orjson.dumps
    for batch in table.to_batches(max_chunksize=16384):
        for row in batch.to_pylist():
            out.append(dumps({k: v for k, v in row.items() if v is not None}))
    return out


def _epoch_seconds(table: pa.Table, time_column: str | None) -> list[float] | None:
    if not time_column:
        return None
    col = table.column(time_column)
    if pa.types.is_timestamp(col.type):
        col = pc.divide(pc.cast(col.cast(pa.timestamp("ms")), pa.int64()), 1000)
    return [float(x) if x is not None else math.nan for x in col.to_pylist()]


async def replay(
    settings: CommonSettings,
    path: str | Path | pa.Table,
    *,
    time_column: str | None = None,
    rate: float | None = None,
    speedup: float | None = None,
    limit: int | None = None,
    repeat: int = 1,
    topic: str = topics.EXAMPLES,
    key_column: str | None = None,
    progress: Any = None,
    end_of_input: bool = True,
) -> ReplaySummary:
    """Send the file's rows; ``progress(sent, total)`` is called as batches go out.
    ``end_of_input``: then tell ingest the input ended (a watermark record on every
    partition), so the last windows close at once instead of after the idle timeout."""
    if rate is not None and speedup is not None:
        raise ReplayError("use --rate or --speedup, not both")
    if speedup is not None and not time_column:
        raise ReplayError("--speedup needs --time-column")
    # A table lets callers (``ctrain demo``) replay a slice of a file in phases.
    table = order_by_time(path if isinstance(path, pa.Table) else read_table(path), time_column)
    if limit is not None:
        table = table.slice(0, limit)
    payloads = encode_rows(table) * repeat
    times = _epoch_seconds(table, time_column)
    times = times * repeat if times else None
    keys = (
        [str(v).encode() for v in table.column(key_column).to_pylist()] * repeat
        if key_column
        else None
    )
    try:
        return await _send(
            settings,
            path,
            table,
            payloads,
            times,
            keys,
            rate,
            speedup,
            topic,
            progress,
            end_of_input,
        )
    except _IDEMPOTENCE_REFUSED as e:
        if not settings.kafka_idempotent:
            raise
        raise ReplayError(
            f"the broker at {settings.kafka_bootstrap} refused an idempotent producer "
            f"({type(e).__name__}: {e}); for a broker without idempotence support set "
            "CTRAIN_KAFKA_IDEMPOTENT=false (a retried send may then be delivered twice)"
        ) from e


async def send_end_of_input(producer: Any, topic: str) -> None:
    """A watermark record saying "input ended" on every partition of ``topic``, after
    everything sent before it (docs/ingest.md, "Watermark records")."""
    futures = [
        await producer.send(
            topic, b"", partition=p, headers=[(topics.WATERMARK_HEADER, topics.END_OF_INPUT)]
        )
        for p in sorted(await producer.partitions_for(topic))
    ]
    await asyncio.gather(*futures)


# What brokers without idempotent producers answer to InitProducerId.
_IDEMPOTENCE_REFUSED = (
    kafka_errors.UnknownError,
    kafka_errors.UnsupportedVersionError,
    kafka_errors.ClusterAuthorizationFailedError,
)


async def _send(
    settings: CommonSettings,
    path: str | Path | pa.Table,
    table: pa.Table,
    payloads: list[bytes],
    times: list[float] | None,
    keys: list[bytes] | None,
    rate: float | None,
    speedup: float | None,
    topic: str,
    progress: Any,
    end_of_input: bool,
) -> ReplaySummary:
    producer = make_producer(settings, linger_ms=20)
    parts: dict[int, int] = {}
    total = len(payloads)
    started = time.perf_counter()
    try:
        await producer.start()
        partitions = sorted(await producer.partitions_for(topic))
        futures = []
        i = 0
        rr = 0
        while i < total:
            if keys is None:
                part = partitions[rr % len(partitions)]
                rr += 1
                batch = producer.create_batch()
                j = i
                while j < total:
                    # A paced replay never runs ahead of its clock: a batch that spans
                    # months of event time would arrive as one burst, then go silent
                    # long enough for ingest to close windows as idle.
                    if j > i and _due(started, j + 1, rate, speedup, times) > time.perf_counter():
                        break
                    if batch.append(key=None, value=payloads[j], timestamp=None) is None:
                        break
                    j += 1
                if j == i:
                    raise ReplayError(f"row {i} is larger than a Kafka batch")
                batch.close()
                futures.append(await producer.send_batch(batch, topic, partition=part))
                parts[part] = parts.get(part, 0) + (j - i)
            else:
                # Keyed rows keep one key's examples in one partition, in order.
                j = min(i + 1000, total)
                for k in range(i, j):
                    futures.append(await producer.send(topic, payloads[k], key=keys[k]))
            await _pace(started, i, j, rate, speedup, times)
            i = j
            if progress is not None:
                progress(i, total)
            if len(futures) > 256:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
        if end_of_input:
            await send_end_of_input(producer, topic)
        if keys is not None:
            parts = {-1: total}
    finally:
        await producer.stop()
    return ReplaySummary(
        path="<table>" if isinstance(path, pa.Table) else str(path),
        topic=topic,
        sent=total,
        seconds=time.perf_counter() - started,
        partitions=parts,
        first_event_time=times[0] if times else None,
        last_event_time=times[-1] if times else None,
    )


def _due(
    started: float, j: int, rate: float | None, speedup: float | None, times: list[float] | None
) -> float:
    """When the first ``j`` rows are due to have been sent (0: no pacing)."""
    if rate:
        return started + j / rate
    if speedup and times:
        return started + (times[j - 1] - times[0]) / speedup
    return 0.0


async def _pace(
    started: float,
    i: int,
    j: int,
    rate: float | None,
    speedup: float | None,
    times: list[float] | None,
) -> None:
    delay = _due(started, j, rate, speedup, times) - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
