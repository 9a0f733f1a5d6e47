"""Dead letters: read them, pick some, send them back to where they came from.

Three dead-letter topics hold what the loop could not handle, each letter with its
reason, its source (topic, partition, offset) and the record's bytes:
``ctrain.examples.dlq`` (ingest's rejected examples), ``ctrain.windows.dlq`` (windows
the validator could not judge) and ``ctrain.events.dlq`` (validations, candidates and
promotions a service gave up on). After a fix (a schema change, a bug fixed, a
dependency back), :func:`redrive` republishes the selected records to their source
topic; each redrive is audited in Redis (``ctrain:dlq:redrives``) and a letter already
redriven is skipped unless forced, and counted once either way (``ctrain:dlq:redriven``).
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from shared import topics
from shared.events import DeadLetter, EventDeadLetter, WindowDeadLetter, parse_event
from shared.kafka import make_producer, read_to_end
from shared.settings import CommonSettings

Letter = DeadLetter | WindowDeadLetter | EventDeadLetter
QUEUES = {
    "examples": topics.EXAMPLES_DLQ,
    "windows": topics.WINDOWS_DLQ,
    "events": topics.EVENTS_DLQ,
}
AUDIT = "ctrain:dlq:redrives"
REDRIVEN = "ctrain:dlq:redriven"


class DlqError(Exception):
    """A request the dead-letter tools cannot carry out; the message says why."""


@dataclass(frozen=True)
class Held:
    """A letter as it sits in its queue (the DLQ offset tells repeats apart)."""

    queue: str
    offset: int
    letter: Letter

    @property
    def id(self) -> str:
        return self.letter.id


async def read(settings: CommonSettings, queues: list[str]) -> list[Held]:
    """Every letter of ``queues`` ("examples", "windows", "events"), oldest first; a
    letter written twice under one id (a retried dead-lettering) is listed once."""
    out: list[Held] = []
    seen: set[str] = set()
    for q in queues:
        for rec in await read_to_end(settings.kafka_bootstrap, QUEUES[q]):
            try:
                ev = parse_event(rec.value)
            except (ValidationError, orjson.JSONDecodeError):
                continue  # not a letter: nothing here can send it back
            if isinstance(ev, Letter) and ev.id not in seen:
                seen.add(ev.id)
                out.append(Held(q, int(rec.offset), ev))
    return out


def select(
    held: list[Held],
    *,
    reason: str | None = None,
    ids: list[str] | None = None,
    source_partition: int | None = None,
    from_offset: int | None = None,
    to_offset: int | None = None,
) -> list[Held]:
    """The letters matching every filter given (an offset range is of the source)."""
    out = []
    for h in held:
        src = h.letter.source
        if reason is not None and h.letter.reason != reason:
            continue
        if ids and h.id not in ids:
            continue
        if source_partition is not None and src.partition != source_partition:
            continue
        if from_offset is not None and src.offset < from_offset:
            continue
        if to_offset is not None and src.offset > to_offset:
            continue
        out.append(h)
    return out


def by_reason(held: list[Held]) -> list[tuple[str, str, int]]:
    """(queue, reason, count), most frequent first."""
    c = Counter((h.queue, h.letter.reason) for h in held)
    return [(q, r, n) for (q, r), n in c.most_common()]


def payload_bytes(letter: Letter) -> bytes:
    if isinstance(letter, DeadLetter) and letter.payload_encoding == "base64":
        return base64.b64decode(letter.payload)
    return letter.payload.encode("utf-8")


def _key(letter: Letter) -> bytes | None:
    if isinstance(letter, DeadLetter):
        return letter.source_key.encode() if letter.source_key else None
    if isinstance(letter, WindowDeadLetter):
        return letter.stream.encode() if letter.stream else None
    try:
        return parse_event(letter.payload).key
    except (ValidationError, orjson.JSONDecodeError, NotImplementedError):
        return None


def target(letter: Letter, to: str | None) -> str:
    """Where a letter goes back to: its source topic; lines posted over HTTP had none."""
    if to:
        return to
    if letter.source.topic == "http":
        raise DlqError(
            f"{letter.id} came in over HTTP (no source topic): name one with --to "
            "(the stream's topic, e.g. ctrain.examples)"
        )
    return letter.source.topic


@dataclass
class Redriven:
    sent: list[tuple[str, str]]  # (letter id, topic)
    skipped: list[tuple[str, str]]  # (letter id, why)


async def redrive(
    settings: CommonSettings,
    redis: Any,
    chosen: list[Held],
    *,
    actor: str,
    why: str,
    to: str | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> Redriven:
    """Send ``chosen`` back to their source topics, audited; a letter already redriven
    is skipped unless ``force`` (and counted once in ``ctrain:dlq:redriven`` anyway)."""
    plan: list[tuple[Held, str]] = []
    skipped: list[tuple[str, str]] = []
    for h in chosen:
        before = await redis.hget(REDRIVEN, h.id)
        if before and not force:
            at = orjson.loads(before).get("last_at")
            skipped.append(
                (h.id, f"already redriven at {time.strftime('%FT%TZ', time.gmtime(at))}")
            )
            continue
        plan.append((h, target(h.letter, to)))
    if dry_run or not plan:
        return Redriven([(h.id, t) for h, t in plan], skipped)
    producer = make_producer(settings)
    await producer.start()
    try:
        for h, topic in plan:
            await producer.send_and_wait(topic, payload_bytes(h.letter), key=_key(h.letter))
            now = time.time()
            before = await redis.hget(REDRIVEN, h.id)
            times = (orjson.loads(before)["times"] if before else 0) + 1
            first = orjson.loads(before)["first_at"] if before else now
            await redis.hset(
                REDRIVEN,
                h.id,
                orjson.dumps({"first_at": first, "last_at": now, "times": times, "topic": topic}),
            )
            await redis.xadd(
                AUDIT,
                {
                    "letter_id": h.id,
                    "queue": h.queue,
                    "reason": h.letter.reason,
                    "topic": topic,
                    "actor": actor,
                    "why": why,
                    "times": str(times),
                    "at": str(now),
                },
            )
    finally:
        await producer.stop()
    return Redriven([(h.id, t) for h, t in plan], skipped)


async def redriven(redis: Any) -> dict[str, dict[str, Any]]:
    raw: Any = await redis.hgetall(REDRIVEN)
    return {k.decode(): orjson.loads(v) for k, v in (raw or {}).items()}


async def audit(redis: Any, count: int = 100) -> list[dict[str, str]]:
    rows: Any = await redis.xrevrange(AUDIT, count=count)
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in rows or []]
