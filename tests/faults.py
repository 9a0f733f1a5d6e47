"""Fault injection at await points: a shared counter over every awaited call a handler
makes to its dependencies (Redis, publish, the backend), failing exactly one of them.

``mode="before"``: the call fails without effect (the dependency was down).
``mode="after"``: the call takes effect, then the caller sees the error (the answer
was lost), the case that makes handlers prove they are safe to repeat.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions


class Injected(redis.exceptions.ConnectionError):
    """The fault: a connection error, which every service reads as an outage."""


@dataclass
class Faults:
    fail_at: int | None = None  # the n-th awaited call fails (1-based); None: count only
    mode: str = "before"
    armed: bool = True
    calls: int = 0
    where: list[str] = field(default_factory=list)
    fired: str | None = None

    async def around(self, name: str, pending: Awaitable[Any]) -> Any:
        if not self.armed:
            return await pending
        self.calls += 1
        self.where.append(name)
        hit = self.calls == self.fail_at
        if hit and self.mode == "before":
            self.fired = name
            close = getattr(pending, "close", None)
            if close is not None:
                close()  # never awaited: the call had no effect
            raise Injected(f"injected before {name} (await point {self.calls})")
        result = await pending
        if hit:
            self.fired = name
            raise Injected(f"injected after {name} (await point {self.calls})")
        return result


class _Wrapped:
    """An object of a client library, its await points routed through ``faults``."""

    def __init__(self, target: Any, faults: Faults, label: str) -> None:
        self._target = target
        self._faults = faults
        self._label = label


class Flaky(_Wrapped):
    """Wraps an object: each awaited method call goes through ``faults``. A method that
    returns a callable script (``register_script``) is wrapped too."""

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr
        faults, label = self._faults, f"{self._label}.{name}"

        def call(*args: Any, **kwargs: Any) -> Any:
            if name == "register_script":
                return FlakyCallable(attr(*args, **kwargs), faults, label)
            if name == "pipeline":
                return FlakyPipeline(attr(*args, **kwargs), faults, label)
            result = attr(*args, **kwargs)
            if inspect.isawaitable(result):
                return faults.around(label, result)
            return result

        return call


class FlakyCallable(_Wrapped):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._faults.around(self._label, self._target(*args, **kwargs))


class FlakyPipeline(_Wrapped):
    """A Redis pipeline: commands queue without I/O; ``execute`` is the await point."""

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if name == "execute":
            return lambda *a, **kw: self._faults.around(f"{self._label}.execute", attr(*a, **kw))
        return attr


def flaky_fn(fn: Callable[..., Awaitable[Any]], faults: Faults, label: str) -> Any:
    async def call(*args: Any, **kwargs: Any) -> Any:
        return await faults.around(label, fn(*args, **kwargs))

    return call


@dataclass
class Raw:
    """The Kafka record behind a message (what a dead letter names as its source)."""

    topic: str
    partition: int = 0
    offset: int = 7
    key: bytes | None = None


@dataclass
class Msg:
    """A FastStream message as shared.consume.Consumer sees it: body, record, ack()."""

    body: bytes
    raw_message: Raw
    acks: int = 0

    async def ack(self) -> None:
        self.acks += 1


def msg(body: bytes, topic: str) -> Msg:
    return Msg(body, Raw(topic))
