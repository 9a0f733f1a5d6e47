"""A relayed request waits for its answer longer than the Redis client's read timeout
(redis-py's default is 5 s): the wait must neither fail as if Redis were down nor miss
an answer that comes late (shared/relay.py)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from shared.relay import Relay

pytestmark = pytest.mark.integration
KEY = "test:relay"


def _client(redis_url: str) -> Redis:
    # The services' own client settings: the library's default read timeout.
    return Redis.from_url(redis_url, health_check_interval=30)


def test_an_answer_that_comes_after_the_read_timeout_is_received(redis_url: str) -> None:
    async def go() -> None:
        asker, leader = _client(redis_url), _client(redis_url)
        await asker.delete(KEY)
        relay = Relay(asker, KEY)

        async def answer_late() -> int:
            # The fault itself, not a readiness wait: a leader that answers later than
            # one Redis read may wait (5 s), which a single long BLPOP did not survive.
            await asyncio.sleep(6.5)
            return await Relay(leader, KEY).serve(
                lambda req: _done({"ok": {"echo": req["n"]}}), lambda: True
            )

        got, served = await asyncio.gather(relay.ask({"n": 7}, 20.0), answer_late())
        assert served == 1
        assert got == {"ok": {"echo": 7}}
        await asker.aclose()
        await leader.aclose()

    asyncio.run(go())


def test_no_answer_within_the_wait_is_none_not_an_outage(redis_url: str) -> None:
    async def go() -> None:
        asker = _client(redis_url)
        await asker.delete(KEY)
        assert await Relay(asker, KEY).ask({"n": 1}, 6.0) is None
        assert await asker.llen(KEY) == 1  # recorded for whichever replica leads next
        await asker.aclose()

    asyncio.run(go())


async def _done(value: dict[str, object]) -> dict[str, object]:
    return value
