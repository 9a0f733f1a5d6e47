"""Scale-out: two ingest processes in one consumer group over six partitions.

They share the partitions; one is SIGKILLed mid-stream, the other takes its partitions
over in the rebalance (restoring each partition's checkpoint), and every example
still ends in exactly one window or the DLQ, with no window published with two
contents.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest

from ctrain.replay import replay
from shared.kafka import ensure_topics
from shared.settings import CommonSettings
from tests.conftest import TAXI_CSV
from tests.integration.support import conserved_windows, ingest_env, start_ingest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TAXI_ROWS = 9533
REPEAT = 2


def partitions_of(url: str) -> int:
    return int(httpx.get(f"{url}/healthz", timeout=5).json().get("partitions", 0))


@pytest.mark.timeout(900)
def test_two_processes_share_six_partitions_and_a_kill_loses_nothing(
    kafka: str, redis_url: str, tmp_path: Path
) -> None:
    common = CommonSettings(kafka_bootstrap=kafka, kafka_idempotent=False)
    asyncio.run(ensure_topics(common, partitions=6))
    env = ingest_env(
        kafka,
        redis_url,
        tmp_path,
        CTRAIN_INGEST_WINDOW_DURATION_S=str(30 * 86400),
        CTRAIN_INGEST_WINDOW_MAX_COUNT="400",
        CTRAIN_INGEST_ALLOWED_LATENESS_S=str(86400),
        CTRAIN_INGEST_IDLE_TIMEOUT_S="3",
        CTRAIN_INGEST_BATCH_ROWS="128",
        CTRAIN_INGEST_POLL_MAX_RECORDS="300",
    )
    a = start_ingest(env, tmp_path / "a.log")
    b = start_ingest(env, tmp_path / "b.log")
    a.wait_healthy()
    b.wait_healthy()
    # Both members hold partitions once the group has settled (probed, not slept).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        shares = (partitions_of(a.url), partitions_of(b.url))
        if min(shares) > 0 and sum(shares) == 6:
            break
        time.sleep(0.2)  # probe interval
    else:
        raise AssertionError(f"the group never shared six partitions: {shares}")

    result: dict[str, int] = {}

    def produce() -> None:
        s = asyncio.run(
            replay(common, TAXI_CSV, time_column="trip_start_timestamp", rate=3000, repeat=REPEAT)
        )
        result["sent"] = s.sent

    producer = threading.Thread(target=produce)
    producer.start()
    # Mid-stream: wait until the doomed member has written windows, then kill it.
    b_dir = tmp_path / "artifacts" / "windows" / "taxi"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(b_dir.glob("win-*"))) < 6:
        time.sleep(0.1)  # probe interval
    b.proc.kill()
    b.proc.wait()
    producer.join(timeout=180)
    produced = TAXI_ROWS * REPEAT
    assert result.get("sent") == produced

    windows = conserved_windows(kafka, produced, timeout=300)
    # The survivor took the killed member's partitions over.
    assert partitions_of(a.url) == 6
    assert {w.offsets[0].partition for w in windows} == set(range(6))
    a.proc.terminate()
    assert a.proc.wait(timeout=60) == 0
