"""Ingest throughput: ctrain.examples -> durable Parquet shards + WindowClosed.

Prints examples/s for one ingest process (the service's own ``ConsumeLoop`` over a
real aiokafka consumer, real decode and schema checks, real shards and events)
beside two bare consume + orjson decode loops over the same topic (aiokafka, and
librdkafka's batch consume), and two ingest processes sharing the topic's six
partitions (three each, as two members of one group get them), in the same run,
alternating, median of N. Every loop runs with the service's collector setting
(``CTRAIN_INGEST_GC_YOUNG_THRESHOLD``); the ingest loops poll
``CTRAIN_INGEST_POLL_MAX_RECORDS`` records, the bare ones 10,000 (their faster).

Then the peak RSS of one ingest process over those examples and over 1,000,000
(``--rss-rows``), which must not grow with the number of examples.

    python bench/ingest.py [--rows 104863] [--runs 3] [--rss-rows 1000000]

Starts its own Tansu broker unless CTRAIN_KAFKA_BOOTSTRAP is set.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ctrain.devstack import start_tansu  # noqa: E402
from ctrain.replay import replay  # noqa: E402
from services.ingest.core import Ingestor  # noqa: E402
from services.ingest.decode import Decoder, DecoderConfig  # noqa: E402
from services.ingest.gc_tuning import gc_tuned  # noqa: E402
from services.ingest.kafka_io import ConsumeLoop, KafkaSink  # noqa: E402
from services.ingest.metrics import IngestMetrics  # noqa: E402
from services.ingest.settings import IngestSettings  # noqa: E402
from services.ingest.streams import Streams  # noqa: E402
from services.ingest.windowing import WindowPolicy  # noqa: E402
from shared import topics  # noqa: E402
from shared.artifacts import ArtifactStore  # noqa: E402
from shared.kafka import ensure_topics, make_producer  # noqa: E402
from shared.schema import example_spec, load_schema  # noqa: E402
from shared.settings import CommonSettings  # noqa: E402

CSV = ROOT / "examples" / "taxi" / "data" / "taxi_2013_2014.csv"
# The service's collector setting, for every loop here, bare ones included: a bare
# loop holds a poll's records alive as ingest does, and gains from it as much.
GC = IngestSettings().gc_young_threshold
POLL = IngestSettings().poll_max_records  # records per poll of the ingest loops
# The bare loops' poll: both ran faster at 10,000 records than at 20,000 here.
BARE_POLL = 10_000
SCHEMA = ROOT / "examples" / "taxi" / "data" / "schema.pbtxt"


class Rate:
    """Examples/s from the end of the first poll that brought records: the consumer's
    start-up (metadata, the first fetch) is not the loop's speed, for any loop."""

    def __init__(self) -> None:
        self.n = 0
        self.t0: float | None = None
        self.first = 0

    def add(self, k: int) -> None:
        if self.t0 is None and k:
            self.t0, self.first = time.perf_counter(), k
        self.n += k

    def rate(self) -> float:
        assert self.t0 is not None
        return (self.n - self.first) / (time.perf_counter() - self.t0)


async def assigned_consumer(
    bootstrap: str, group: str | None = None, share: tuple[int, int] = (0, 1)
) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    """A consumer on the examples topic's partitions; ``share`` (k, n): every n-th from k,
    the split two members of one group get."""
    c = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=32 << 20,
    )
    await c.start()
    k, n = share
    parts = sorted(c.partitions_for_topic(topics.EXAMPLES) or [])
    tps = [TopicPartition(topics.EXAMPLES, p) for p in parts if p % n == k]
    c.assign(tps)
    await c.seek_to_beginning(*tps)
    return c, tps


async def bare(bootstrap: str, total: int) -> float:
    c, _ = await assigned_consumer(bootstrap)
    r = Rate()
    loads = orjson.loads
    try:
        while r.n < total:
            k = 0
            for recs in (await c.getmany(timeout_ms=500, max_records=BARE_POLL)).values():
                for rec in recs:
                    loads(rec.value)
                k += len(recs)
            r.add(k)
        return r.rate()
    finally:
        await c.stop()


