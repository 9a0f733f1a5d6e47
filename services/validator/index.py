"""Which windows were validated, in event-time order, and what trained the serving model.

Redis holds the hot index; every entry is also in the artifact store
(``validated.json``), so the index can be rebuilt after a Redis loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis

from shared import keys


@dataclass(frozen=True)
class WindowRef:
    window_id: str
    stream: str
    start_ms: int
    end_ms: int
    data_uri: str
    stats_uri: str
    example_count: int


class WindowIndex(Protocol):
    async def add(self, ref: WindowRef) -> None: ...
    async def get(self, window_id: str) -> WindowRef | None: ...
    async def predecessors(self, stream: str, start_ms: int) -> list[WindowRef]: ...
    async def first(self, stream: str) -> list[WindowRef]: ...
    async def serving_windows(self, model: str) -> list[str] | None: ...
    async def latest(self, stream: str, limit: int) -> list[WindowRef]: ...
    async def add_period(self, stream: str, period_id: str, start_ms: int) -> None: ...


def serving_windows_key(model: str) -> str:
    """Written by the promoter when a model version starts serving (docs/architecture.md §5)."""
    return keys.serving_windows(model)


class RedisWindowIndex:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    @staticmethod
    def _zkey(stream: str) -> str:
        return f"ctrain:validator:{stream}:by_start"

    @staticmethod
    def _wkey(window_id: str) -> str:
        return f"ctrain:validator:window:{window_id}"

    @staticmethod
    def _pkey(stream: str) -> str:
        # Not ``:periods``: that key is the period book (core.py).
        return f"ctrain:validator:{stream}:judged"

    async def add_period(self, stream: str, period_id: str, start_ms: int) -> None:
        """A judged period, for the HTTP views (its verdict is in the artifact store)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(self._pkey(stream), {period_id: start_ms})
        pipe.set(f"ctrain:validator:period:{period_id}", stream)
        await pipe.execute()

    async def period_stream(self, period_id: str) -> str | None:
        raw: Any = await self.redis.get(f"ctrain:validator:period:{period_id}")
        return bytes(raw).decode() if raw else None

    async def latest_periods(self, stream: str, limit: int) -> list[str]:
        """The ``limit`` latest judged periods by event time, newest first."""
        ids: list[Any] = await self.redis.zrevrange(self._pkey(stream), 0, limit - 1)
        return [i.decode() for i in ids]

    async def add(self, ref: WindowRef) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self._wkey(ref.window_id), orjson.dumps(ref.__dict__))
        pipe.zadd(self._zkey(ref.stream), {ref.window_id: ref.start_ms})
        await pipe.execute()

    async def get(self, window_id: str) -> WindowRef | None:
        raw = await self.redis.get(self._wkey(window_id))
        return WindowRef(**orjson.loads(raw)) if raw else None

    async def _at(self, stream: str, score: float) -> list[WindowRef]:
        ids: list[Any] = await self.redis.zrangebyscore(self._zkey(stream), score, score)
        refs = [await self.get(i.decode()) for i in sorted(ids)]
        return [r for r in refs if r is not None]

    async def predecessors(self, stream: str, start_ms: int) -> list[WindowRef]:
        """All windows of the latest earlier start (one per partition), by event time."""
        prev = await self.redis.zrevrangebyscore(
            self._zkey(stream), f"({start_ms}", "-inf", start=0, num=1, withscores=True
        )
        if not prev:
            return []
        return await self._at(stream, float(prev[0][1]))

    async def first(self, stream: str) -> list[WindowRef]:
        head = await self.redis.zrange(self._zkey(stream), 0, 0, withscores=True)
        return await self._at(stream, float(head[0][1])) if head else []

    async def latest(self, stream: str, limit: int) -> list[WindowRef]:
        """The ``limit`` latest windows by event time, newest first."""
        ids: list[Any] = await self.redis.zrevrange(self._zkey(stream), 0, limit - 1)
        refs = [await self.get(i.decode()) for i in ids]
        return [r for r in refs if r is not None]

    async def serving_windows(self, model: str) -> list[str] | None:
        raw = await self.redis.get(serving_windows_key(model))
        return list(orjson.loads(raw)) if raw else None


def refs_in_store(root: str, stream: str | None = None) -> list[WindowRef]:
    """Every validated window the artifact store holds (``validated.json`` of scope
    window), as the index had it: what ``ctrain validator reindex`` puts back."""
    from pathlib import Path

    from shared.events import WindowValidated

    base = Path(root) / "validations"
    streams = [base / stream] if stream else sorted(p for p in base.glob("*") if p.is_dir())
    out: list[WindowRef] = []
    for s in streams:
        for f in sorted(s.glob("*/validated.json")):
            r = WindowValidated.model_validate_json(f.read_bytes())
            if r.scope != "window" or r.window_start is None or r.window_end is None:
                continue  # a period's verdict is not a window of the index
            out.append(
                WindowRef(
                    r.window_id,
                    r.stream,
                    int(r.window_start.timestamp() * 1000),
                    int(r.window_end.timestamp() * 1000),
                    r.data_uri or "",
                    r.stats_uri,
                    r.example_count,
                )
            )
    return out


def periods_in_store(root: str, stream: str | None = None) -> list[tuple[str, str, int]]:
    """Every judged period the artifact store holds, as (stream, period id, start ms): what
    ``ctrain validator reindex`` lists again for ``/v1/periods``."""
    from pathlib import Path

    from shared.events import WindowValidated

    base = Path(root) / "validations"
    streams = [base / stream] if stream else sorted(p for p in base.glob("*") if p.is_dir())
    out: list[tuple[str, str, int]] = []
    for s in streams:
        for f in sorted(s.glob("*/validated.json")):
            r = WindowValidated.model_validate_json(f.read_bytes())
            if r.scope == "period" and r.window_start is not None:
                out.append((r.stream, r.window_id, int(r.window_start.timestamp() * 1000)))
    return out
