"""ingest + validator as real processes on a real broker and Redis, over the taxi replay."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections import Counter
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from ctrain.replay import replay
from shared import topics
from shared.events import PartitionIdle, WindowClosed, WindowValidated
from shared.kafka import ensure_topics
from shared.settings import CommonSettings
from tests.conftest import TAXI_CSV
from tests.integration.support import ingest_env, read_topic, start_service
from tests.poll import until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(600)
def test_windows_are_validated_viewable_and_deduplicated(
    kafka: str, redis_url: str, tmp_path: Path
) -> None:
    common = CommonSettings(kafka_bootstrap=kafka, kafka_idempotent=False)
    asyncio.run(ensure_topics(common, partitions=1))
    env = ingest_env(
        kafka,
        redis_url,
        tmp_path,
        CTRAIN_INGEST_WINDOW_DURATION_S=str(91 * 86400),
        CTRAIN_INGEST_WINDOW_MAX_COUNT="50000",
        CTRAIN_INGEST_IDLE_TIMEOUT_S="2",
        CTRAIN_VALIDATOR_IGNORE_FEATURES='["trip_start_timestamp"]',
        CTRAIN_VALIDATOR_MODEL=f"m{tmp_path.name}",
    )
    ingest = start_service("ingest", env, tmp_path / "ingest.log")
    validator = start_service("validator", env, tmp_path / "validator.log")
    ingest.wait_healthy()
    validator.wait_healthy()
    asyncio.run(replay(common, TAXI_CSV, time_column="trip_start_timestamp"))

    def all_validated() -> tuple[list[WindowClosed], list[WindowValidated]] | None:
        windows = [
            w for w in asyncio.run(read_topic(kafka, topics.WINDOWS)) if isinstance(w, WindowClosed)
        ]
        vals = asyncio.run(read_topic(kafka, topics.VALIDATIONS))
        ids = {w.window_id for w in windows}  # type: ignore[attr-defined]
        judged = {m.window_id for v in vals if v.scope == "period" for m in v.members}  # type: ignore[attr-defined]
        if len(ids) >= 8 and ids <= {v.window_id for v in vals} and ids <= judged:  # type: ignore[attr-defined]
            return windows, vals  # type: ignore[return-value]
        return None

    windows, vals = until(all_validated, 300, "every window validated and judged", interval=0.5)
    by_window = {v.window_id: v for v in vals if v.scope == "window"}
    # One partition: every period is one window, judged once, complete, with its examples.
    periods = [v for v in vals if v.scope == "period" and v.window_id.startswith("period-")]
    member_of = Counter(m.window_id for p in periods for m in p.members)
    assert set(member_of) == set(by_window) and set(member_of.values()) == {1}
    for p in periods:
        w = by_window[p.members[0].window_id]
        assert p.complete and p.example_count == w.example_count
        assert p.window_start == w.window_start
    ordered = sorted(by_window.values(), key=lambda v: v.window_start)  # type: ignore[arg-type, return-value]
    assert ordered[0].drift_baseline is None
    for prev, cur in itertools.pairwise(ordered):
        assert cur.drift_baseline == prev.window_id  # the chain follows event time
        names = {f.name for f in cur.features}
        assert "payment_type" in names and "fare" in names
        assert all(
            f.drift is not None and f.drift.value is not None
            for f in cur.features
            if f.name == "payment_type"
        )
    assert {v.verdict for v in ordered} <= {"ok", "drift", "skew", "anomalous", "insufficient_data"}

    last = ordered[-1]
    r = httpx.get(f"{validator.url}/v1/windows/{last.window_id}", timeout=10)
    assert r.status_code == 200 and r.json()["window_id"] == last.window_id
    page = httpx.get(f"{validator.url}/v1/windows/{last.window_id}/stats.html", timeout=30)
    # ctrain's own page: no script, nothing from elsewhere; Facets stays an option.
    assert page.status_code == 200 and "<h2>payment_type</h2>" in page.text
    assert "<script" not in page.text and "http" not in page.text
    facets = httpx.get(f"{validator.url}/v1/windows/{last.window_id}/stats.html?view=facets")
    assert facets.status_code == 200 and "facets" in facets.text.lower()
    cmp_page = httpx.get(f"{validator.url}/v1/windows/{last.window_id}/compare.html", timeout=30)
    assert cmp_page.status_code == 200 and last.drift_baseline in cmp_page.text  # type: ignore[operator]
    assert "<script" not in cmp_page.text
    missing = httpx.get(f"{validator.url}/v1/windows/win-nope", timeout=10)
    assert missing.status_code == 404 and "win-nope" in missing.json()["detail"]
    # The judged periods are listed (newest first) and resolve like windows.
    listed = httpx.get(f"{validator.url}/v1/periods", params={"stream": "taxi", "limit": 500})
    rows = listed.json()["periods"]
    assert {r["window_id"] for r in rows} == {p.window_id for p in periods}
    assert [r["start"] for r in rows] == sorted((r["start"] for r in rows), reverse=True)
    assert all(len(r["members"]) == 1 and r["distances"] for r in rows)
    one = httpx.get(f"{validator.url}/v1/windows/{rows[0]['window_id']}", timeout=10).json()
    assert one["scope"] == "period" and one["members"]
    # A feature's distribution beside its baseline, as JSON for the console's charts.
    cat = httpx.get(
        f"{validator.url}/v1/windows/{last.window_id}/features/payment_type", timeout=30
    ).json()
    assert cat["kind"] == "categorical" and cat["baseline_id"] == last.drift_baseline
    assert abs(sum(cat["window"]["categories"].values()) - 1) < 0.05
    assert cat["baseline"]["categories"] and cat["window"]["summary"]["present"]
    first = httpx.get(
        f"{validator.url}/v1/windows/{ordered[0].window_id}/features/fare", timeout=30
    ).json()
    assert first["kind"] == "numeric" and first["window"]["histogram"]
    assert first["baseline"] is None and first["baseline_id"] is None  # the first window
    nofeat = httpx.get(f"{validator.url}/v1/windows/{last.window_id}/features/nope", timeout=10)
    assert nofeat.status_code == 404 and "no feature 'nope'" in nofeat.json()["detail"]
    metrics = httpx.get(f"{validator.url}/metrics", timeout=10).text
    assert (
        'ctrain_validator_feature_distance{baseline="drift",feature="payment_type",measure="linf"}'
        in metrics
    )

    # Redelivery: the same WindowClosed again yields no second WindowValidated.
    again = next(w for w in windows if w.window_id == last.window_id)

    async def redeliver() -> None:
        p = AIOKafkaProducer(bootstrap_servers=kafka)
        await p.start()
        await p.send_and_wait(topics.WINDOWS, again.to_bytes(), key=again.key)
        await p.stop()

    asyncio.run(redeliver())
    until(
        lambda: (
            "ctrain_validator_redeliveries_total 1.0"
            in httpx.get(f"{validator.url}/metrics", timeout=10).text
        ),
        120,
        "the redelivery to be handled",
        interval=0.5,
    )
    vals = asyncio.run(read_topic(kafka, topics.VALIDATIONS))
    counts = Counter(v.id for v in vals)  # type: ignore[attr-defined]
    assert max(counts.values()) == 1, counts
    # Ingest announced its quiet partition in order on ctrain.windows; the validator took
    # the notice (nothing dead-lettered as an invalid window).
    notices = [
        e for e in asyncio.run(read_topic(kafka, topics.WINDOWS)) if isinstance(e, PartitionIdle)
    ]
    assert notices and notices[-1].partition == 0 and notices[-1].stream == "taxi"
    assert asyncio.run(read_topic(kafka, topics.WINDOWS_DLQ)) == []

    for svc in (validator, ingest):
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.proc.wait(timeout=60) == 0


@pytest.mark.timeout(300)
def test_windows_it_cannot_judge_go_to_the_dlq_as_typed_events(
    kafka: str, redis_url: str, tmp_path: Path
) -> None:
    """A malformed window event and a window whose shard is gone are dead-lettered as
    WindowDeadLetter events that name the window, its stream and why; the service goes on."""
    from shared.events import OffsetRange, WindowDeadLetter, parse_event

    common = CommonSettings(kafka_bootstrap=kafka, kafka_idempotent=False)
    asyncio.run(ensure_topics(common, partitions=1))
    env = ingest_env(kafka, redis_url, tmp_path, CTRAIN_VALIDATOR_MAX_ATTEMPTS="1")
    validator = start_service("validator", env, tmp_path / "validator.log")
    validator.wait_healthy()
    gone = WindowClosed(
        window_id=f"win-gone-{tmp_path.name}",
        stream="taxi",
        start="2024-01-01T00:00:00Z",  # type: ignore[arg-type]
        end="2024-01-02T00:00:00Z",  # type: ignore[arg-type]
        example_count=500,
        offsets=[OffsetRange(topic="ctrain.examples", partition=0, first=0, last=499)],
        data_uri=str(tmp_path / "no-such-shard.parquet"),
        sha256="0" * 64,
    )

    async def send() -> None:
        p = AIOKafkaProducer(bootstrap_servers=kafka)
        await p.start()
        await p.send_and_wait(
            topics.WINDOWS, b'{"event_type": "window_closed", "window_id": "w-x"}'
        )
        await p.send_and_wait(topics.WINDOWS, gone.to_bytes())
        await p.stop()

    asyncio.run(send())
    letters = until(
        lambda: (
            (got := asyncio.run(read_topic(kafka, topics.WINDOWS_DLQ))) and len(got) >= 2 and got
        ),
        120,
        "two dead letters",
        interval=0.5,
    )
    assert all(isinstance(x, WindowDeadLetter) for x in letters)
    bad, lost = letters
    assert bad.reason == "invalid_event" and bad.window_id == "w-x" and "stream" in bad.message
    assert lost.window_id == gone.window_id and lost.stream == "taxi"
    assert lost.source.topic == topics.WINDOWS and lost.reason != "invalid_event"
    assert WindowClosed.model_validate_json(lost.payload) == gone  # it can be sent back as is
    assert parse_event(lost.to_bytes()) == lost
    assert httpx.get(f"{validator.url}/healthz").status_code == 200
