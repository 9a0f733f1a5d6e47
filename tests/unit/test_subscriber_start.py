"""A service's subscribers start together (shared/kafka.py start_subscribers_together):
each consumer's start waits for its group's assignment, so one after another a service
reading three topics waited for three joins in a row."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shared.kafka import make_router, one_event_at_a_time
from shared.settings import CommonSettings

pytestmark = pytest.mark.unit
TOPICS = ("ctrain.validations", "ctrain.promotions", "ctrain.quality")


def _router_with_barrier() -> tuple[Any, list[str]]:
    """A router with three subscribers whose start returns only once all three have
    begun (as three group joins in flight at once would)."""
    router = make_router(CommonSettings(kafka_bootstrap="127.0.0.1:1"))
    for topic in TOPICS:

        @one_event_at_a_time(router, topic, "g")
        async def handle(body: bytes) -> None:
            return None

    broker = router.broker
    entered: list[str] = []
    all_in = asyncio.Event()

    async def no_connection() -> None:
        return None

    broker.connect = no_connection
    assert len(broker.subscribers) == len(TOPICS)
    for sub in broker.subscribers:

        async def joined(name: str = sub.topics[0].name) -> None:
            entered.append(name)
            if len(entered) == len(TOPICS):
                all_in.set()
            await all_in.wait()

        sub.start = joined
    return router, entered


async def test_the_subscribers_start_together() -> None:
    router, entered = _router_with_barrier()
    await asyncio.wait_for(router.broker.start(), 10)
    assert sorted(entered) == sorted(TOPICS)
    assert router.broker.running


async def test_one_after_another_they_would_wait_for_each_other() -> None:
    """FastStream's own start, on the same subscribers, never gets past the first."""
    from faststream.kafka import KafkaBroker

    router, entered = _router_with_barrier()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(KafkaBroker.start(router.broker), 1)
    assert len(entered) == 1
