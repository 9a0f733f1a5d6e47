"""Which windows make one judged period, and when a period is complete: pure state.

Ingest cuts windows per partition, so one event-time period of a stream arrives
as one window per partition, in an order that varies from run to run. Judging
each window alone would make verdicts depend on the partition count and
streaks on the arrival order. The validator judges a *period* instead: every
window of one stream with the same event-time bounds, once each partition of
the source topic has moved past the period's end (its frontier, the largest
window end it has published), or once ``grace_s`` of wall time passed since the
period's first window arrived (a silent partition must not stall the loop).
Periods are judged in event-time order.

Falling volume must not blind the loop either: a period too small to judge is
kept *pending* and measured again together with the following small periods
once they add up to the minimum (a *group*). Count-only windows (no duration)
have no shared period: each is judged on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.ids import stable_id


@dataclass
class Period:
    key: str
    start_ms: int
    end_ms: int
    members: list[str]
    counts: list[int]
    arrived: float
    bucketed: bool = True

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class Unit:
    """What gets one verdict: a period, or a group of consecutive small periods."""

    unit_id: str
    start_ms: int
    end_ms: int
    members: tuple[str, ...]
    count: int
    periods: tuple[str, ...]
    complete: bool


@dataclass
class Book:
    """Per stream; persisted as JSON in Redis after each window."""

    frontier: dict[str, int] = field(default_factory=dict)
    open: dict[str, Period] = field(default_factory=dict)
    judged: dict[str, str] = field(default_factory=dict)  # period key -> unit id
    by_window: dict[str, list[str]] = field(default_factory=dict)  # window -> unit ids
    pending: list[Period] = field(default_factory=list)
    last: list[str] = field(default_factory=list)  # members of the last unit judged whole
    outbox: list[str] = field(default_factory=list)  # judged units not yet published
    # Partitions ingest announced idle: "topic:partition" -> the next offset it would read.
    idle: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "frontier": self.frontier,
            "open": {k: p.__dict__ for k, p in self.open.items()},
            "judged": self.judged,
            "by_window": self.by_window,
            "pending": [p.__dict__ for p in self.pending],
            "last": self.last,
            "outbox": self.outbox,
            "idle": self.idle,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Book:
        return cls(
            frontier=dict(d.get("frontier", {})),
            open={k: Period(**p) for k, p in d.get("open", {}).items()},
            judged=dict(d.get("judged", {})),
            by_window={k: list(v) for k, v in d.get("by_window", {}).items()},
            pending=[Period(**p) for p in d.get("pending", [])],
            last=list(d.get("last", [])),
            outbox=list(d.get("outbox", [])),
            idle=dict(d.get("idle", {})),
        )


def period_key(start_ms: int, end_ms: int, bucketed: bool, window_id: str) -> str:
    return f"{start_ms}:{end_ms}" if bucketed else f"{start_ms}:{end_ms}:{window_id}"


def add(
    book: Book,
    window_id: str,
    start_ms: int,
    end_ms: int,
    count: int,
    partitions: list[str],
    bucketed: bool,
    now: float,
    final: bool = True,
) -> bool:
    """Add a validated window; False if its period was judged already (a late window).

    ``final``: the partition has finished this period (closed by watermark, idleness or
    shutdown); a window cut by count may be followed by more of the same period."""
    reach = end_ms if final else end_ms - 1
    for tp in partitions:
        book.frontier[tp] = max(book.frontier.get(tp, reach), reach)
        book.idle.pop(tp, None)  # it had data after all
    key = period_key(start_ms, end_ms, bucketed, window_id)
    if key in book.judged:
        return False
    p = book.open.get(key)
    if p is None:
        p = book.open[key] = Period(key, start_ms, end_ms, [], [], now, bucketed)
    if window_id not in p.members:
        p.members.append(window_id)
        p.counts.append(count)
    return True


def passed(book: Book, tp: str, end_ms: int, ends: dict[str, int] | None) -> bool:
    """Partition ``tp`` has nothing more for a period ending at ``end_ms``: it published a
    window ending there or later, or it announced it is idle and nothing was written to
    it since (``ends``: the partitions' log end offsets now)."""
    if book.frontier.get(tp, -1) >= end_ms:
        return True
    idle = book.idle.get(tp)
    return idle is not None and ends is not None and tp in ends and ends[tp] <= idle


def complete(
    book: Book,
    partitions: list[str],
    now: float,
    grace_s: float,
    ends: dict[str, int] | None = None,
) -> list[Period]:
    """Open periods every partition has moved past (or whose grace ran out), oldest first."""
    out = []
    for p in sorted(book.open.values(), key=lambda p: (p.start_ms, p.end_ms, p.key)):
        whole = not p.bucketed or all(passed(book, tp, p.end_ms, ends) for tp in partitions)
        if whole or now - p.arrived >= grace_s:
            out.append(p)
    return out


def judge(
    book: Book,
    stream: str,
    period: Period,
    partitions: list[str],
    min_examples: int,
    max_group: int = 8,
    ends: dict[str, int] | None = None,
) -> list[Unit]:
    """Close ``period``: the units to judge now (itself, and maybe a group with pending ones)."""
    del book.open[period.key]
    members = sorted(period.members)
    whole = not period.bucketed or all(passed(book, tp, period.end_ms, ends) for tp in partitions)
    unit = Unit(
        stable_id("period", stream, period.start_ms, period.end_ms, members),
        period.start_ms,
        period.end_ms,
        tuple(members),
        period.count,
        (period.key,),
        whole,
    )
    book.judged[period.key] = unit.unit_id
    units = [unit]
    if period.count >= min_examples:
        book.pending = []
    elif sum(p.count for p in book.pending) + period.count >= min_examples:
        group = [*book.pending, period]
        gm = tuple(sorted(m for p in group for m in p.members))
        units.append(
            Unit(
                stable_id("group", stream, gm),
                group[0].start_ms,
                period.end_ms,
                gm,
                sum(p.count for p in group),
                tuple(p.key for p in group),
                whole,
            )
        )
        book.pending = []
    else:
        book.pending = [*book.pending, period][-max_group:]
    for u in units:
        for m in u.members:
            book.by_window[m] = [*book.by_window.get(m, []), u.unit_id]
    if units[-1].count >= min_examples:
        book.last = list(units[-1].members)
    _trim(book)
    return units


def amend(
    book: Book,
    stream: str,
    window_id: str,
    start_ms: int,
    end_ms: int,
    bucketed: bool,
    judged_members: list[str],
    judged_count: int,
    count: int,
) -> Unit | None:
    """A window that arrived after its period was judged (its partition was silent past
    the grace time): the period judged again with it, as a unit that replaces the first
    verdict (the trigger counts an amended period once, and trains on all of it). None
    when the window is already part of the period's verdict, or its verdict is unknown."""
    key = period_key(start_ms, end_ms, bucketed, window_id)
    if key not in book.judged or window_id in judged_members:
        return None
    members = tuple(sorted({*judged_members, window_id}))
    unit = Unit(
        stable_id("period", stream, start_ms, end_ms, list(members)),
        start_ms,
        end_ms,
        members,
        judged_count + count,
        (key,),
        True,
    )
    book.judged[key] = unit.unit_id
    for m in members:
        book.by_window[m] = [*book.by_window.get(m, []), unit.unit_id]
    return unit


def _trim(book: Book, keep: int = 2048) -> None:
    """Bound the state: old judged keys only matter for windows arriving very late."""
    if len(book.judged) > keep:
        book.judged = dict(sorted(book.judged.items())[-keep:])
    if len(book.by_window) > keep:
        book.by_window = dict(list(book.by_window.items())[-keep:])
