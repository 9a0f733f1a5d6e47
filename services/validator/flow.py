"""What the validator does with one record of ``ctrain.windows``, apart from Kafka.

The app's subscriber hands each record's bytes to :meth:`WindowFlow.handle` through
the one consumer (:mod:`shared.consume`), which may call it again after an outage at
any await point. Every effect is safe to repeat: the core stores a window's result
once, a result is published once (a marker in Redis), and the period outbox is
emptied only after its results went out.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from services.validator.core import Validator
from shared.consume import InvalidEvent
from shared.events import PartitionIdle, WindowClosed, WindowValidated

Publish = Callable[[WindowValidated], Awaitable[None]]


class WindowFlow:
    def __init__(
        self,
        validator: Validator,
        redis: Any,
        publish: Publish,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.validator = validator
        self.redis = redis
        self.publish = publish
        self.clock = clock

    async def handle(self, body: bytes) -> None:
        try:
            event = WindowClosed.model_validate_json(body)
        except ValidationError as e:
            try:
                idle = PartitionIdle.model_validate_json(body)
            except ValidationError:
                raise InvalidEvent(str(e)) from e
            # A source partition has nothing open: periods may not need to wait for it.
            await self.publish_periods(idle.stream, idle)
            return
        result = await self.validator.handle(event)
        # Published once: a window handled again whose result already went out is only
        # committed. (A crash between publish and marker republishes the same id, which
        # consumers deduplicate.)
        await self.publish_once(result)
        await self.publish_periods(event.stream, event)

    async def publish_once(self, r: WindowValidated) -> None:
        marker = f"ctrain:validator:published:{r.id}"
        if not await self.redis.exists(marker):
            await self.publish(r)
            await self.redis.set(marker, b"1")

    async def publish_periods(
        self, stream: str, event: WindowClosed | PartitionIdle | None
    ) -> None:
        """Judge the periods this window completes; publish them, then empty the outbox."""
        results = await self.validator.assemble(stream, event, self.clock())
        for r in results:
            await self.publish_once(r)
        if results:
            await self.validator.sent(stream, [r.window_id for r in results])

    async def judge_stale_periods(self) -> None:
        """Periods with a silent partition are judged once their grace time is over."""
        for stream in await self.validator.streams():
            await self.publish_periods(stream, None)
