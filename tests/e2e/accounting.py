"""Every label record of ``ctrain.labels`` accounted for, from what the loop left behind:
joined (its source position in a label segment beside a shard), a duplicate of a joined
label, or dead-lettered with its reason; and no example joined twice."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from shared import topics
from shared.events import DeadLetter, EventDeadLetter
from shared.ids import example_id
from shared.kafka import read_to_end


def account(state: dict[str, Any], root: Path) -> dict[str, Any]:
    """Every label record of ctrain.labels: joined, a duplicate, or dead-lettered."""
    records = asyncio.run(read_to_end(state["kafka"], topics.LABELS))
    letters = [
        EventDeadLetter.model_validate_json(r.value)
        for r in asyncio.run(read_to_end(state["kafka"], topics.EVENTS_DLQ))
    ]
    dead = {
        (x.source.partition, x.source.offset): x.reason
        for x in letters
        if x.source.topic == topics.LABELS
    }
    joined: dict[tuple[int, int], tuple[str, int, str]] = {}
    per_example: dict[tuple[str, int], set[tuple[int, int]]] = {}
    label_of: dict[str, str] = {}
    for seg in root.glob("windows/taxi/*/labels/*.parquet"):
        t = pq.read_table(seg).to_pylist()
        for r in t:
            src = (r["src_partition"], r["src_offset"])
            joined[src] = (seg.parent.parent.name, r["row"], r["features"])
            per_example.setdefault((seg.parent.parent.name, r["row"]), set()).add(src)
            label_of[r["example_id"]] = r["features"]
    out: Counter[str] = Counter()
    missing = []
    for rec in records:
        src = (rec.partition, rec.offset)
        if src in joined:
            out["joined"] += 1
        elif src in dead:
            out[dead[src]] += 1
        else:
            body = orjson.loads(rec.value)
            same = label_of.get(body["example_id"])
            if same is not None and orjson.loads(same) == {"tips": body["label"]}:
                out["duplicate"] += 1
            else:
                missing.append(body)
    # Examples ingest rejected (two trips lack pickup_community_area): their labels name
    # no example, by business id or by offset id.
    rejected: set[str] = set()
    for r in asyncio.run(read_to_end(state["kafka"], topics.EXAMPLES_DLQ)):
        letter = DeadLetter.model_validate_json(r.value)
        src = letter.source
        rejected.add(example_id(src.topic, src.partition, src.offset))
        with contextlib.suppress(orjson.JSONDecodeError):  # not JSON: its offset id only
            body = orjson.loads(letter.payload)
            if isinstance(body, dict) and body.get("trip_id"):
                rejected.add(str(body["trip_id"]))
    orphans = sum(1 for r in records if orjson.loads(r.value)["example_id"] in rejected)
    return {
        "produced": len(records),
        "orphans": orphans,
        "outcomes": out,
        "unaccounted": missing,
        "joined_twice": [k for k, v in per_example.items() if len(v) > 1],
    }


def account_when(
    state: dict[str, Any], root: Path, done: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    """:func:`account` probed until ``done`` holds of it or ``timeout`` runs out (the
    monitor joins redelivered labels and gives held ones up on its own upkeep, every
    30 s); the last account either way, for the caller's assertions to read."""
    deadline = time.monotonic() + timeout
    while True:
        got = account(state, root)
        if done(got) or time.monotonic() > deadline:
            return got
        time.sleep(2)  # probe interval: reading the topics and segments is the probe
