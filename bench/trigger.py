"""Trigger benchmarks.

1. Latency from a threshold-crossing WindowValidated reaching the trigger core
   to its pipeline run submitted (local backend: worker process started),
   p50/p95 over 50 events, real Redis. Target p95 <= 1 s.
2. (--pipeline) Pipeline wall time on the 9,533 taxi rows through kfp.local
   against the same steps called as one plain Python script, same run.
   Target overhead ratio <= 1.3.

    python bench/trigger.py [--events 50] [--pipeline]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ctrain.devstack import start_redis  # noqa: E402
from services.trigger import policy as pol  # noqa: E402
from services.trigger.backends import LocalBackend  # noqa: E402
from services.trigger.core import Trigger, TriggerConfig  # noqa: E402
from services.trigger.metrics import TriggerMetrics  # noqa: E402
from shared.artifacts import ArtifactStore  # noqa: E402
from shared.events import (  # noqa: E402
    Distance,
    Event,
    FeatureDistances,
    MemberWindow,
    WindowValidated,
)


def crossing(i: int, model: str) -> WindowValidated:
    start = datetime(2014, 1, 1, tzinfo=UTC) + timedelta(days=30 * i)
    d = Distance(measure="linf", value=0.2, threshold=0.06, crossed=True, baseline="p")
    return WindowValidated(
        id=f"val-{model}-{i}",
        window_id=f"win-{model}-{i}",
        stream="taxi",
        stats_uri="s",
        verdict="drift",
        example_count=1000,
        features=[FeatureDistances(name="payment_type", drift=d)],
        window_start=start,
        window_end=start + timedelta(days=30),
        scope="period",  # the trigger decides on judged periods only
        members=[
            MemberWindow(
                window_id=f"win-{model}-{i}", data_uri=f"/w/{i}.parquet", example_count=1000
            )
        ],
    )


async def latency(events: int, redis_url: str, root: str) -> list[float]:
    redis = Redis.from_url(redis_url)
    backend = LocalBackend()
    out: list[float] = []

    async def publish(_: Event) -> None:
        return None

    for k in range(events):
        model = f"bench-{k}"
        t = Trigger(
            redis=redis,
            store=ArtifactStore(root),
            backend=backend,
            metrics=TriggerMetrics(CollectorRegistry()),
            config=TriggerConfig(
                model=model,
                module_path=str(ROOT / "examples/taxi/model.py"),
                schema_path=str(ROOT / "examples/taxi/data/schema.pbtxt"),
                # One 1,000-example period trains and one evaluates: the run starts at the
                # second period, which is what is timed.
                policy=pol.Policy(
                    consecutive=1,
                    cooldown_s=0,
                    min_train_examples=1000,
                    min_eval_examples=1000,
                    post_change_share=0,
                ),
            ),
            publish=publish,
        )
        await t.on_validation(crossing(0, model))  # one period: too few to train and evaluate
        t0 = time.perf_counter()
        d = await t.on_validation(crossing(1, model))
        out.append(time.perf_counter() - t0)
        assert d is not None and d.take, d
        for task in t.followers.values():
            task.cancel()
        for proc in backend.procs.values():  # only the submission is measured
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        backend.procs.clear()
    return out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=50)
    ap.add_argument("--pipeline", action="store_true")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ctrain-bench-trigger-")
    redis = start_redis(Path(tmp) / "redis")
    try:
        lat = asyncio.run(latency(a.events, redis.address, tmp))
        print(
            f"validation -> run submitted over {len(lat)} events: "
            f"p50 {statistics.median(lat) * 1000:.1f} ms, p95 {pct(lat, 0.95) * 1000:.1f} ms "
            f"(target p95 <= 1000 ms)"
        )
    finally:
        os.kill(redis.pid, signal.SIGTERM)
    if a.pipeline:
        from bench.pipeline_overhead import run as overhead

        overhead()


if __name__ == "__main__":
    main()
