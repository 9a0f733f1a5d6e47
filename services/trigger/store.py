"""One model's trigger state in Redis, and the read views over it.

The state is saved compare-and-set (the sha1 of the state a decision read: another
replica may have folded an event in meanwhile), with the decision log entries taken
with it, and, for a decision that started a run, only while the replica holds the
model's lease. Run records, claims and candidates have their keys here too.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from redis.asyncio import Redis

from services.trigger import policy as pol
from services.trigger.backends import components_of
from shared.artifacts import ArtifactStore

# 0: the state changed since it was read; -1: the lease holds another token; 1: saved.
_SAVE = """
local cur = redis.call('GET', KEYS[1])
local sha = ''
if cur then sha = redis.sha1hex(cur) end
if sha ~= ARGV[1] then return 0 end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[3], 'token') ~= ARGV[3] then return -1 end
redis.call('SET', KEYS[1], ARGV[2])
for _, entry in ipairs(cjson.decode(ARGV[4])) do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', unpack(entry))
end
return 1
"""


class StateConflict(Exception):
    """Another replica saved the model's state after this decision read it."""

    retryable = True


def text(raw: bytes | str | None) -> str:
    if raw is None:
        return ""
    return raw.decode() if isinstance(raw, bytes) else raw


def run_key(run_id: str, part: str = "") -> str:
    """A run's claim (then its backend run id), or its ``meta`` / ``outcome``."""
    return f"ctrain:trigger:run:{run_id}" + (f":{part}" if part else "")


def candidate_key(candidate_id: str) -> str:
    return f"ctrain:trigger:candidate:{candidate_id}"


class TriggerStore:
    def __init__(self, redis: Redis, model: str, artifacts: ArtifactStore) -> None:
        self.redis = redis
        self.model = model
        self.artifacts = artifacts
        self._save = redis.register_script(_SAVE)

    def key(self, suffix: str) -> str:
        return f"ctrain:trigger:{self.model}:{suffix}"

    async def load(self) -> pol.ModelState:
        return (await self.read())[0]

    async def read(self) -> tuple[pol.ModelState, str]:
        """The state and the sha1 of its bytes ("" when there is none yet)."""
        raw: Any = await self.redis.get(self.key("state"))
        # sha1: what Redis's Lua can compute (redis.sha1hex); a tag, not a secret.
        sha = hashlib.sha1(raw).hexdigest() if raw else ""
        return (pol.ModelState.from_json(orjson.loads(raw)) if raw else pol.ModelState()), sha

    async def save(
        self,
        state: pol.ModelState,
        read_sha: str,
        entries: list[dict[str, str]],
        lease_key: str = "",
        token: str = "",
    ) -> bool:
        """Save if nobody saved since ``read_sha`` (else StateConflict) and, with a
        ``token``, while the lease at ``lease_key`` holds it (else False)."""
        flat = [[x for kv in entry.items() for x in kv] for entry in entries]
        saved = await self._save(
            keys=[self.key("state"), self.key("decisions"), lease_key or self.key("lease")],
            args=[read_sha, orjson.dumps(state.to_json()), token, orjson.dumps(flat)],
        )
        if saved == 0:
            raise StateConflict(f"model {self.model}: another replica saved first")
        return bool(saved == 1)

    async def decisions(self, count: int = 50) -> list[dict[str, str]]:
        rows: Any = await self.redis.xrevrange(self.key("decisions"), count=count)
        return [{text(k): text(v) for k, v in fields.items()} for _, fields in rows or []]

    async def add_run(self, run_id: str, meta: dict[str, Any], at: float) -> None:
        await self.redis.set(run_key(run_id, "meta"), orjson.dumps(meta))
        await self.redis.zadd(self.key("runs"), {run_id: at})

    async def meta(self, run_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(run_key(run_id, "meta"))
        return dict(orjson.loads(raw)) if raw else None

    async def runs(self, count: int = 20) -> list[dict[str, Any]]:
        """The latest runs, newest first, each with its components' progress."""
        ids: Any = await self.redis.zrevrange(self.key("runs"), 0, count - 1)
        views = [await self.run(text(i)) for i in ids or []]
        return [v for v in views if v is not None]

    async def run_ids_with_prefix(self, prefix: str) -> list[str]:
        """This model's run ids that start with ``prefix`` (a short id, as git takes)."""
        out = []
        async for member, _ in self.redis.zscan_iter(self.key("runs")):
            rid = member.decode() if isinstance(member, bytes) else str(member)
            if rid.startswith(prefix):
                out.append(rid)
        return sorted(out)

    async def run(self, run_id: str) -> dict[str, Any] | None:
        meta = await self.meta(run_id)
        if meta is None:
            return None
        outcome_raw = await self.redis.get(run_key(run_id, "outcome"))
        outcome = orjson.loads(outcome_raw) if outcome_raw else {}
        run_dir = meta["params"]["run_dir"]
        log_path = f"{run_dir}/run.log"
        log = (
            self.artifacts.read_bytes(log_path).decode(errors="replace")
            if (self.artifacts.exists(log_path))
            else ""
        )
        return {
            "run_id": run_id,
            "model": self.model,
            "state": outcome.get("state") or ("running" if log else "submitted"),
            "reason": meta["reason"],
            "windows": meta["windows"],
            "eval_window": meta["eval_window"],
            "eval_windows": meta.get("eval_windows", [meta["eval_window"]]),
            "train_examples": meta.get("train_examples"),
            "eval_examples": meta.get("eval_examples"),
            # Per period: examples and labels joined when decided (-1: inside the
            # examples); and what the gather step kept (labels from their own stream).
            "labels": meta.get("labels"),
            "gathered_labels": self.gathered_labels(meta),
            "module": meta["params"]["module_path"],
            "module_sha256": meta.get("module_sha256"),
            "why": meta.get("why", meta["reason"]),
            "candidate_id": meta["candidate_id"],
            "submitted_at": meta["submitted_at"],
            "finished_at": outcome.get("finished_at"),
            "failed_component": outcome.get("failed_component"),
            "error": outcome.get("error"),
            "components": components_of(log),
        }

    def gathered_labels(self, meta: dict[str, Any]) -> dict[str, Any] | None:
        """What the run's gather step counted: labelled, defaulted and left-out examples of
        its training and evaluation data and of each shard (labels from their own stream)."""
        uri = f"{meta['params']['run_dir']}/gather/labels.json"
        if not meta["params"].get("labels_json") or not self.artifacts.exists(uri):
            return None
        return dict(orjson.loads(self.artifacts.read_bytes(uri)))
