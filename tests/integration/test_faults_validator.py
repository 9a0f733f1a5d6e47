"""The validator's handling of a window under faults, against a real Redis and real
TFDV on taxi windows: an outage at any await point (Redis, the index, publish; before or
after the call takes effect) still publishes every window and period result, each id
once in effect, empties the outbox and commits the record once, with no dead letter.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from services.validator.flow import WindowFlow
from services.validator.index import RedisWindowIndex
from shared import topics
from shared.consume import Consumer, ConsumerMetrics, Record
from shared.events import WindowClosed, WindowValidated
from tests.faults import Faults, Flaky, flaky_fn, msg
from tests.unit.test_validator_core import make_validator, quarter_windows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def windows(tmp_path_factory: pytest.TempPathFactory) -> list[WindowClosed]:
    return quarter_windows(tmp_path_factory.mktemp("shards"))[:3]


async def scenario(
    redis_url: str, tmp: Path, faults: Faults, tag: str, windows: list[WindowClosed]
) -> dict[str, Any]:
    """Two windows arrive cleanly; the third is consumed with ``faults`` armed."""
    evs = [
        w.model_copy(update={"window_id": f"{tag}-{w.window_id}", "stream": f"s-{tag}"})
        for w in windows
    ]
    published: list[WindowValidated] = []
    letters: list[str] = []

    async def publish(r: WindowValidated) -> None:
        published.append(r)

    async def sink(rec: Record, reason: str, message: str) -> None:
        letters.append(f"{reason}: {message}")

    redis = Flaky(Redis.from_url(redis_url), faults, "redis")
    index = Flaky(RedisWindowIndex(redis), faults, "index")
    v = make_validator(tmp, index)  # type: ignore[arg-type]
    v.redis = redis  # type: ignore[assignment]
    flow = WindowFlow(v, redis, flaky_fn(publish, faults, "publish"), clock=lambda: 1e10)
    faults.armed = False
    for ev in evs[:2]:
        await flow.handle(ev.to_bytes())
    faults.armed = True
    consumer = Consumer(
        topics.WINDOWS, ConsumerMetrics(CollectorRegistry(), "v"), sink, backoff_s=0.001
    )
    record = msg(evs[2].to_bytes(), topics.WINDOWS)
    await consumer.consume(record, flow.handle)
    faults.armed = False
    book = await v._load_book(f"s-{tag}")
    return {
        # Ids hash the (tagged) window ids: compare how many, and which windows.
        "ids": len({r.id for r in published}),
        "windows": sorted(
            {r.window_id.replace(tag, "T") for r in published if r.scope != "period"}
        ),
        "periods": len({r.window_id for r in published if r.scope == "period"}),
        "acks": record.acks,
        "letters": letters,
        "outbox": book.outbox,
    }


@pytest.mark.parametrize("mode", ["before", "after"])
def test_a_fault_at_any_await_point_publishes_every_result_once_in_effect(
    redis_url: str, tmp_path: Path, windows: list[WindowClosed], mode: str
) -> None:
    clean = Faults()
    want = asyncio.run(scenario(redis_url, tmp_path / "clean", clean, f"c{mode}", windows))
    assert want["acks"] == 1 and want["letters"] == [] and want["outbox"] == []
    assert want["windows"] == ["T-win-q0", "T-win-q1", "T-win-q2"] and want["periods"] >= 2
    assert want["ids"] == 3 + want["periods"]
    assert clean.calls >= 10, clean.where
    for k in range(1, clean.calls + 1):
        f = Faults(fail_at=k, mode=mode)
        got = asyncio.run(scenario(redis_url, tmp_path / str(k), f, f"{mode}{k}", windows))
        assert f.fired is not None, k
        assert got == want, (k, f.fired, got)


def test_a_record_that_is_no_window_event_is_poison(redis_url: str, tmp_path: Path) -> None:
    """It goes to the dead-letter sink at once, named invalid_event, and is committed."""
    letters: list[str] = []

    async def sink(rec: Record, reason: str, message: str) -> None:
        letters.append(reason)

    async def publish(r: WindowValidated) -> None:
        raise AssertionError("nothing to publish")

    redis = Redis.from_url(redis_url)
    v = make_validator(tmp_path, RedisWindowIndex(redis))  # type: ignore[arg-type]
    flow = WindowFlow(v, redis, publish)
    consumer = Consumer(
        topics.WINDOWS, ConsumerMetrics(CollectorRegistry(), "v"), sink, backoff_s=0.001
    )
    record = msg(b'{"event_type": "window_closed"}', topics.WINDOWS)
    asyncio.run(consumer.consume(record, flow.handle))
    assert letters == ["invalid_event"] and record.acks == 1


def test_a_lost_index_is_rebuilt_from_the_artifact_store(
    redis_url: str, tmp_path: Path, windows: list[WindowClosed], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis lost the validator's index (no AOF, a flushed key): `ctrain validator
    reindex` puts back every window from the stored results, as it was."""
    from ctrain.cli import main

    tag = f"ri{tmp_path.name[-6:]}"
    stream = f"s-{tag}"
    evs = [
        w.model_copy(update={"window_id": f"{tag}-{w.window_id}", "stream": stream})
        for w in windows
    ]

    async def nothing(r: WindowValidated) -> None:
        return None

    async def validate_and_lose() -> list[Any]:
        redis = Redis.from_url(redis_url)
        index = RedisWindowIndex(redis)
        v = make_validator(tmp_path, index)  # type: ignore[arg-type]
        v.redis = redis
        flow = WindowFlow(v, redis, nothing, clock=lambda: 1e10)
        for ev in evs:
            await flow.handle(ev.to_bytes())
        before = await index.latest(stream, 10)
        periods = await index.latest_periods(stream, 10)
        await redis.delete(
            f"ctrain:validator:{stream}:by_start",
            f"ctrain:validator:{stream}:judged",
            *(f"ctrain:validator:window:{e.window_id}" for e in evs),
        )
        assert await index.latest(stream, 10) == []
        assert await index.latest_periods(stream, 10) == []
        await redis.aclose()
        return before, periods

    before, periods = asyncio.run(validate_and_lose())
    assert len(before) == 3
    assert len(periods) >= 2  # the judged periods are listed too
    monkeypatch.setenv("CTRAIN_ARTIFACT_ROOT", str(tmp_path))
    monkeypatch.setenv("CTRAIN_REDIS_URL", redis_url)
    monkeypatch.setenv("CTRAIN_DEV_STATE_DIR", str(tmp_path / "dev"))
    assert main(["validator", "reindex", "--stream", stream]) == 0

    async def after() -> tuple[list[Any], list[str]]:
        redis = Redis.from_url(redis_url)
        got = await RedisWindowIndex(redis).latest(stream, 10)
        got_periods = await RedisWindowIndex(redis).latest_periods(stream, 10)
        await redis.aclose()
        return got, got_periods

    assert asyncio.run(after()) == (before, periods)
