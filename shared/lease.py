"""One leader per model among a service's replicas (docs/deploy.md, "Two replicas").

A lease is the Redis hash ``ctrain:lease:<service>:<model>`` holding the leader's
name and its fencing token, with a TTL the leader renews. The token comes from a
counter that never expires, so every new leader's token is larger than any before.
Writes that act (starting a run, moving a serving label, saving a layout) carry the
token and Redis refuses them when the lease holds another one: a leader that was
paused or cut off past its TTL and comes back cannot act on what it knew before.

A leader counts itself leader only until its last renewal's start plus 90 % of the
TTL, by its own clock: one that cannot reach Redis stops acting before another can
take over. The other replicas answer the API and record what they are asked; the
leader acts on it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import CollectorRegistry, Gauge
from redis.asyncio import Redis

from shared.consume import outage_of

log = logging.getLogger(__name__)

# Take the lease when it is free, renew it when it is ours: {1, token} or {0, holder}.
_HOLD = """
local holder = redis.call('HGET', KEYS[1], 'holder')
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, redis.call('HGET', KEYS[1], 'token')}
end
if holder then return {0, holder} end
local token = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'token', token)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, tostring(token)}
"""
_RELEASE = """
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# A write fenced by a token: set a hash field only while the lease holds that token.
_FENCED_HSET = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"""


class Fenced(Exception):
    """A write that acts was refused: this replica does not (or no longer) lead the model."""

    retryable = True


def instance_name(configured: str = "") -> str:
    """This process among the replicas: ``CTRAIN_INSTANCE``, else host (a pod's name),
    pid and a random tail."""
    return configured or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def lease_key(service: str, model: str) -> str:
    return f"ctrain:lease:{service}:{model}"


class Lease:
    """This process's claim to lead one model of one service."""

    def __init__(
        self,
        redis: Redis,
        service: str,
        model: str,
        holder: str,
        ttl_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.model = model
        self.holder = holder
        self.ttl_s = ttl_s
        self.clock = clock
        self.key = lease_key(service, model)
        self.token_key = f"{self.key}:token"
        self.token: str | None = None  # the fencing token while this process leads
        self._valid_until = 0.0
        self._hold = redis.register_script(_HOLD)
        self._release = redis.register_script(_RELEASE)
        self._hset = redis.register_script(_FENCED_HSET)

    def leads(self) -> bool:
        return self.token is not None and self.clock() < self._valid_until

    async def hold(self) -> bool:
        """Take or renew the lease; whether this process leads now. An outage propagates
        (the caller retries); leadership then lapses by the clock alone."""
        started = self.clock()
        got, value = await self._hold(
            keys=[self.key, self.token_key], args=[self.holder, int(self.ttl_s * 1000)]
        )
        if got:
            self.token = value.decode() if isinstance(value, bytes) else str(value)
            self._valid_until = started + 0.9 * self.ttl_s
        else:
            self.token = None
        return self.leads()

    async def release(self) -> None:
        """Give the lease up (a graceful stop): another replica leads at its next try."""
        self.token = None
        await self._release(keys=[self.key], args=[self.holder])

    async def leader(self) -> str | None:
        """Who leads the model now (any replica may ask), or None while nobody does."""
        raw = await self.redis.hget(self.key, "holder")
        return raw.decode() if isinstance(raw, bytes) else raw

    def deposed(self) -> Fenced:
        """Redis refused a write fenced by this token: lead no more (until a renewal
        wins the lease again); the error to raise."""
        self.token = None
        return Fenced(f"the lease of {self.model!r} moved to another replica")

    def fence(self) -> str:
        """The token a fenced write carries; Fenced when this process does not lead."""
        if not self.leads() or self.token is None:
            raise Fenced(f"not the leader of {self.model!r} (lease {self.key})")
        return self.token

    async def check(self) -> None:
        """Fenced unless Redis holds this process's token now: the last look before a
        write Redis cannot fence (TF Serving's config)."""
        token = self.fence()
        held = await self.redis.hget(self.key, "token")
        if (held.decode() if isinstance(held, bytes) else held) != token:
            raise self.deposed()

    async def hset(self, key: str, field: str, value: bytes | str) -> None:
        """``HSET key field value`` only while this process holds the lease."""
        if not await self._hset(keys=[self.key, key], args=[self.fence(), field, value]):
            raise self.deposed()


class LeaderGauge:
    """``ctrain_<service>_leader{model}``: 1 where this replica leads."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.gauge = Gauge(
            f"ctrain_{service}_leader",
            "1 while this replica leads the model (holds its lease), else 0.",
            ["model"],
            registry=registry,
        )


Hook = Callable[[str], Awaitable[None]]


class Leadership:
    """Keeps a lease per model renewed and tells the service when it gains or loses one."""

    def __init__(
        self,
        redis: Redis,
        service: str,
        models: Iterable[str],
        *,
        ttl_s: float = 10.0,
        holder: str | None = None,
        gauge: LeaderGauge | None = None,
        on_gain: Hook | None = None,
        on_loss: Hook | None = None,
    ) -> None:
        self.holder = holder or instance_name()
        self.leases = {m: Lease(redis, service, m, self.holder, ttl_s) for m in models}
        self.interval_s = ttl_s / 5
        self.gauge = gauge
        self.on_gain = on_gain
        self.on_loss = on_loss
        self._led: set[str] = set()
        self.outage: str | None = None

    def leads(self, model: str) -> bool:
        lease = self.leases.get(model)
        return lease is not None and lease.leads()

    def lease(self, model: str) -> Lease:
        return self.leases[model]

    async def step(self) -> None:
        """Renew or take each lease once; call the hooks for what changed."""
        for model, lease in self.leases.items():
            try:
                await lease.hold()
                self.outage = None
            except Exception as e:
                why = outage_of(e)
                if why is None:
                    raise
                self.outage = why  # leadership lapses by the clock while Redis is away
            await self._changed(model, lease.leads())

    async def _changed(self, model: str, leads: bool) -> None:
        was = model in self._led
        if self.gauge is not None:
            self.gauge.gauge.labels(model).set(1 if leads else 0)
        if leads == was:
            return
        if leads:
            if self.on_gain is not None and not await self._gained(model):
                return
            self._led.add(model)
            log.info("leading", extra={"model": model, "holder": self.holder})
        else:
            self._led.discard(model)
            log.warning("no longer leading", extra={"model": model, "holder": self.holder})
            if self.on_loss is not None:
                await self.on_loss(model)

    async def _gained(self, model: str) -> bool:
        """Run the gain hook. An outage it meets (the pipeline backend refusing a run, say)
        must not stop the process, least of all at start: the lead is taken over again, with
        the hook, at the next step, until the hook completes."""
        assert self.on_gain is not None
        try:
            await self.on_gain(model)
        except Exception as e:
            why = outage_of(e)
            if why is None:
                raise
            log.warning(
                "taking over the lead was interrupted; again at the next renewal",
                extra={"model": model, "holder": self.holder, "outage": why},
            )
            return False
        return True

    async def run(self) -> None:
        """Until cancelled: :meth:`step` every fifth of the TTL."""
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("renewing leases failed")
            await asyncio.sleep(self.interval_s)  # the lease's renewal period

    async def release(self) -> None:
        """On SIGTERM: give every lease up so another replica leads at once."""
        for model, lease in self.leases.items():
            try:
                await lease.release()
            except Exception as e:
                if outage_of(e) is None:
                    raise
                log.warning("lease not released (it lapses by its TTL)", extra={"why": str(e)})
            await self._changed(model, False)

    async def leaders(self) -> dict[str, str | None]:
        return {m: await lease.leader() for m, lease in self.leases.items()}
