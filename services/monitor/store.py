"""The monitor's Redis state: scored windows, example ids awaiting labels, delayed labels.

Keys, all under ``ctrain:monitor:<model>:`` (docs/faults.md lists them):

- ``win:<window>`` hash: the scored window (version, rows, in-window labels, predictions
  file, validation id, event-time bounds, highest coverage step published);
- ``windows`` zset: window -> start (ms), for the quality view; ``open`` zset: window ->
  end (ms), the windows that still take labels; ``watermark``: the latest window end;
- ``ids`` hash: example id -> window, for examples without an in-window label, while
  their window is open;
- ``labels:<window>`` hash: example id -> delayed label (the first one wins: a label
  delivered twice counts once);
- ``pending`` hash + ``pending_at`` zset: labels whose example is not known yet (its
  window not scored yet), with their source record, and when they arrived;
- ``scored:<window>``: the latest ``WindowScored`` of the window (JSON).

Each label moves from pending to its window in one script (``_ATTACH``), so a label and
its window's scoring may race in any order and the label is counted once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from shared import keys

_ATTACH = """
local new = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return new
"""
_MAX = """
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""
_WATERMARK = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
return redis.call('GET', KEYS[1])
"""
CHUNK = 5000


class QualityStore:
    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._attach = redis.register_script(_ATTACH)
        self._max = redis.register_script(_MAX)
        self._wm = redis.register_script(_WATERMARK)

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
        waiting_ids: list[str],
        start_ms: int,
        end_ms: int,
    ) -> None:
        """Record a scored window and index its unlabelled examples' ids (repeatable)."""
        for i in range(0, len(waiting_ids), CHUNK):
            mapping = {x: window_id for x in waiting_ids[i : i + CHUNK] if x}
            if mapping:
                await self.redis.hset(self.k(model, "ids"), mapping=mapping)
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
            p.zadd(self.k(model, "open"), {window_id: end_ms})
            await p.execute()
        await self._wm(keys=[self.k(model, "watermark")], args=[end_ms])

    async def window_of(self, model: str, example_id: str) -> str | None:
        v = await self.redis.hget(self.k(model, "ids"), example_id)
        return v.decode() if v is not None else None

    async def labels(self, model: str, window_id: str) -> dict[str, float]:
        raw = await self.redis.hgetall(self.k(model, "labels", window_id))
        return {k.decode(): float(v) for k, v in raw.items()}

    async def delayed_count(self, model: str, window_id: str) -> int:
        return int(await self.redis.hlen(self.k(model, "labels", window_id)))

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

    # ----------------------------------------------------------------- labels
    async def attach(self, model: str, window_id: str, example_id: str, label: float) -> bool:
        """Give the window the label; False when it had one for that example already."""
        new = await self._attach(
            keys=[
                self.k(model, "labels", window_id),
                self.k(model, "pending"),
                self.k(model, "pending_at"),
            ],
            args=[example_id, repr(float(label))],
        )
        return bool(new)

    async def hold(self, model: str, example_id: str, entry: dict[str, Any], now: float) -> None:
        """Keep a label whose example is not known yet (the first one wins)."""
        async with self.redis.pipeline(transaction=True) as p:
            p.hsetnx(self.k(model, "pending"), example_id, orjson.dumps(entry))
            p.zadd(self.k(model, "pending_at"), {example_id: now}, nx=True)
            await p.execute()

    async def pending_for(self, model: str, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Held labels of any of ``ids``."""
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(ids), CHUNK):
            chunk = ids[i : i + CHUNK]
            for x, v in zip(
                chunk, await self.redis.hmget(self.k(model, "pending"), chunk), strict=True
            ):
                if v is not None:
                    out[x] = orjson.loads(v)
        return out

    async def expired_pending(self, model: str, before: float) -> dict[str, dict[str, Any]]:
        ids = [
            x.decode()
            for x in await self.redis.zrangebyscore(self.k(model, "pending_at"), "-inf", before)
        ]
        if not ids:
            return {}
        found = await self.pending_for(model, ids)
        return {x: found.get(x, {}) for x in ids}

    async def drop_pending(self, model: str, example_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as p:
            p.hdel(self.k(model, "pending"), example_id)
            p.zrem(self.k(model, "pending_at"), example_id)
            await p.execute()

    async def pending_count(self, model: str) -> int:
        return int(await self.redis.zcard(self.k(model, "pending_at")))

    async def closing_windows(self, model: str, lookback_ms: int) -> list[str]:
        """Open windows that ended more than the lookback before the latest window end."""
        wm = await self.redis.get(self.k(model, "watermark"))
        if wm is None:
            return []
        limit = int(wm) - lookback_ms
        return [
            x.decode()
            for x in await self.redis.zrangebyscore(self.k(model, "open"), "-inf", f"({limit}")
        ]

    async def close_window(self, model: str, window_id: str, ids: Iterable[str]) -> None:
        """The window takes no more labels: forget its examples' ids."""
        batch = [x for x in ids if x]
        for i in range(0, len(batch), CHUNK):
            await self.redis.hdel(self.k(model, "ids"), *batch[i : i + CHUNK])
        await self.redis.zrem(self.k(model, "open"), window_id)

    # ------------------------------------------- roles (keys shared with the promoter)
    async def note_members(self, model: str, members: list[str], start_ms: int) -> None:
        """Where each window shard sits in event time (a challenger's evaluation window
        is named by its shard)."""
        if members:
            await self.redis.hset(self.k(model, "members"), mapping={m: start_ms for m in members})

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
