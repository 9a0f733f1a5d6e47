"""The label join: labels/s and peak RSS at 100,000 and 1,000,000 labels.

Each size runs in a fresh process against its own redis-server: window shards of
``--shard-rows`` examples with a business id column are written and indexed, then
every example gets one label through the monitor's ``LabelJoin`` in batches of
``--batch`` (the service's ``CTRAIN_MONITOR_LABEL_BATCH_RECORDS``): look-up, claim,
one segment per shard per batch, then the same labels again (duplicates). Beside it,
in the same process, the floor: the same look-ups and claims as bare Redis pipelines
(HMGET + HSETNX), nothing else. Peak RSS (ru_maxrss) must not grow with the count:
labels are held one batch at a time; the index and claims live in Redis, the joined
labels in the artifact store.

    python bench/labels.py [--sizes 100000,1000000] [--batch 5000] [--shard-rows 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ctrain.devstack import start_redis  # noqa: E402
from services.monitor.labeljoin import JoinModel, LabelJoin, Source  # noqa: E402
from services.monitor.labelstate import LabelState  # noqa: E402
from shared.artifacts import ArtifactStore  # noqa: E402
from shared.events import LabelRecord, MemberWindow, WindowValidated  # noqa: E402
from shared.redis import make_redis  # noqa: E402
from shared.settings import CommonSettings  # noqa: E402

END = datetime(2014, 4, 1, tzinfo=UTC)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def shards(root: Path, n: int, per: int) -> list[MemberWindow]:
    out = []
    for k, first in enumerate(range(0, n, per)):
        rows = min(per, n - first)
        d = root / "windows" / "s" / f"w{k:04d}"
        d.mkdir(parents=True)
        ids = pa.array([f"tx-{i}" for i in range(first, first + rows)], pa.string())
        pq.write_table(
            pa.table({"tx": ids, "x": pa.array(range(rows), pa.int64())}), d / "data.parquet"
        )
        out.append(
            MemberWindow(window_id=d.name, data_uri=str(d / "data.parquet"), example_count=rows)
        )
    return out


async def run(n: int, batch: int, per: int, redis_url: str) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="ctrain-bench-labels-"))
    members = shards(tmp, n, per)
    redis = make_redis(CommonSettings(redis_url=redis_url))
    await redis.flushdb()
    letters: list[Any] = []

    async def dead(letter: Any) -> None:
        letters.append(letter)

    join = LabelJoin(
        {"m": JoinModel("m", "s", ("y",), id_field="tx")},
        ArtifactStore(str(tmp)),
        LabelState(redis),
        dead,
        lambda model, outcome, k: None,
    )
    v = WindowValidated(
        id="val-1",
        window_id="period-1",
        stream="s",
        stats_uri="",
        verdict="ok",
        example_count=n,
        window_start=datetime(2014, 1, 1, tzinfo=UTC),
        window_end=END,
        scope="period",
        members=members,
    )
    t0 = time.perf_counter()
    await join.index(v)
    index_s = time.perf_counter() - t0
    rss_indexed = rss_mib()

    def labels(lo: int, hi: int, base: int) -> list[tuple[LabelRecord, Source]]:
        return [
            (
                LabelRecord(example_id=f"tx-{i}", label=float(i % 2), event_time=END),
                Source("ctrain.labels", 0, base + i, ""),
            )
            for i in range(lo, hi)
        ]

    t0 = time.perf_counter()
    joined = 0
    for lo in range(0, n, batch):
        got = await join.join(labels(lo, min(n, lo + batch), 0))
        joined += got["joined"]
    join_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    dup = 0
    for lo in range(0, n, batch):
        dup += (await join.join(labels(lo, min(n, lo + batch), n)))["duplicate"]
    dup_s = time.perf_counter() - t0
    # The floor: the same look-ups and claims as bare pipelines, nothing else.
    await redis.delete("bench:claims")
    t0 = time.perf_counter()
    for lo in range(0, n, batch):
        keys = [f"tx-{i}" for i in range(lo, min(n, lo + batch))]
        await redis.hmget("ctrain:labels:m:ids", keys)
        async with redis.pipeline(transaction=False) as p:
            for k in keys:
                p.hsetnx("bench:claims", k, "1")
            await p.execute()
    floor_s = time.perf_counter() - t0
    info = await redis.info("memory")
    await redis.aclose()
    segments = len(await asyncio.to_thread(lambda: list(tmp.glob("windows/s/*/labels/*.parquet"))))
    return {
        "labels": n,
        "joined": joined,
        "duplicates": dup,
        "dead_letters": len(letters),
        "index_s": index_s,
        "join_per_s": n / join_s,
        "duplicate_per_s": n / dup_s,
        "floor_per_s": n / floor_s,
        "rss_mib_indexed": rss_indexed,
        "rss_mib_peak": rss_mib(),
        "redis_mib": info["used_memory"] / 2**20,
        "segments": segments,
    }


def child(n: int, batch: int, per: int, redis_url: str, out: Any) -> None:
    out.put(asyncio.run(run(n, batch, per, redis_url)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--shard-rows", type=int, default=100_000)
    args = ap.parse_args()
    ctx = multiprocessing.get_context("spawn")
    results = []
    for n in [int(x) for x in args.sizes.split(",")]:
        proc = start_redis(Path(tempfile.mkdtemp(prefix="ctrain-bench-redis-")))
        try:
            q = ctx.Queue()
            p = ctx.Process(target=child, args=(n, args.batch, args.shard_rows, proc.address, q))
            p.start()
            results.append(q.get())
            p.join()
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            os.waitpid(proc.pid, 0)
    print(f"{'labels':>10} {'joined/s':>10} {'dup/s':>10} {'floor/s':>10} {'ratio':>6} "
          f"{'index s':>8} {'RSS MiB':>8} {'redis MiB':>9} {'segments':>8}")  # fmt: skip
    for r in results:
        print(
            f"{r['labels']:>10,} {r['join_per_s']:>10,.0f} {r['duplicate_per_s']:>10,.0f} "
            f"{r['floor_per_s']:>10,.0f} {r['join_per_s'] / r['floor_per_s']:>6.2f} "
            f"{r['index_s']:>8.1f} {r['rss_mib_peak']:>8.0f} {r['redis_mib']:>9.0f} "
            f"{r['segments']:>8}"
        )
    if len(results) > 1:
        a, b = results[0], results[-1]
        print(
            f"peak RSS {b['rss_mib_peak']:.0f} MiB at {b['labels']:,} labels vs "
            f"{a['rss_mib_peak']:.0f} MiB at {a['labels']:,}: "
            f"{b['rss_mib_peak'] / a['rss_mib_peak']:.2f}x for "
            f"{b['labels'] / a['labels']:.0f}x the labels"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