def bare_librdkafka(bootstrap: str, total: int) -> float:
    """The fastest bare loop found here: librdkafka's batch consume (confluent-kafka),
    its fetcher on its own threads, and orjson per record."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer
    from confluent_kafka import TopicPartition as CTP

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-bare-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 32 << 20,
            "max.partition.fetch.bytes": 8 << 20,
        }
    )
    meta = c.list_topics(topics.EXAMPLES, timeout=10).topics[topics.EXAMPLES]
    c.assign([CTP(topics.EXAMPLES, p, OFFSET_BEGINNING) for p in sorted(meta.partitions)])
    r = Rate()
    loads = orjson.loads
    try:
        while r.n < total:
            msgs = c.consume(num_messages=BARE_POLL, timeout=0.5)
            for m in msgs:
                loads(m.value() or b"")
            r.add(len(msgs))
        return r.rate()
    finally:
        c.close()


async def ingest(
    settings: CommonSettings, total: int, root: str, share: tuple[int, int] = (0, 1)
) -> tuple[float, int, int]:
    c, tps = await assigned_consumer(settings.kafka_bootstrap, f"bench-{root}", share)
    producer = make_producer(settings)
    await producer.start()
    clock = [time.time()]
    spec = example_spec(load_schema(SCHEMA))
    ing = Ingestor(
        stream="bench",
        decoder=Decoder(spec, DecoderConfig(event_time_field="trip_start_timestamp")),
        policy=WindowPolicy(max_count=10_000),
        store=ArtifactStore(root),
        sink=KafkaSink(producer),
        metrics=IngestMetrics(CollectorRegistry()),
        idle_timeout_s=1.0,
        clock=lambda: clock[0],
    )
    for tp in tps:
        await ing.assign((tp.topic, tp.partition))
    loop = _Measured(c, Streams({topics.EXAMPLES: ing}), POLL, total, clock)
    try:
        await loop.run()  # the service's own poll loop, until ``total`` examples
        clock[0] += 3600  # the end of the stream: close what is open, durably
        await loop._commit(await ing.close_idle())
        rate = loop.rate.rate()
        windows = len(os.listdir(Path(root) / "windows" / "bench")) - 1
        return rate, windows, loop.rate.n
    finally:
        await c.stop()
        await producer.stop()


class _Measured(ConsumeLoop):
    """The service's consume loop (prefetch, one decode and one commit per poll), on
    assigned partitions, stopping after ``total`` examples."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        streams: Streams,
        max_records: int,
        total: int,
        clock: list[float],
    ) -> None:
        super().__init__(consumer, streams, max_records)
        self.total, self.clock, self.rate = total, clock, Rate()

    async def _handle(self, batch: dict[TopicPartition, list[Any]]) -> None:
        self.clock[0] = time.time()
        await super()._handle(batch)
        self.rate.add(sum(len(recs) for recs in batch.values()))
        if self.rate.n >= self.total:
            self.stop()


def _member(bootstrap: str, total: int, root: str, k: int, out: Any) -> None:
    """One of two ingest processes: half of the partitions, its own core."""
    settings = CommonSettings(kafka_bootstrap=bootstrap, kafka_idempotent=False)
    with gc_tuned(GC):
        rate, _, n = asyncio.run(ingest(settings, total, root, (k, 2)))
    out.put((n, n / rate))


