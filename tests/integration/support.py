"""Running real ingest processes against a real broker, and reading topics back."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer

from shared.events import DeadLetter, WindowClosed, parse_event
from tests.conftest import ROOT, TAXI_SCHEMA


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServiceProc:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # probe interval, not a readiness wait
        raise AssertionError(f"not healthy after {timeout}s:\n{self.log.read_text()[-3000:]}")


def ingest_env(kafka: str, redis_url: str, root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTRAIN_")}
    env.update(
        CTRAIN_KAFKA_BOOTSTRAP=kafka,
        CTRAIN_REDIS_URL=redis_url,
        CTRAIN_ARTIFACT_ROOT=str(root / "artifacts"),
        CTRAIN_SCHEMA=str(TAXI_SCHEMA),
        CTRAIN_KAFKA_IDEMPOTENT="false",
        CTRAIN_LOG_JSON="true",
        CTRAIN_INGEST_STREAM="taxi",
        CTRAIN_INGEST_EVENT_TIME_FIELD="trip_start_timestamp",
    )
    env.update(extra)
    return env


def start_ingest(env: dict[str, str], log: Path) -> ServiceProc:
    port = free_port()
    env = {**env, "CTRAIN_INGEST_HTTP_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.ingest"],
        env=env, cwd=ROOT, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
    )
    return ServiceProc(proc, f"http://127.0.0.1:{port}", log)


@dataclass
class TopicReader:
    """Follows a topic from the beginning (no group) and parses events."""

    bootstrap: str
    topic: str
    events: list[object] = field(default_factory=list)

    async def poll_until(self, done: object, timeout: float) -> list[object]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(self.topic)
            while not parts:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(self.topic)
            from aiokafka import TopicPartition

            consumer.assign([TopicPartition(self.topic, p) for p in parts])
            await consumer.seek_to_beginning()
            self.events = []
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=300)
                for recs in batch.values():
                    self.events.extend(parse_event(r.value) for r in recs)
                if done(self.events):  # type: ignore[operator]
                    return self.events
            return self.events
        finally:
            await consumer.stop()


def windows_and_dlq(kafka: str, done: object, timeout: float) -> tuple[list[WindowClosed], list[DeadLetter]]:
    async def go() -> tuple[list[WindowClosed], list[DeadLetter]]:
        wr = TopicReader(kafka, "ctrain.windows")
        dr = TopicReader(kafka, "ctrain.examples.dlq")

        def both(_: list[object]) -> bool:
            return bool(done(wr.events, dr.events))  # type: ignore[operator]

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await dr.poll_until(lambda e: True, 1.0)
            await wr.poll_until(lambda e: both(e), 2.0)
            if both([]):
                break
        return wr.events, dr.events  # type: ignore[return-value]

    return asyncio.run(go())
