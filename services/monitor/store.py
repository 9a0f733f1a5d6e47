"""The monitor's Redis state: scored windows and what each version made of them.

Keys, all under ``ctrain:monitor:<model>:`` (docs/monitor.md lists them):

- ``win:<window>`` hash: the scored window (version, rows, in-window labels, predictions
  file, validation id, event-time bounds, member shards, highest coverage step published);
- ``windows`` zset: window -> start (ms), for the quality view;
- ``members`` hash: window shard -> its period's start (ms); ``period`` hash: window shard
  -> the judged period it is in (labels are joined per shard: ``labelstate``);
- ``scored:<window>``: the latest ``WindowScored`` of the window (JSON).
"""

from __future__ import annotations

from typing import Any

import orjson

from shared import keys

_MAX = """
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""


class QualityStore:
    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._max = redis.register_script(_MAX)

    @staticmethod
    def k(model: str, *parts: str) -> str:
        return ":".join(["ctrain:monitor", model, *parts])

    # ---------------------------------------------------------------- windows
    async def window(self, model: str, window_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.k(model, "win", window_id))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def save_window(
        self,
        model: str,
        window_id: str,
        fields: dict[str, str | int | float],
        start_ms: int,
    ) -> None:
        """Record a scored window (repeatable)."""
        # A period judged again (a late window amended it) has other rows: the scores
        # other versions made of the old rows no longer line up with them.
        stale = [
            k
            for k in await self.redis.hkeys(self.k(model, "win", window_id))
            if k.startswith((b"file:", b"version:"))
        ]
        async with self.redis.pipeline(transaction=True) as p:
            if stale:
                p.hdel(self.k(model, "win", window_id), *stale)
            p.hset(self.k(model, "win", window_id), mapping=fields)
            p.hsetnx(self.k(model, "win", window_id), "step", "0")
            p.zadd(self.k(model, "windows"), {window_id: start_ms})
            await p.execute()

    async def raise_step(self, model: str, window_id: str, step: float) -> None:
        await self._max(keys=[self.k(model, "win", window_id)], args=["step", step])

    async def latest(self, model: str, limit: int) -> list[str]:
        ids = await self.redis.zrevrange(self.k(model, "windows"), 0, limit - 1)
        return [x.decode() for x in ids]

    async def scored(self, model: str, window_id: str) -> bytes | None:
        v = await self.redis.get(self.k(model, "scored", window_id))
        return bytes(v) if v is not None else None

    async def save_scored(self, model: str, window_id: str, event: bytes) -> None:
        await self.redis.set(self.k(model, "scored", window_id), event)

    async def published(self, event_id: str) -> bool:
        return bool(await self.redis.exists(f"ctrain:monitor:published:{event_id}"))

    async def mark_published(self, event_id: str) -> None:
        await self.redis.set(f"ctrain:monitor:published:{event_id}", b"1")

    # ------------------------------------------- roles (keys shared with the promoter)
    async def note_members(
        self, model: str, period: str, members: list[str], start_ms: int
    ) -> None:
        """Where each window shard sits in event time (a challenger's evaluation window
        is named by its shard) and which period holds it (labels join to shards)."""
        if members:
            await self.redis.hset(self.k(model, "members"), mapping={m: start_ms for m in members})
            await self.redis.hset(self.k(model, "period"), mapping={m: period for m in members})

    async def periods_of(self, model: str, members: list[str]) -> set[str]:
        if not members:
            return set()
        got = await self.redis.hmget(self.k(model, "period"), members)
        return {v.decode() for v in got if v is not None}

    async def member_start(self, model: str, member: str) -> int | None:
        v = await self.redis.hget(self.k(model, "members"), member)
        return int(v) if v is not None else None

    async def set_fields(self, model: str, window_id: str, fields: dict[str, str | int]) -> None:
        await self.redis.hset(self.k(model, "win", window_id), mapping=fields)

    async def watch(self, model: str) -> dict[str, Any] | None:
        raw = await self.redis.get(keys.rollback_watch(model))
        return dict(orjson.loads(raw)) if raw else None

    async def challengers(self, model: str) -> dict[str, dict[str, Any]]:
        raw = await self.redis.hgetall(keys.challengers(model))
        return {k.decode(): dict(orjson.loads(v)) for k, v in raw.items()}

    async def compare(self, model: str, candidate_id: str, window_id: str, entry: bytes) -> None:
        await self.redis.hset(keys.challenger_scores(model, candidate_id), window_id, entry)

    async def save_role_scored(self, model: str, window_id: str, role: str, event: bytes) -> None:
        await self.redis.set(self.k(model, "scored", window_id, role), event)
