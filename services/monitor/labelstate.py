"""The label join's Redis state: which example an id names, and which label each got.

Keys, under ``ctrain:labels:<model>:`` (docs/monitor.md lists them):

- ``ids`` hash: example id (business id or ``topic:partition:offset``) -> ``<shard>\\t<row>``;
- ``shards`` hash: window shard -> JSON {data_uri, end_ms}: the shards indexed;
- ``claims`` hash: ``<shard>\\t<row>`` -> JSON [partition, offset, features]: the label the
  example got (the first by arrival; a redelivery of the same record is recognised by its
  source position, so a crash between claim and write loses nothing);
- ``count`` hash (``shared.keys.labels_count``): shard -> labels joined, one per claim;
  ``inline`` (``shared.keys.labels_inline``): shard -> examples carrying their label;
- ``pending`` hash + ``pending_at`` zset: labels whose example is not indexed yet, with
  their source record (every record for an id, one JSON a line, each once by its source
  position), scored by the first one's event time (ms);
- ``clock`` (``shared.keys.labels_clock``): the labels' watermark, the slowest labels
  partition's newest joined event time (``clock_parts``: per partition), so a window
  does not read as matured while another partition still brings its labels;
  ``watermark``: the newest end of an indexed shard.

Memory stays in Redis and the artifact store: the process holds one batch at a time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from shared import keys

CHUNK = 5000
_CLAIM = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
  return false
end
return cur
"""
_HOLD = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and string.find(cur, ARGV[3], 1, true) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], cur and (cur .. '\\n' .. ARGV[2]) or ARGV[2])
redis.call('ZADD', KEYS[2], 'NX', ARGV[4], ARGV[1])
return 1
"""
_CLOCK = """
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
local low = nil
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  local x = tonumber(v)
  if low == nil or x < low then low = x end
