"""docs/architecture.md §4 under SIGKILL: replay the taxi data while ingest is killed and restarted.

The sum of example_count over distinct windows plus the distinct DLQ entries
must equal the examples produced, and no window id may be published with two
different contents.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from ctrain.replay import replay
from shared.kafka import ensure_topics
from shared.settings import CommonSettings
from tests.conftest import TAXI_CSV
from tests.integration.support import conserved_windows, ingest_env, start_ingest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPEAT = 4
TAXI_ROWS = 9533


@pytest.mark.timeout(900)
def test_sigkill_at_random_points_loses_and_doubles_nothing(
    kafka: str, redis_url: str, tmp_path: Path
) -> None:
    seed = int(os.environ.get("CTRAIN_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"crash test seed {seed}")
    common = CommonSettings(kafka_bootstrap=kafka, kafka_idempotent=False)
    asyncio.run(ensure_topics(common))
    env = ingest_env(
        kafka,
        redis_url,
        tmp_path,
        CTRAIN_INGEST_WINDOW_DURATION_S=str(30 * 86400),
        CTRAIN_INGEST_WINDOW_MAX_COUNT="700",
        CTRAIN_INGEST_ALLOWED_LATENESS_S=str(86400),
        CTRAIN_INGEST_IDLE_TIMEOUT_S="3",
        CTRAIN_INGEST_BATCH_ROWS="128",
        CTRAIN_INGEST_POLL_MAX_RECORDS="300",
    )
    produced = TAXI_ROWS * REPEAT
    # One time-ordered repetition of the trips per kill: each kill lands while its
    # repetition streams (3.8 s at 2,500/s, the kill point at most 3 s in), however
    # long a restart takes on a loaded machine; later repetitions exercise the late path.
    sent: list[int] = []

    def produce() -> None:
        s = asyncio.run(replay(common, TAXI_CSV, time_column="trip_start_timestamp", rate=2500))
        sent.append(s.sent)

    svc = start_ingest(env, tmp_path / "ingest.log")
    svc.wait_healthy()
    # Whether each kill landed while the producer still streamed (what the test is about).
    mid_stream: list[bool] = []
    for _ in range(REPEAT):
        producer = threading.Thread(target=produce)
        producer.start()
        time.sleep(rng.uniform(0.3, 3.0))  # a random kill point, not a readiness wait
        mid_stream.append(producer.is_alive())
        svc.proc.send_signal(signal.SIGKILL)
        svc.proc.wait()
        svc = start_ingest(env, tmp_path / "ingest.log")
        svc.wait_healthy()
        producer.join(timeout=120)
    assert sum(sent) == produced

    conserved_windows(kafka, produced, timeout=240, label=f"seed {seed}: ")
    assert all(mid_stream), f"kills while data flowed: {mid_stream}"
    svc.proc.send_signal(signal.SIGTERM)
    assert svc.proc.wait(timeout=60) == 0
