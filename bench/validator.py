"""Validator throughput: WindowClosed -> WindowValidated on 100,000-row taxi windows.

Times the whole core path (read the Parquet shard, TFDV statistics, anomalies,
drift against the predecessor, skew against the first window, artifacts) beside
bare ``tfdv.generate_statistics_from_dataframe`` on the same rows (DataFrame
already built), in the same run, median of N windows.

    python bench/validator.py [--rows 100000] [--windows 3]

``--scale 1000000,10000000 [--repeat 3]`` measures memory against window size instead
(medians of the rounds): each window
(the taxi trips repeated, written row group by row group, never held whole) is judged
by a fresh process, after a small baseline window, and the bench prints rows/s and the
process's peak RSS for each size beside bare ``generate_statistics_from_dataframe`` on
the smallest size (the figure a TFDV user sees, tensorflow/data-validation #26, #98).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
from prometheus_client import CollectorRegistry
from pyarrow import csv

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.validator import checks  # noqa: E402
from services.validator.core import Validator, ValidatorConfig  # noqa: E402
from services.validator.index import WindowRef  # noqa: E402
from services.validator.metrics import ValidatorMetrics  # noqa: E402
from services.validator.schemas import SchemaStore  # noqa: E402
from shared.artifacts import ArtifactStore  # noqa: E402
from shared.events import OffsetRange, WindowClosed  # noqa: E402
from shared.schema import example_spec, load_schema  # noqa: E402
from shared.shard import ShardWriter, arrow_schema  # noqa: E402

CSV = ROOT / "examples" / "taxi" / "data" / "taxi_2013_2014.csv"
SCHEMA = ROOT / "examples" / "taxi" / "data" / "schema.pbtxt"


class Index:
    """In-process stand-in for the Redis index (not what is measured)."""

    def __init__(self) -> None:
        self.refs: dict[str, WindowRef] = {}

    async def add(self, ref: WindowRef) -> None:
        self.refs[ref.window_id] = ref

    async def get(self, window_id: str) -> WindowRef | None:
        return self.refs.get(window_id)

    async def predecessors(self, stream: str, start_ms: int) -> list[WindowRef]:
        prev = [r for r in self.refs.values() if r.start_ms < start_ms]
        return [max(prev, key=lambda r: r.start_ms)] if prev else []

    async def first(self, stream: str) -> list[WindowRef]:
        return [min(self.refs.values(), key=lambda r: r.start_ms)] if self.refs else []

    async def serving_windows(self, model: str) -> list[str] | None:
        return None


def validator(root: Path) -> Validator:
    """The core as the bench measures it: the taxi schema, an in-process index."""
    store = ArtifactStore(str(root))
    return Validator(
        store=store,
        schemas=SchemaStore(store, str(SCHEMA)),
        index=Index(),
        metrics=ValidatorMetrics(CollectorRegistry()),
        config=ValidatorConfig(
            defaults=checks.Defaults(ignore=frozenset({"trip_start_timestamp"})),
            policy=checks.AnomalyPolicy(frozenset({"SCHEMA_MISSING_COLUMN"})),
        ),
    )


def rows(n: int) -> pa.Table:
    schema = arrow_schema(example_spec(load_schema(SCHEMA)))
    t = csv.read_csv(CSV, convert_options=csv.ConvertOptions(strings_can_be_null=True))
    t = t.select(schema.names).cast(schema)
    reps = -(-n // t.num_rows)
    return pa.concat_tables([t] * reps).slice(0, n)


def write_window(root: Path, k: int, table: pa.Table) -> WindowClosed:
    path = root / "windows" / "bench" / f"win-{k}" / "data.parquet"
    path.parent.mkdir(parents=True)
    w = ShardWriter(table.schema, str(path))
    for b in table.to_batches(max_chunksize=8192):
        w.add(b)
    start = datetime(2013, 1, 1, tzinfo=UTC) + timedelta(days=91 * k)
    return WindowClosed(
        window_id=f"win-{k}",
        stream="bench",
        start=start,
        end=start + timedelta(days=91),
        example_count=table.num_rows,
        offsets=[OffsetRange(topic="t", partition=0, first=0, last=table.num_rows - 1)],
        data_uri=str(path),
        sha256=w.finish(),
    )


async def main(n: int, windows: int) -> None:
    import tensorflow_data_validation as tfdv

    root = Path(tempfile.mkdtemp(prefix="ctrain-bench-val-"))
    table = rows(n)
    df = table.to_pandas()
    events = [write_window(root, k, table) for k in range(windows + 1)]
    v = validator(root)
    tfdv.generate_statistics_from_dataframe(df.head(1000))  # warm both paths' imports
    await v.handle(events[0])  # the baseline window
    ours, bare = [], []
    for ev in events[1:]:
        t0 = time.perf_counter()
        tfdv.generate_statistics_from_dataframe(df)
        bare.append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        result = await v.handle(ev)
        ours.append(n / (time.perf_counter() - t0))
        print(
            f"{ev.window_id}: bare {bare[-1]:,.0f} rows/s  validator {ours[-1]:,.0f} rows/s  "
            f"(verdict {result.verdict}, {len(result.features)} features)"
        )
    b, o = statistics.median(bare), statistics.median(ours)
    print(f"median bare generate_statistics_from_dataframe: {b:,.0f} rows/s")
    print(f"median WindowClosed -> WindowValidated:        {o:,.0f} rows/s")
    print(f"ratio: {o / b:.2f}  (target >= 0.5)")


def write_repeated(root: Path, k: int, n: int) -> WindowClosed:
    """A window of ``n`` rows written as the trips repeated, one row group at a time."""
    base = rows(min(n, 9533))
    path = root / "windows" / "bench" / f"win-{k}" / "data.parquet"
    path.parent.mkdir(parents=True)
    w = ShardWriter(base.schema, str(path), batch_rows=65_536)
    left = n
    while left > 0:
        for b in base.slice(0, min(left, base.num_rows)).to_batches(max_chunksize=8192):
            w.add(b)
        left -= min(left, base.num_rows)
    start = datetime(2013, 1, 1, tzinfo=UTC) + timedelta(days=91 * k)
    return WindowClosed(
        window_id=f"win-{k}",
        stream="bench",
        start=start,
        end=start + timedelta(days=91),
        example_count=n,
        offsets=[OffsetRange(topic="t", partition=0, first=0, last=n - 1)],
        data_uri=str(path),
        sha256=w.finish(),
    )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def child(root: Path, what: str, events: list[WindowClosed]) -> dict[str, float]:
    """In a fresh process: judge the last window (after the baseline), or bare TFDV on it."""
    import tensorflow_data_validation as tfdv

    from shared.shard import read_shard

    ev = events[-1]
    if what == "bare":
        df = read_shard(ev.data_uri).to_pandas()
        before = peak_rss_mib()
        t0 = time.perf_counter()
        tfdv.generate_statistics_from_dataframe(df)
        secs = time.perf_counter() - t0
        return {"rows_per_s": ev.example_count / secs, "seconds": secs,
                "peak_rss_mib": peak_rss_mib(), "before_mib": before}  # fmt: skip
    v = validator(root)
    await v.handle(events[0])  # the baseline window (and every import)
    before = peak_rss_mib()
    t0 = time.perf_counter()
    result = await v.handle(ev)
    secs = time.perf_counter() - t0
    assert result.example_count == ev.example_count
    return {"rows_per_s": ev.example_count / secs, "seconds": secs,
            "peak_rss_mib": peak_rss_mib(), "before_mib": before}  # fmt: skip


def scale(sizes: list[int], repeat: int = 1) -> None:
    root = Path(tempfile.mkdtemp(prefix="ctrain-bench-val-scale-"))
    baseline = write_repeated(root, 0, 9533)
    # Sizes in turn, each in a fresh process, the whole round ``repeat`` times: a process's
    # RSS before the window already moves by ~20 MiB from one start to the next, so one
    # run per size cannot tell 1% apart; medians per size can.
    runs: list[tuple[str, int, dict[str, float]]] = []
    k = 0
    for _ in range(repeat):
        for n in sizes:
            # A new window each round: the validator answers a window it judged before
            # from its artifacts.
            k += 1
            t0 = time.perf_counter()
            ev = write_repeated(root, k, n)
            print(f"wrote {n:,} rows in {time.perf_counter() - t0:.1f}s", flush=True)
            todo = ["validator", "bare"] if n == min(sizes) else ["validator"]
            for what in todo:
                spec = json.dumps({"root": str(root), "what": what,
                                   "events": [baseline.model_dump(mode="json"),
                                              ev.model_dump(mode="json")]})  # fmt: skip
                out = subprocess.run(
                    [sys.executable, __file__, "--child", spec],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                got = json.loads(out.stdout.strip().splitlines()[-1])
                runs.append((what, n, got))
                print(
                    f"{what:>9} {n:>11,} rows: {got['rows_per_s']:>10,.0f} rows/s  "
                    f"({got['seconds']:.1f}s)  peak RSS {got['peak_rss_mib']:,.0f} MiB "
                    f"(after the baseline window: {got['before_mib']:,.0f} MiB)",
                    flush=True,
                )

    def med(what: str, n: int, key: str) -> float:
        return statistics.median(r[key] for w, m, r in runs if w == what and m == n)

    small, large = min(sizes), max(sizes)
    rate = {n: med("validator", n, "rows_per_s") for n in sizes}
    rss = {n: med("validator", n, "peak_rss_mib") for n in sizes}
    bare_rate, bare_rss = med("bare", small, "rows_per_s"), med("bare", small, "peak_rss_mib")
    print(f"medians of {repeat}:")
    for n in sizes:
        print(f"  validator {n:>11,} rows: {rate[n]:>10,.0f} rows/s  peak RSS {rss[n]:,.0f} MiB")
    print(
        f"  bare TFDV {small:>11,} rows: {bare_rate:>10,.0f} rows/s  peak RSS {bare_rss:,.0f} MiB"
    )
    print(f"rate {large:,} vs {small:,} rows: {rate[large] / rate[small]:.2f}  (target >= 0.90)")
    print(f"peak RSS {large:,} vs {small:,} rows: {rss[large] / rss[small]:.2f}  (target <= 1.00)")
    print(f"validator vs bare TFDV at {small:,} rows: rate {rate[small] / bare_rate:.2f}x, "
          f"peak RSS {rss[small]:,.0f} vs {bare_rss:,.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--scale", help="window sizes, comma-separated (e.g. 1000000,10000000)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of --scale (medians)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        spec = json.loads(a.child)
        evs = [WindowClosed.model_validate(e) for e in spec["events"]]
        print(json.dumps(asyncio.run(child(Path(spec["root"]), spec["what"], evs))))
    elif a.scale:
        scale([int(x) for x in a.scale.split(",")], a.repeat)
    else:
        asyncio.run(main(a.rows, a.windows))
