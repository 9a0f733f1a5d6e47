"""The demo's diagnosis when a published candidate is not gated: where the promoter's
consumer group stands on the candidates topic (ctrain/demo_support.py)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ctrain.demo_support import group_progress
from shared.kafka import ensure_topics
from shared.settings import CommonSettings

pytestmark = pytest.mark.integration
TOPIC = "ctrain.candidates"


def test_it_says_each_partitions_commit_beside_its_end(kafka: str) -> None:
    async def setup() -> None:
        await ensure_topics(CommonSettings(kafka_bootstrap=kafka, kafka_idempotent=False))
        p = AIOKafkaProducer(bootstrap_servers=kafka)
        await p.start()
        try:
            for _ in range(3):
                await p.send_and_wait(TOPIC, b"x", partition=0)
        finally:
            await p.stop()
        c = AIOKafkaConsumer(bootstrap_servers=kafka, group_id="g-diag", enable_auto_commit=False)
        await c.start()
        try:
            c.assign([TopicPartition(TOPIC, 0)])
            await c.commit({TopicPartition(TOPIC, 0): 2})  # read two of the three
        finally:
            await c.stop()

    asyncio.run(setup())
    said = group_progress(kafka, "g-diag", TOPIC)
    assert said.startswith(f"group g-diag on {TOPIC}, committed/end: 0: 2/")
    assert "1: None/" in said  # a partition the group never committed
    down = group_progress("127.0.0.1:1", "g-diag", TOPIC)
    assert down.startswith(f"group g-diag on {TOPIC}: not readable (")
