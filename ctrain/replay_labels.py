"""``ctrain replay --label-delay``: a labelled file as the live case, examples now and
their labels later, on their own stream.

Each row goes to the model's topic without its label features; its label (those
features) goes to ``ctrain.labels`` ``delay`` later in event time, naming its example by
the id column (a business id) or, without one, by where the broker wrote the example
(``<topic>:<partition>:<offset>``, learnt from its acknowledgement). A seeded fraction
of rows is never labelled. Both streams are sent merged in event-time order, so a paced
replay delivers a label after its example as a live system would.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from ctrain.replay import ReplayError, _due, _epoch_seconds, encode_rows, send_end_of_input
from shared import topics
from shared.ids import example_id
from shared.kafka import make_producer
from shared.settings import CommonSettings

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 7 * 86_400.0}


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or plain seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise ReplayError(f"duration {text!r}: use a number with s, m, h, d or w (e.g. 30d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


@dataclass
class LabelReplaySummary:
    topic: str
    examples: int
    labels: int
    never_labelled: int  # chosen never to be labelled
    unlabelled: int  # without a label in the file
    seconds: float


async def replay_with_labels(
    settings: CommonSettings,
    table: pa.Table,
    *,
    time_column: str,
    label_columns: tuple[str, ...],
    delay_s: float,
    topic: str,
    labels_topic: str = topics.LABELS,
    id_column: str | None = None,
    never_fraction: float = 0.0,
    seed: int = 0,
    model: str | None = None,
    rate: float | None = None,
    speedup: float | None = None,
    progress: Any = None,
    end_of_input: bool = True,
) -> LabelReplaySummary:
    """Send ``table`` (already in event-time order) as examples and delayed labels, then
    (``end_of_input``) a watermark record saying the examples ended."""
    wanted = (*label_columns, time_column, id_column or "")
    missing = [c for c in wanted if c and c not in table.column_names]
    if missing:
        raise ReplayError(
            f"column(s) {', '.join(missing)} not in the file; columns: "
            f"{', '.join(table.column_names)}"
        )
    if not 0.0 <= never_fraction < 1.0:
        raise ReplayError("--never-labelled is a fraction in [0, 1)")
    n = table.num_rows
    times = _filled(_epoch_seconds(table, time_column) or [])
    columns = [table.column(c).to_pylist() for c in label_columns]
    labels = [dict(zip(label_columns, vals, strict=True)) for vals in zip(*columns, strict=True)]
    rng = np.random.default_rng(seed)
    never = rng.random(n) < never_fraction
    blind = table
    for c in label_columns:
        blind = blind.set_column(
            blind.schema.get_field_index(c), c, pa.nulls(n, blind.schema.field(c).type)
        )
    payloads = encode_rows(blind)
    ids = (
        [None if x is None else str(x) for x in table.column(id_column).to_pylist()]
        if id_column
        else None
    )
    # (time, kind, row): kind 0 sends an example, 1 its label; a label never precedes its
    # example, even with a zero delay.
    events: list[tuple[float, int, int]] = [(times[i], 0, i) for i in range(n)]
    unlabelled = sum(1 for x in labels if any(v is None for v in x.values()))
    events += [
        (times[i] + delay_s, 1, i)
        for i in range(n)
        if not never[i] and all(v is not None for v in labels[i].values())
    ]
    ordered = sorted(events)
    clock = [t for t, _, _ in ordered]
    producer = make_producer(settings, linger_ms=20)
    sent_at: dict[int, Any] = {}
    started = time.perf_counter()
    labels_sent = 0
    pending: list[Any] = []
    try:
        await producer.start()
        for k, (t, kind, i) in enumerate(ordered):
            if kind == 0:
                fut = await producer.send(topic, payloads[i])
                if ids is None:
                    sent_at[i] = fut
                pending.append(fut)
            else:
                if ids is not None:
                    name = ids[i]
                else:
                    meta = await sent_at.pop(i)
                    name = example_id(meta.topic, meta.partition, meta.offset)
                if name is None:
                    continue
                values = labels[i]
                body: dict[str, Any] = {
                    "example_id": name,
                    "event_time": _iso(t),
                    **(
                        {"label": next(iter(values.values()))}
                        if len(values) == 1
                        else {"features": values}
                    ),
                }
                if model:
                    body["model"] = model
                pending.append(await producer.send(labels_topic, orjson.dumps(body)))
                labels_sent += 1
            if len(pending) > 512:
                await asyncio.gather(*pending)
                pending = []
                if progress is not None:
                    progress(k + 1, len(ordered))
            delay = _due(started, k + 1, rate, speedup, clock) - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.gather(*pending)
        if end_of_input:
            await send_end_of_input(producer, topic)
        if progress is not None:
            progress(len(ordered), len(ordered))
    finally:
        await producer.stop()
    return LabelReplaySummary(
        topic=topic,
        examples=n,
        labels=labels_sent,
        never_labelled=int(never.sum()),
        unlabelled=unlabelled,
        seconds=time.perf_counter() - started,
    )


def _filled(times: list[float]) -> list[float]:
    """Event times with a missing one taken from the row before (rows keep their order)."""
    out, last = [], 0.0
    for t in times:
        last = last if math.isnan(t) else t
        out.append(last)
    return out


def _iso(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).isoformat()
