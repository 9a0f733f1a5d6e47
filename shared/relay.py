"""A request made of a replica that does not lead, carried out by the leader.

The replica that received it pushes the request to a Redis list and waits on its own
answer list (``BLPOP``); the leader pops requests, acts, and pushes each answer (an
error the leader refused with is an answer too). A request the leader could not
finish (an outage, or it lost the lead) goes back to the head of the list for the
next try or the next leader. Answers expire after five minutes.

The wait is a series of short ``BLPOP`` s, never one long one: the Redis client's read
timeout (redis-py's default is 5 s, and a partition needs one) would end a single
blocking read that outlives it with a ``TimeoutError``, as if Redis were down.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.asyncio import Redis

ANSWER_TTL_S = 300
WAIT_SLICE_S = 1.0  # each BLPOP's block, well inside any client read timeout


class Relay:
    def __init__(self, redis: Redis, key: str) -> None:
        self.redis = redis
        self.key = key

    async def ask(self, request: dict[str, Any], timeout_s: float | None) -> dict[str, Any] | None:
        """Record ``request``; with ``timeout_s``, wait that long for the leader's answer
        (None if none came). Without, return None at once (nobody waits)."""
        rid = uuid.uuid4().hex if timeout_s is not None else ""
        await self.redis.rpush(self.key, orjson.dumps({**request, "_id": rid}))
        if timeout_s is None:
            return None
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            block = max(0.01, min(left, WAIT_SLICE_S))  # 0 would block for ever
            got: Any = await self.redis.blpop([f"{self.key}:{rid}"], timeout=block)
            if got is not None:
                return dict(orjson.loads(got[1]))
        return None

    async def serve(
        self,
        handle: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
        still: Callable[[], bool],
    ) -> int:
        """Answer the recorded requests while ``still()`` (this replica leads); how many."""
        n = 0
        while still():
            raw: Any = await self.redis.lpop(self.key)
            if raw is None:
                return n
            req = orjson.loads(raw)
            try:
                answer = await handle(req)
            except Exception:
                await self.redis.lpush(self.key, raw)
                raise
            n += 1
            if req.get("_id"):
                pipe = self.redis.pipeline(transaction=True)
                pipe.rpush(f"{self.key}:{req['_id']}", orjson.dumps(answer))
                pipe.expire(f"{self.key}:{req['_id']}", ANSWER_TTL_S)
                await pipe.execute()
        return n
