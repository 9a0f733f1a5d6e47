"""One background loop for the services' timers (grace times, retry ticks)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def every(
    interval_s: float,
    step: Callable[[], Awaitable[object]],
    what: str,
    failures: Callable[[], None] | None = None,
) -> None:
    """Run ``step`` every ``interval_s`` until cancelled. A failing step (Redis or the
    broker briefly unreachable) is logged and counted, and the next interval tries again:
    a timer must not die with its first outage."""
    while True:
        await asyncio.sleep(interval_s)  # the timer's own interval, not a readiness wait
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; trying again in %.0fs", what, interval_s)
            if failures is not None:
                failures()
