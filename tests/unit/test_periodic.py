from __future__ import annotations

import asyncio

import pytest

from shared.periodic import every

pytestmark = pytest.mark.unit


def test_a_failing_round_is_counted_and_the_timer_goes_on() -> None:
    calls: list[int] = []
    failed: list[int] = []
    done = asyncio.Event()

    async def step() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionError("redis is restarting")
        if len(calls) == 4:
            done.set()

    async def go() -> None:
        task = asyncio.create_task(every(0.001, step, "test step", lambda: failed.append(1)))
        await asyncio.wait_for(done.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert len(calls) == 4 and failed == [1]
