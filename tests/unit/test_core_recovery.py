"""The ingest guarantee at the core level: crashes anywhere lose nothing, double nothing.

Kafka is modelled by a list of records plus a committed offset; the artifact store
is real (a temp dir). A "crash" drops the core object with its open windows and
unflushed DLQ entries; the restart goes through the same ``assign`` path the
service uses.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from services.ingest.core import Ingestor
from services.ingest.decode import Decoder, DecoderConfig
from services.ingest.metrics import IngestMetrics
from services.ingest.windowing import WindowPolicy
from shared.artifacts import ArtifactStore
from shared.schema import ExampleSpec, FeatureKind, FeatureSpec
from shared.shard import offsets_uri, read_shard
from tests.unit.helpers import Crash, ListSink, Rec

pytestmark = pytest.mark.unit
SPEC = ExampleSpec(
    (FeatureSpec("x", FeatureKind.FLOAT, True), FeatureSpec("c", FeatureKind.BYTES, False))
)
TP = ("ctrain.examples", 0)
NOW = 2_000_000_000.0


def make_records(items: list[tuple[int, bool]]) -> list[Rec]:
    out = []
    for off, (t, ok) in enumerate(items):
        value = orjson.dumps({"x": off * 0.5, "c": f"k{off % 3}", "t": t}) if ok else b"{oops"
        out.append(Rec(TP[0], TP[1], off, None, value, 0))
    return out


def ingestor(
    store: ArtifactStore, sink: ListSink, policy: WindowPolicy, clock: list[float]
) -> Ingestor:
    return Ingestor(
        stream="s",
        decoder=Decoder(SPEC, DecoderConfig(event_time_field="t", event_time_unit="ms")),
        policy=policy,
        store=store,
        sink=sink,
        metrics=IngestMetrics(CollectorRegistry()),
        batch_rows=4,
        idle_timeout_s=10,
        clock=lambda: clock[0],
    )


async def run(
    tmp: Path,
    records: list[Rec],
    policy: WindowPolicy,
    crashes: list[int],
    publish_crash: int | None,
    batch: int,
) -> ListSink:
    store = ArtifactStore(str(tmp))
    sink = ListSink(crash_on_publish=publish_crash)
    clock = [NOW]
    committed: int | None = None
    crash_at = sorted(set(crashes))
    while True:
        ing = ingestor(store, sink, policy, clock)
        crashed = False
        try:
            # A crash can also hit the restart itself (republishing the last close).
            resume = await ing.assign(TP)
            pos = resume if resume is not None else (committed or 0)
            while pos < len(records):
                end = min(pos + batch, len(records))
                if crash_at and crash_at[0] < end:
                    end = max(crash_at.pop(0), pos)
                    if end > pos:
                        c = await ing.process(TP, records[pos:end])
                        committed = c if c is not None else committed
                    raise Crash("SIGKILL")
                c = await ing.process(TP, records[pos:end])
                committed = c if c is not None else committed
                pos = end
            clock[0] += 60  # the stream goes quiet: idle close flushes the rest
            for _, c in (await ing.close_idle()).items():
                committed = c
        except Crash:
            crashed = True
            sink.lose_unflushed()
        if not crashed:
            return sink
        clock[0] += 1


def check(reference: ListSink, crashed: ListSink, n_records: int) -> None:
    contents: dict[str, tuple[str, int]] = {}
    for w in crashed.windows:
        prev = contents.setdefault(w.window_id, (w.sha256, w.example_count))
        assert prev == (w.sha256, w.example_count), (
            f"window {w.window_id} published twice, differently"
        )
    ref = {w.window_id: (w.sha256, w.example_count) for w in reference.windows}
    assert contents == ref
    dlq = {d.id for d in crashed.letters}
    assert dlq == {d.id for d in reference.letters}
    assert sum(c for _, c in contents.values()) + len(dlq) == n_records


items = st.lists(
    st.tuples(st.integers(0, 12_000), st.booleans().map(lambda b: b or False) | st.just(True)),
    min_size=1,
    max_size=120,
)


@given(
    items=items,
    n=st.integers(1, 30),
    dur=st.sampled_from([None, 1000, 3000]),
    lateness=st.integers(0, 2000),
    crashes=st.lists(st.integers(0, 120), max_size=4),
    publish_crash=st.none() | st.integers(0, 3),
    batch=st.integers(1, 40),
)
@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_crashes_lose_nothing_and_double_nothing(
    tmp_path_factory: pytest.TempPathFactory,
    items: list[tuple[int, bool]],
    n: int,
    dur: int | None,
    lateness: int,
    crashes: list[int],
    publish_crash: int | None,
    batch: int,
) -> None:
    policy = WindowPolicy(max_count=n, duration_ms=dur, allowed_lateness_ms=lateness)
    records = make_records(items)
    ref = asyncio.run(run(tmp_path_factory.mktemp("ref"), records, policy, [], None, batch))
    got = asyncio.run(
        run(tmp_path_factory.mktemp("crash"), records, policy, crashes, publish_crash, batch)
    )
    check(ref, got, len(records))


def test_shards_hold_exactly_the_window_rows(tmp_path: Path) -> None:
    records = make_records([(t, True) for t in range(0, 5000, 100)])
    policy = WindowPolicy(max_count=7, duration_ms=1000)
    sink = asyncio.run(run(tmp_path, records, policy, [13, 31], 1, 5))
    seen = []
    for w in {w.window_id: w for w in sink.windows}.values():
        table = read_shard(w.data_uri)
        assert table.num_rows == w.example_count
        xs = table.column("x").to_pylist()
        seen.extend(xs)
        assert w.offsets[0].first <= min(xs) * 2 and max(xs) * 2 <= w.offsets[0].last
        assert w.start.timestamp() * 1000 % 1000 == 0 and (w.end - w.start).total_seconds() == 1.0
    assert sorted(seen) == [r * 0.5 for r in range(50)]
    # Readers only ever see complete shards: every visible data.parquet opens.
    for shard in tmp_path.glob("windows/s/*/data.parquet"):
        assert read_shard(str(shard)).num_rows > 0


def test_records_delivered_again_to_the_same_owner_count_once(tmp_path: Path) -> None:
    """The rebalance listener's seek can follow a fetch from the committed offset:
    the owner sees 0..k, then 0..n again. Each record still lands in one window once."""
    records = make_records([(t, True) for t in range(0, 5000, 100)])
    policy = WindowPolicy(max_count=100, duration_ms=1000)
    sink = ListSink()
    clock = [NOW]

    async def go() -> None:
        ing = ingestor(ArtifactStore(str(tmp_path)), sink, policy, clock)
        await ing.assign(TP)
        await ing.process(TP, records[:23])
        await ing.process(TP, records)  # the seek: the same owner reads from 0 again
        clock[0] += 60
        await ing.close_idle()

    asyncio.run(go())
    assert sum(w.example_count for w in sink.windows) == len(records)
    assert sorted(
        x for w in sink.windows for x in read_shard(w.data_uri).column("x").to_pylist()
    ) == [r * 0.5 for r in range(50)]


def test_quiet_partitions_with_nothing_open_are_announced_idle_once(tmp_path: Path) -> None:
    async def go() -> None:
        sink, clock = ListSink(), [NOW]
        core = ingestor(ArtifactStore(str(tmp_path)), sink, WindowPolicy(None, 1000), clock)
        empty = ("ctrain.examples", 1)
        await core.assign(TP)
        await core.assign(empty)

        async def position(tp: tuple[str, int]) -> int:
            return {TP: 3, empty: 0}[tp]

        await core.process(TP, make_records([(10, True), (20, True), (30, True)]))
        clock[0] += 11
        assert await core.announce_idle(position) == 1  # partition 0 still has a window open
        assert [(i.partition, i.next_offset, i.watermark_ms) for i in sink.idle] == [(1, 0, None)]
        await core.close_idle()  # partition 0's window closes as idle...
        assert await core.announce_idle(position) == 1  # ...then partition 0 is idle too
        assert (sink.idle[-1].partition, sink.idle[-1].next_offset) == (0, 3)
        assert sink.idle[-1].watermark_ms == 30
        assert await core.announce_idle(position) == 0  # once per quiet spell
        await core.process(TP, [Rec(TP[0], 0, 3, None, orjson.dumps({"x": 1, "t": 40}), 0)])
        clock[0] += 11
        await core.close_idle()
        assert await core.announce_idle(position) == 1  # quiet again after new data

    asyncio.run(go())


def test_each_row_keeps_its_source_offset_through_crashes(tmp_path: Path) -> None:
    """offsets.parquet beside each shard: row i's offset, rejects and crashes notwithstanding
    (the example ids that delayed labels join on)."""
    items = [(t, t % 700 != 0) for t in range(0, 6000, 100)]  # every 7th record is bad
    records = make_records(items)
    policy = WindowPolicy(max_count=6, duration_ms=1000)
    sink = asyncio.run(run(tmp_path, records, policy, [9, 22], 1, 4))
    windows = {w.window_id: w for w in sink.windows}.values()
    kept = []
    for w in windows:
        offsets = pq.read_table(offsets_uri(w.data_uri)).column("offset").to_pylist()
        xs = read_shard(w.data_uri).column("x").to_pylist()
        assert offsets == [int(x * 2) for x in xs]  # the record at offset o has x = o / 2
        assert w.offsets[0].first == offsets[0] and w.offsets[0].last == offsets[-1]
        kept += offsets
    bad = {i for i, (_, ok) in enumerate(items) if not ok}
    assert sorted(kept) == [i for i in range(len(items)) if i not in bad]