end
redis.call('SET', KEYS[2], low)
return low
"""
_MAX = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


class LabelState:
    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._claim = redis.register_script(_CLAIM)
        self._max = redis.register_script(_MAX)
        self._hold = redis.register_script(_HOLD)
        self._clock = redis.register_script(_CLOCK)

    @staticmethod
    def k(model: str, part: str) -> str:
        return f"ctrain:labels:{model}:{part}"

    # ------------------------------------------------------------------ shards
    async def indexed(self, model: str, shard: str) -> bool:
        return bool(await self.redis.hexists(self.k(model, "shards"), shard))

    async def index(
        self,
        model: str,
        shard: str,
        data_uri: str,
        end_ms: int,
        ids: list[tuple[str, int]],
        inline: int = 0,
        carried: frozenset[int] = frozenset(),
    ) -> None:
        """Map each (id, row) to the shard, then mark the shard indexed (repeatable).
        ``inline``: its examples that carry their label in the window, ``carried`` their
        rows."""
        for i in range(0, len(ids), CHUNK):
            mapping = {
                x: f"{shard}\t{row}\t1" if row in carried else f"{shard}\t{row}"
                for x, row in ids[i : i + CHUNK]
            }
            if mapping:
                await self.redis.hset(self.k(model, "ids"), mapping=mapping)
        await self.redis.hset(keys.labels_inline(model), shard, inline)
        await self.redis.hset(
            self.k(model, "shards"), shard, orjson.dumps({"data_uri": data_uri, "end_ms": end_ms})
        )
        await self._max(keys=[self.k(model, "watermark")], args=[end_ms])

    async def shards(self, model: str, names: list[str]) -> dict[str, dict[str, Any]]:
        if not names:
            return {}
        raw = await self.redis.hmget(self.k(model, "shards"), names)
        return {n: orjson.loads(v) for n, v in zip(names, raw, strict=True) if v is not None}

    async def locate(self, model: str, ids: list[str]) -> list[tuple[str, int, bool] | None]:
        """(shard, row, whether the example carries its label in the window) of each id."""
        out: list[tuple[str, int, bool] | None] = []
        for i in range(0, len(ids), CHUNK):
            for v in await self.redis.hmget(self.k(model, "ids"), ids[i : i + CHUNK]):
                if v is None:
                    out.append(None)
                else:
                    shard, row, *carried = v.decode().split("\t")
                    out.append((shard, int(row), bool(carried)))
        return out

    async def watermark(self, model: str) -> int | None:
        v = await self.redis.get(self.k(model, "watermark"))
        return int(v) if v is not None else None

    # ------------------------------------------------------------------ claims
    async def claim(self, model: str, claims: list[tuple[str, int, bytes]]) -> list[bytes | None]:
        """Claim each (shard, row, value) at once; None where the claim is new, else the
        value already claimed."""
        if not claims:
            return []
        async with self.redis.pipeline(transaction=False) as p:
            for shard, row, value in claims:
                await self._claim(
                    keys=[self.k(model, "claims"), keys.labels_count(model)],
                    args=[f"{shard}\t{row}", value, shard],
                    client=p,
                )
            got = await p.execute()
        return [None if g is None else bytes(g) for g in got]

    async def counts(self, model: str, shards: list[str]) -> dict[str, int]:
        if not shards:
            return {}
        raw = await self.redis.hmget(keys.labels_count(model), shards)
        return {s: int(v) if v is not None else 0 for s, v in zip(shards, raw, strict=True)}

    async def advance_clock(self, model: str, partition: int, ms: int) -> None:
        """A labels partition's newest joined event time; the clock becomes the lowest of
        the partitions' (one still behind holds it back)."""
        await self._clock(
            keys=[self.k(model, "clock_parts"), keys.labels_clock(model)], args=[partition, ms]
        )

    # ----------------------------------------------------------------- pending
    async def hold(self, model: str, entries: list[tuple[str, bytes, str, int]]) -> None:
        """Keep labels whose example is not indexed yet: (id, entry, source marker, ms).
        An entry whose source marker is there already (a redelivery) is kept once."""
        if not entries:
            return
        async with self.redis.pipeline(transaction=False) as p:
            for x, entry, marker, ms in entries:
                await self._hold(
                    keys=[self.k(model, "pending"), self.k(model, "pending_at")],
                    args=[x, entry, marker, ms],
                    client=p,
                )
            await p.execute()

    async def pending_for(self, model: str, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Every held label of any of ``ids``, in arrival order."""
        out: dict[str, list[dict[str, Any]]] = {}
        for i in range(0, len(ids), CHUNK):
            chunk = ids[i : i + CHUNK]
            for x, v in zip(
                chunk, await self.redis.hmget(self.k(model, "pending"), chunk), strict=True
            ):
                if v is not None:
                    out[x] = [orjson.loads(line) for line in v.split(b"\n")]
        return out

    async def pending_ids(self, model: str) -> AsyncIterator[list[str]]:
        """The ids of every held label, a chunk at a time (oldest first)."""
        start = 0
        while True:
            got = await self.redis.zrange(self.k(model, "pending_at"), start, start + CHUNK - 1)
            if not got:
                return
            yield [x.decode() for x in got]
            start += CHUNK

    async def expired(self, model: str, before_ms: int) -> dict[str, list[dict[str, Any]]]:
        ids = [
            x.decode()
            for x in await self.redis.zrangebyscore(
                self.k(model, "pending_at"), "-inf", f"({before_ms}"
            )
        ]
        if not ids:
            return {}
        found = await self.pending_for(model, ids)
        return {x: found.get(x, []) for x in ids}

    async def drop_pending(self, model: str, ids: list[str]) -> None:
        for i in range(0, len(ids), CHUNK):
            chunk = ids[i : i + CHUNK]
            async with self.redis.pipeline(transaction=True) as p:
                p.hdel(self.k(model, "pending"), *chunk)
                p.zrem(self.k(model, "pending_at"), *chunk)
                await p.execute()

    async def pending_count(self, model: str) -> int:
        return int(await self.redis.zcard(self.k(model, "pending_at")))
