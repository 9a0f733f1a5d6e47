"""Synthetic streams from real rows: resample a dataset to impose a change, cut it as ingest does.

Backtests and their tests need long streams whose ground truth is known: a step
change, a gradual shift, an oscillation, falling volume, or no change at all.
These helpers resample real rows (with replacement, seeded) so that one
categorical column's share of one value follows a schedule, then write the
result as per-partition event-time windows in the artifact store's layout
(``windows/<stream>/<window_id>/{data.parquet, window.json}``), exactly what
ingest would have written, so the validator's and the backtest's code read them
unchanged. Nothing here knows a dataset: the column, value and shares are
arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shared.events import OffsetRange, WindowClosed
from shared.ids import stable_id


@dataclass(frozen=True)
class Segment:
    """``size`` rows with ``share`` of them having ``column == value`` (None: as sampled)."""

    size: int
    share: float | None = None


def resample(
    table: pa.Table, column: str, value: str, seg: Segment, rng: np.random.Generator
) -> pa.Table:
    """``seg.size`` rows drawn with replacement; the share of ``value`` in ``column`` as asked."""
    if seg.share is None:
        return table.take(pa.array(rng.integers(0, table.num_rows, seg.size)))
    hit = np.asarray(pc.fill_null(pc.equal(table.column(column), value), False))
    yes, no = np.flatnonzero(hit), np.flatnonzero(~hit)
    if not len(yes) or not len(no):
        raise ValueError(f"{column}={value!r} must be present and absent in the rows")
    k = int(rng.binomial(seg.size, seg.share))
    idx = np.concatenate([rng.choice(yes, k), rng.choice(no, seg.size - k)])
    rng.shuffle(idx)
    return table.take(pa.array(idx))


def write_windows(
    periods: Sequence[pa.Table],
    root: str | Path,
    stream: str,
    schema: pa.Schema,
    period_s: int,
    start: datetime = datetime(2020, 1, 1, tzinfo=UTC),
    partitions: int = 1,
    seed: int = 0,
    topic: str = "ctrain.examples",
) -> list[WindowClosed]:
    """Cut each period's rows over ``partitions`` at random (seeded), one window per
    partition and period, as ingest's per-partition tumbling windows would be.
    Returns the WindowClosed events in per-partition order, partitions interleaved."""
    from shared.shard import ShardWriter

    rng = np.random.default_rng(seed)
    offsets = [0] * partitions
    out: list[WindowClosed] = []
    t0 = int(start.timestamp())
    for k, rows in enumerate(periods):
        rows = rows.select(schema.names).cast(schema)
        lo, hi = t0 + k * period_s, t0 + (k + 1) * period_s
        where = rng.integers(0, partitions, rows.num_rows)
        for p in range(partitions):
            part = rows.filter(pa.array(where == p))
            if part.num_rows == 0:
                continue
            first = offsets[p]
            offsets[p] += part.num_rows
            wid = stable_id("win", stream, topic, p, lo * 1000, first)
            d = Path(root) / "windows" / stream / wid
            d.mkdir(parents=True, exist_ok=True)
            w = ShardWriter(schema, str(d / "data.parquet"))
            for batch in part.combine_chunks().to_batches():
                w.add(batch)
            sha = w.finish()
            ev = WindowClosed(
                window_id=wid,
                stream=stream,
                start=datetime.fromtimestamp(lo, UTC),
                end=datetime.fromtimestamp(hi, UTC),
                example_count=part.num_rows,
                offsets=[OffsetRange(topic=topic, partition=p, first=first, last=offsets[p] - 1)],
                data_uri=str(d / "data.parquet"),
                sha256=sha,
                close_reason="watermark",
                period_ms=period_s * 1000,
            )
            (d / "window.json").write_bytes(ev.to_bytes())
            out.append(ev)
    return out


def arrival_orders(events: list[WindowClosed], seed: int) -> list[WindowClosed]:
    """A random interleaving of the partitions that keeps each partition's own order
    (what a consumer of ``ctrain.windows`` may see from a run of ingest)."""
    rng = np.random.default_rng(seed)
    queues: dict[int, list[WindowClosed]] = {}
    for ev in events:
        queues.setdefault(ev.offsets[0].partition, []).append(ev)
    out: list[WindowClosed] = []
    while any(queues.values()):
        live = sorted(p for p, q in queues.items() if q)
        out.append(queues[live[int(rng.integers(0, len(live)))]].pop(0))
    return out
