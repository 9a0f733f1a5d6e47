"""Candidates, approvals and the audit trail in Redis, with atomic transitions.

A transition is a compare-and-set on the candidate's state (one Lua script), so
two operators or two replicas can never both move the same candidate. Every
transition appends to the audit stream with actor, reason, before and after.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from services.promoter.states import next_state
from shared.events import ModelCandidate
from shared.lease import Lease

# The state moves, its reason is set and its audit entry is written in one step:
# an outage can stop a transition before or after, never between (no lost audit).
_CAS = """
if ARGV[9] ~= '' and redis.call('HGET', KEYS[3], 'token') ~= ARGV[9] then return {-1, ''} end
local cur = redis.call('HGET', KEYS[1], 'state')
if cur == false then cur = 'new' end
if cur ~= ARGV[1] then return {0, cur} end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'updated_at', ARGV[3], 'reason', ARGV[4])
redis.call('XADD', KEYS[2], '*', 'candidate_id', ARGV[5], 'model', ARGV[6], 'actor', ARGV[7],
  'action', ARGV[8], 'reason', ARGV[4], 'before', ARGV[1], 'after', ARGV[2], 'at', ARGV[3])
return {1, cur}
"""
AUDIT = "ctrain:promoter:audit"
# Candidates approved (by an operator or the gate) that the leader has still to promote.
TO_PROMOTE = "ctrain:promoter:to_promote"


@dataclass
class Record:
    candidate: ModelCandidate
    state: str
    approvals: list[str] = field(default_factory=list)
    version: int | None = None
    updated_at: float = 0.0
    reason: str = ""
    # The model's serving layout when its promotion began (a resumed one starts there).
    prior_layout: dict[str, Any] | None = None
    # Who approved it and how ("gate"/"auto", or an approver/"approved"): the promotion's
    # event says so whichever replica or attempt carries it out.
    promote_by: str = ""
    promote_as: str = ""

    def to_public(self) -> dict[str, Any]:
        c = self.candidate
        return {
            "candidate_id": c.candidate_id,
            "model": c.model,
            "state": self.state,
            "blessed": c.blessed,
            "failed_checks": c.failed_checks,
            "approvals": self.approvals,
            "version": self.version,
            "reason": self.reason,
            "updated_at": self.updated_at,
        }


class CandidateStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._cas = redis.register_script(_CAS)

    @staticmethod
    def _key(cid: str) -> str:
        return f"ctrain:promoter:candidate:{cid}"

    async def add(self, c: ModelCandidate) -> bool:
        """Store a new candidate; False once it has left state ``new`` (a redelivery).
        Every write is safe to repeat: an outage between them leaves a candidate that
        is still ``new``, and handling it again finishes the job."""
        key = self._key(c.candidate_id)
        now = time.time()
        await self.redis.hsetnx(key, "candidate", c.to_bytes())
        await self.redis.hsetnx(key, "updated_at", now)
        if not await self.redis.hsetnx(key, "state", "new"):
            state = await self.redis.hget(key, "state")
            if state not in (None, b"new"):
                return False
        await self.redis.zadd("ctrain:promoter:candidates", {c.candidate_id: now}, nx=True)
        await self.redis.zadd(
            f"ctrain:promoter:{c.model}:candidates", {c.candidate_id: now}, nx=True
        )
        return True

    async def get(self, cid: str) -> Record | None:
        raw: Any = await self.redis.hgetall(self._key(cid))
        if not raw or b"candidate" not in raw:
            return None
        version = raw.get(b"version")
        return Record(
            candidate=ModelCandidate.model_validate_json(raw[b"candidate"]),
            state=raw.get(b"state", b"new").decode(),
            approvals=orjson.loads(raw.get(b"approvals", b"[]")),
            version=int(version) if version else None,
            updated_at=float(raw.get(b"updated_at", b"0")),
            reason=raw.get(b"reason", b"").decode(),
            prior_layout=orjson.loads(raw[b"prior_layout"]) if b"prior_layout" in raw else None,
            promote_by=raw.get(b"promote_by", b"").decode(),
            promote_as=raw.get(b"promote_as", b"").decode(),
        )

    async def ids_with_prefix(self, prefix: str) -> list[str]:
        """Every candidate id that starts with ``prefix`` (ZSCAN, so a long list stays cheap)."""
        out = []
        async for member, _ in self.redis.zscan_iter("ctrain:promoter:candidates"):
            cid = member.decode() if isinstance(member, bytes) else str(member)
            if cid.startswith(prefix):
                out.append(cid)
        return sorted(out)

    async def find(self, model: str | None = None, state: str | None = None) -> list[Record]:
        key = f"ctrain:promoter:{model}:candidates" if model else "ctrain:promoter:candidates"
        ids: Any = await self.redis.zrevrange(key, 0, 499)
        out: list[Record] = []
        for i in ids:
            rec = await self.get(i.decode())
            if rec is not None and (state is None or rec.state == state):
                out.append(rec)
        return out

    async def transition(
        self,
        cid: str,
        action: str,
        actor: str,
        reason: str,
        expected: str | None = None,
        lease: Lease | None = None,
    ) -> tuple[bool, str]:
        """Apply ``action`` atomically; returns (done, state before). With ``lease`` only
        while this replica holds it (Fenced otherwise: an action of a deposed leader)."""
        rec = await self.get(cid)
        before = expected or (rec.state if rec else "new")
        after = next_state(before, action)
        if after is None:
            return False, before
        model = rec.candidate.model if rec else ""
        ok, cur = await self._cas(
            keys=[self._key(cid), AUDIT, lease.key if lease else AUDIT],
            args=[
                before,
                after,
                str(time.time()),
                reason,
                cid,
                model,
                actor,
                action,
                lease.fence() if lease else "",
            ],
        )
        if ok == -1 and lease is not None:
            raise lease.deposed()
        cur_s = cur.decode() if isinstance(cur, bytes) else str(cur)
        if not ok:
            return False, cur_s
        return True, before

    async def set_fields(self, cid: str, **fields: Any) -> None:
        await self.redis.hset(
            self._key(cid),
            mapping={k: orjson.dumps(v) if isinstance(v, list) else v for k, v in fields.items()},
        )

    async def approve_partly(
        self, cid: str, rec: Record, actor: str, reason: str, approvals: list[str]
    ) -> None:
        """One approval of several needed: recorded with its audit entry, atomically."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self._key(cid), "approvals", orjson.dumps(approvals))
        pipe.xadd(
            AUDIT,
            {
                "candidate_id": cid,
                "model": rec.candidate.model,
                "actor": actor,
                "action": "approve",
                "reason": reason,
                "before": rec.state,
                "after": rec.state,
                "at": str(time.time()),
            },
        )
        await pipe.execute()

    async def note(self, cid: str, model: str, actor: str, action: str, reason: str) -> None:
        """An audit entry that moves no state (a watched promotion kept, with its evidence)."""
        rec = await self.get(cid) if cid else None
        state = rec.state if rec else ""
        await self.redis.xadd(
            AUDIT,
            {
                "candidate_id": cid,
                "model": model,
                "actor": actor,
                "action": action,
                "reason": reason,
                "before": state,
                "after": state,
                "at": str(time.time()),
            },
        )

    async def audit_log(self, count: int = 100) -> list[dict[str, str]]:
        rows: Any = await self.redis.xrevrange(AUDIT, count=count)
        return [
            {"id": i.decode(), **{k.decode(): v.decode() for k, v in f.items()}}
            for i, f in rows or []
        ]