def _rss_member(bootstrap: str, total: int, root: str, out: Any) -> None:
    """One ingest core in a process of its own: its peak RSS after ``total`` examples."""
    import resource

    settings = CommonSettings(kafka_bootstrap=bootstrap, kafka_idempotent=False)
    with gc_tuned(GC):
        rate, _, n = asyncio.run(ingest(settings, total, root))
    out.put((n, rate, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def peak_rss(bootstrap: str, total: int, root: str) -> tuple[int, float, float]:
    """(examples, rate, peak RSS in MiB) of one ingest process reading ``total`` examples."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_rss_member, args=(bootstrap, total, root, out))
    p.start()
    got = out.get(timeout=1800)
    p.join()
    return got


def two_processes(bootstrap: str, halves: list[int], root: str) -> float:
    """Both halves at once in two processes; the rate is all examples over the slower."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_member, args=(bootstrap, halves[k], f"{root}/m{k}", k, out))
        for k in (0, 1)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return sum(n for n, _ in results) / max(t for _, t in results)


async def main(rows: int, runs: int, rss_rows: int) -> None:
    bootstrap = os.environ.get("CTRAIN_KAFKA_BOOTSTRAP")
    tmp = tempfile.mkdtemp(prefix="ctrain-bench-")
    broker = None
    if not bootstrap:
        broker = start_tansu(Path(tmp))
        bootstrap = broker.address
    try:
        await _measure(bootstrap, tmp, rows, runs)
        if rss_rows:
            await _memory(bootstrap, tmp, rss_rows)
    finally:
        if broker is not None:
            os.kill(broker.pid, signal.SIGTERM)


async def _measure(bootstrap: str, tmp: str, rows: int, runs: int) -> None:
    settings = CommonSettings(kafka_bootstrap=bootstrap, kafka_idempotent=False)
    # Six partitions: one process reads them all, or two share them (three each).
    await ensure_topics(settings, partitions=6)
    repeat = -(-rows // 9533)
    # Examples only (no end-of-input record): the bare loops parse every record as one.
    s = await replay(
        settings, CSV, time_column="trip_start_timestamp", repeat=repeat, end_of_input=False
    )
    total = s.sent
    print(f"produced {total:,} taxi examples over 6 partitions ({s.rate:,.0f}/s replay)")
    halves = [await _count(bootstrap, (k, 2)) for k in (0, 1)]
    bare_rates, rd_rates, ingest_rates, two_rates = [], [], [], []
    for i in range(runs):
        with gc_tuned(GC):
            bare_rates.append(await bare(bootstrap, total))
            rd_rates.append(bare_librdkafka(bootstrap, total))
            rate, windows, _ = await ingest(settings, total, f"{tmp}/run{i}")
        ingest_rates.append(rate)
        two_rates.append(two_processes(bootstrap, halves, f"{tmp}/two{i}"))
        print(
            f"run {i}: bare {bare_rates[-1]:,.0f}/s  librdkafka bare {rd_rates[-1]:,.0f}/s"
            f"  ingest {rate:,.0f}/s  ({windows} windows)"
            f"  two processes {two_rates[-1]:,.0f}/s"
        )
    b, r, g, t = (statistics.median(x) for x in (bare_rates, rd_rates, ingest_rates, two_rates))
    print(f"median bare aiokafka+orjson loop:       {b:,.0f} examples/s")
    print(f"median bare librdkafka+orjson loop:     {r:,.0f} examples/s")
    print(f"median ingest to durable shards:        {g:,.0f} examples/s")
    print(f"median two ingest processes (3+3 parts): {t:,.0f} examples/s ({t / g:.2f}x one)")
    print(f"ratio ingest/bare aiokafka: {g / b:.2f}  ingest/fastest bare: {g / max(b, r):.2f}")
    print("(targets: >= 100,000/s and >= 0.5 of the fastest bare loop)")


async def _memory(bootstrap: str, tmp: str, rows: int) -> None:
    """Peak RSS of one ingest process over the topic as it is, then over ``rows``
    examples: bounded memory means the second is not ~10x the first."""
    settings = CommonSettings(kafka_bootstrap=bootstrap, kafka_idempotent=False)
    have = sum([await _count(bootstrap, (k, 2)) for k in (0, 1)])
    n1, r1, m1 = peak_rss(bootstrap, have, f"{tmp}/rss-small")
    if rows > have:
        more = -(-(rows - have) // 9533)
        s = await replay(
            settings, CSV, time_column="trip_start_timestamp", repeat=more, end_of_input=False
        )
        print(f"produced {s.sent:,} more ({s.rate:,.0f}/s replay)")
    total = sum([await _count(bootstrap, (k, 2)) for k in (0, 1)])
    n2, r2, m2 = peak_rss(bootstrap, total, f"{tmp}/rss-large")
    print(f"peak RSS of one ingest process: {m1:,.0f} MiB after {n1:,} examples ({r1:,.0f}/s)")
    print(f"peak RSS of one ingest process: {m2:,.0f} MiB after {n2:,} examples ({r2:,.0f}/s)")
    print(f"{n2 / n1:.1f}x the examples, {m2 / m1:.2f}x the peak RSS")


async def _count(bootstrap: str, share: tuple[int, int]) -> int:
    """How many examples a member with ``share`` of the partitions will read."""
    c, tps = await assigned_consumer(bootstrap, None, share)
    try:
        ends = await c.end_offsets(tps)
        starts = await c.beginning_offsets(tps)
        return sum(ends[tp] - starts[tp] for tp in tps)
    finally:
        await c.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=104_863)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--rss-rows",
        type=int,
        default=1_000_000,
        help="then peak RSS of one process over the topic and over this many (0: skip)",
    )
    a = ap.parse_args()
    asyncio.run(main(a.rows, a.runs, a.rss_rows))
