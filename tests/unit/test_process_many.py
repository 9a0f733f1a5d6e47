"""One decode for a whole poll: the same windows, letters and commits as partition by partition."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from services.ingest.core import Ingestor
from services.ingest.decode import Decoder, DecoderConfig
from services.ingest.metrics import IngestMetrics
from services.ingest.windowing import WindowPolicy
from shared.artifacts import ArtifactStore
from shared.schema import ExampleSpec, FeatureKind, FeatureSpec
from tests.unit.helpers import ListSink, Rec

pytestmark = pytest.mark.unit
SPEC = ExampleSpec(
    (FeatureSpec("x", FeatureKind.FLOAT, True), FeatureSpec("c", FeatureKind.BYTES, False))
)
TOPIC = "ctrain.examples"


def _partition(p: int, n: int) -> list[Rec]:
    """Records of one partition: mostly clean, some malformed, some missing ``x``, some
    with an event time far behind (late once the partition's watermark moved on)."""
    out = []
    for off in range(n):
        t = 10_000 * off + p
        value = orjson.dumps({"x": off * 0.25, "c": f"p{p}", "t": t})
        if off % 17 == 5 or (p == 2 and off == 0):
            value = b'{"x": '
        elif off % 23 == 7:
            value = orjson.dumps({"c": "no x", "t": t})
        elif off % 29 == 11:
            value = orjson.dumps({"x": 1.0, "t": 5})
        out.append(Rec(TOPIC, p, off, None, value, 0))
    return out


def _ingestor(root: Path, sink: ListSink) -> Ingestor:
    return Ingestor(
        stream="s",
        decoder=Decoder(SPEC, DecoderConfig(event_time_field="t", event_time_unit="ms")),
        policy=WindowPolicy(max_count=40, duration_ms=100_000),
        store=ArtifactStore(str(root)),
        sink=sink,
        metrics=IngestMetrics(CollectorRegistry()),
        batch_rows=16,
        clock=lambda: 2_000_000_000.0,
    )


def _shards(root: Path) -> dict[str, bytes]:
    """Every shard and offsets file, by path (window.json differs by its produced_at)."""
    return {str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*.parquet")}


def test_one_decode_for_all_partitions_changes_nothing(tmp_path: Path) -> None:
    parts = {(TOPIC, p): _partition(p, n) for p, n in ((0, 300), (1, 0), (2, 170), (5, 90))}
    polls = [(0, 70), (70, 200), (200, 300)]

    async def go() -> tuple[ListSink, ListSink, list[dict[object, int]], list[dict[object, int]]]:
        one, many = ListSink(), ListSink()
        a, b = _ingestor(tmp_path / "one", one), _ingestor(tmp_path / "many", many)
        for tp in parts:
            await a.assign(tp)
            await b.assign(tp)
        commits_one: list[dict[object, int]] = []
        commits_many: list[dict[object, int]] = []
        for lo, hi in polls:
            poll = {tp: recs[lo:hi] for tp, recs in parts.items()}
            got: dict[object, int] = {}
            for tp, recs in poll.items():
                c = await a.process(tp, recs)
                if c is not None:
                    got[tp] = c
            commits_one.append(got)
            commits_many.append(dict(await b.process_many(poll)))  # type: ignore[arg-type]
        await a.drain()
        await b.drain()
        return one, many, commits_one, commits_many

    one, many, commits_one, commits_many = asyncio.run(go())
    assert commits_many == commits_one and any(commits_one)
    assert [w.window_id for w in many.windows] == [w.window_id for w in one.windows]
    assert [w.sha256 for w in many.windows] == [w.sha256 for w in one.windows]
    reasons = {letter.reason for letter in one.letters}
    assert {"not_json", "missing_feature", "late"} <= reasons
    assert [(d.source.partition, d.source.offset, d.reason) for d in many.letters] == [
        (d.source.partition, d.source.offset, d.reason) for d in one.letters
    ]
    shards = _shards(tmp_path / "one")
    assert len(shards) == 2 * len(one.windows)
    assert _shards(tmp_path / "many") == shards


class _Recording(ListSink):
    """Logs each broker wait, and which checkpoints exist when a window is sent."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.log: list[str] = []

    async def flush(self) -> None:
        self.log.append("flush")
        await super().flush()

    async def window_closed(self, event: object) -> None:
        checkpoints = sorted(p.name for p in self.root.rglob("_checkpoints/*.json"))
        self.log.append(f"send after {len(checkpoints)} checkpoints")
        await super().window_closed(event)  # type: ignore[arg-type]


def test_a_poll_closing_windows_on_many_partitions_waits_for_the_broker_twice(
    tmp_path: Path,
) -> None:
    # Every partition closes windows in the same poll (by count and by event time).
    parts = {(TOPIC, p): _partition(p, 60) for p in (0, 1, 2)}

    async def go() -> tuple[_Recording, dict[object, int]]:
        sink = _Recording(tmp_path)
        ing = _ingestor(tmp_path, sink)
        for tp in parts:
            await ing.assign(tp)
        commits = await ing.process_many(parts)  # type: ignore[arg-type]
        return sink, dict(commits)

    sink, commits = asyncio.run(go())
    assert set(commits) == set(parts)
    sends = [e for e in sink.log if e.startswith("send")]
    # All three checkpoints are durable before the first window is sent, and the
    # broker is waited on once before them (DLQ) and once after the sends.
    assert len(sends) >= 3 and set(sends) == {"send after 3 checkpoints"}
    assert sink.log == ["flush", *sends, "flush"]
    assert len(sink.windows) == len(sends) and not sink.unflushed
    assert {w.offsets[0].partition for w in sink.windows} == {0, 1, 2}
