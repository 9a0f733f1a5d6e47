"""ingest as a real process against a real Tansu broker."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import orjson
import pytest

from ctrain.replay import replay
from shared.kafka import ensure_topics
from shared.settings import CommonSettings
from shared.shard import read_shard
from tests.conftest import TAXI_CSV
from tests.integration.support import ServiceProc, ingest_env, start_ingest, windows_and_dlq

pytestmark = pytest.mark.integration
TAXI_ROWS = 9533


def conserved(expected: int):  # type: ignore[no-untyped-def]
    def done(windows: list, dlq: list) -> bool:  # type: ignore[type-arg]
        counts = {w.window_id: w.example_count for w in windows}
        return sum(counts.values()) + len({d.id for d in dlq}) >= expected

    return done


def _quarterly_ingest(
    kafka: str, redis_url: str, tmp_path: Path, max_count: int, idle_s: int
) -> tuple[CommonSettings, ServiceProc]:
    """Topics made, ingest up and healthy with 91-day windows."""
    common = CommonSettings(kafka_bootstrap=kafka, kafka_idempotent=False)
    asyncio.run(ensure_topics(common))
    env = ingest_env(
        kafka,
        redis_url,
        tmp_path,
        CTRAIN_INGEST_WINDOW_DURATION_S=str(91 * 86400),
        CTRAIN_INGEST_WINDOW_MAX_COUNT=str(max_count),
        CTRAIN_INGEST_IDLE_TIMEOUT_S=str(idle_s),
    )
    svc = start_ingest(env, tmp_path / "ingest.log")
    svc.wait_healthy()
    return common, svc


def test_replay_windows_dlq_http_and_sigterm(kafka: str, redis_url: str, tmp_path: Path) -> None:
    common, svc = _quarterly_ingest(kafka, redis_url, tmp_path, max_count=1000, idle_s=2)

    summary = asyncio.run(replay(common, TAXI_CSV, time_column="trip_start_timestamp"))
    assert summary.sent == TAXI_ROWS

    lines = [
        b'{"fare": 3.5, "payment_type": "Cash", "trip_start_month": 1, "trip_start_hour": 2,'
        b' "trip_start_day": 3, "trip_start_timestamp": 1420000000, "pickup_latitude": 41.9,'
        b' "pickup_longitude": -87.6, "trip_miles": 1.0, "tips": 0.0, "pickup_community_area": 8}',
        b"this is not json",
        b'{"fare": "cheap"}',
    ]
    r = httpx.post(f"{svc.url}/v1/examples", content=b"\n".join(lines) + b"\n", timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 1 and body["rejected"] == 2
    assert [e["reason"] for e in body["errors"]] == ["not_json", "missing_feature"]
    assert [e["line"] for e in body["errors"]] == [2, 3]
    # The same lines again: their dead letters get ids of their own (a request id).
    again = httpx.post(f"{svc.url}/v1/examples", content=lines[1], timeout=10).json()
    first_ids = {e["dead_letter_id"] for e in body["errors"]}
    assert again["errors"][0]["dead_letter_id"] not in first_ids
    assert again["request_id"] != body["request_id"]

    windows, dlq = windows_and_dlq(kafka, conserved(TAXI_ROWS + 4), timeout=120)
    by_id = {w.window_id: w for w in windows}
    dlq_ids = {d.id for d in dlq}
    assert sum(w.example_count for w in by_id.values()) + len(dlq_ids) == TAXI_ROWS + 4
    assert {e["dead_letter_id"] for e in body["errors"]} <= dlq_ids
    reasons = sorted(d.reason for d in dlq)
    assert reasons.count("missing_feature") >= 2  # two real taxi rows lack pickup_community_area
    assert "not_json" in reasons
    for w in by_id.values():
        table = read_shard(w.data_uri)
        assert table.num_rows == w.example_count <= 1000
        assert w.start <= w.min_event_time <= w.max_event_time < w.end  # type: ignore[operator]
        meta = orjson.loads(Path(w.data_uri).with_name("window.json").read_bytes())
        assert meta["sha256"] == w.sha256 and meta["window_id"] == w.window_id

    metrics = httpx.get(f"{svc.url}/metrics").text
    assert 'ctrain_ingest_examples_rejected_total{reason="missing_feature"}' in metrics
    assert "ctrain_ingest_windows_closed_total" in metrics

    svc.proc.send_signal(signal.SIGTERM)
    assert svc.proc.wait(timeout=60) == 0
    assert "ingest stopped cleanly" in svc.log.read_text()


def test_misspelled_setting_fails_at_startup(kafka: str, redis_url: str, tmp_path: Path) -> None:
    env = ingest_env(kafka, redis_url, tmp_path, CTRAIN_INGEST_WINDOW_SIZ="10")
    svc = start_ingest(env, tmp_path / "ingest.log")
    assert svc.proc.wait(timeout=60) != 0
    assert "CTRAIN_INGEST_WINDOW_SIZ" in svc.log.read_text()


def test_the_end_of_a_replay_closes_the_last_windows_without_the_idle_timeout(
    kafka: str, redis_url: str, tmp_path: Path
) -> None:
    # Idle after an hour: only the replay's end-of-input record can close the last
    # windows within the wait below.
    common, svc = _quarterly_ingest(kafka, redis_url, tmp_path, max_count=100_000, idle_s=3600)
    summary = asyncio.run(replay(common, TAXI_CSV, time_column="trip_start_timestamp"))
    windows, dlq = windows_and_dlq(kafka, conserved(TAXI_ROWS), timeout=120)
    by_id = {w.window_id: w for w in windows}
    assert sum(w.example_count for w in by_id.values()) + len({d.id for d in dlq}) == TAXI_ROWS
    reasons = {w.close_reason for w in by_id.values()}
    assert reasons <= {"watermark", "end_of_input"} and "end_of_input" in reasons
    assert len([w for w in by_id.values() if w.close_reason == "end_of_input"]) == len(
        summary.partitions
    )  # the last window of each partition
    metrics = httpx.get(f"{svc.url}/metrics").text
    assert f"ctrain_ingest_watermark_records_total {float(len(summary.partitions))}" in metrics
    svc.proc.send_signal(signal.SIGTERM)
    assert svc.proc.wait(timeout=60) == 0
