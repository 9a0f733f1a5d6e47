"""Tumbling-window assignment for one Kafka partition: pure, deterministic state.

A window belongs to one partition, so its content is fixed by the partition's
offset order and a restart that replays from the committed offset rebuilds the
same windows. Decisions that depend on the wall clock (idle close, shutdown)
are recorded in the checkpoint (``closed``) before they take effect, and the
replay honours them: a record inside a closed window's offset range is skipped.

Event-time windows are ``[k*D, (k+1)*D)``; a window closes when the partition's
watermark (largest event time seen) reaches ``end + allowed_lateness``. With no
duration, one unbounded bucket is cut by count alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from shared.ids import stable_id

NO_BUCKET = -(2**62)
CloseReason = Literal["count", "watermark", "end_of_input", "idle", "shutdown"]


@dataclass(frozen=True)
class WindowPolicy:
    max_count: int | None = 10_000
    duration_ms: int | None = None
    allowed_lateness_ms: int = 0

    def __post_init__(self) -> None:
        if not self.max_count and not self.duration_ms:
            raise ValueError("a window needs a maximum count, a duration, or both")
        if self.max_count is not None and self.max_count < 1:
            raise ValueError("max_count must be >= 1")
        if self.duration_ms is not None and self.duration_ms < 1:
            raise ValueError("duration_ms must be >= 1")

    def bucket(self, t_ms: int) -> int:
        if not self.duration_ms:
            return NO_BUCKET
        return t_ms - t_ms % self.duration_ms


@dataclass
class OpenWindow:
    window_id: str
    bucket: int
    first: int
    last: int
    # Watermark just before ``first`` was read: restored with the commit offset.
    watermark_before: int | None
    count: int = 0
    min_t: int | None = None
    max_t: int | None = None


@dataclass(frozen=True)
class ClosedRange:
    window_id: str
    bucket: int
    first: int
    last: int


@dataclass(frozen=True)
class Skip:
    """Already part of a window closed before a restart."""


@dataclass(frozen=True)
class Late:
    bucket: int
    watermark: int


@dataclass(frozen=True)
class Add:
    window: OpenWindow


@dataclass
class Routed:
    """Where a batch of accepted records went, in input positions (see ``route_many``)."""

    # (window, start, stop): positions start..stop-1 were added to the window, in order.
    adds: list[tuple[OpenWindow, int, int]] = field(default_factory=list)
    late: list[tuple[int, Late]] = field(default_factory=list)
    skipped: int = 0
    # Windows closed while routing, in the order they closed.
    closing: list[tuple[OpenWindow, CloseReason]] = field(default_factory=list)


@dataclass
class PartitionWindows:
    stream: str
    topic: str
    partition: int
    policy: WindowPolicy
    watermark: int | None = None
    closed: list[ClosedRange] = field(default_factory=list)
    open: dict[int, OpenWindow] = field(default_factory=dict)

    def route(self, offset: int, t_ms: int) -> Skip | Late | Add:
        """Where the accepted record at ``offset`` with event time ``t_ms`` goes."""
        b = self.policy.bucket(t_ms)
        wm_before = self.watermark
        if self.policy.duration_ms and wm_before is not None:
            if b + self.policy.duration_ms + self.policy.allowed_lateness_ms <= wm_before:
                return Late(b, wm_before)
        # The watermark moves for skipped records too: the first run saw them.
        if wm_before is None or t_ms > wm_before:
            self.watermark = t_ms
        for c in self.closed:
            if c.bucket == b and c.first <= offset <= c.last:
                return Skip()
        w = self.open.get(b)
        if w is None:
            wid = stable_id("win", self.stream, self.topic, self.partition, b, offset)
            w = OpenWindow(wid, b, offset, offset, wm_before)
            self.open[b] = w
        w.last = offset
        w.count += 1
        if w.min_t is None or t_ms < w.min_t:
            w.min_t = t_ms
        if w.max_t is None or t_ms > w.max_t:
            w.max_t = t_ms
        return Add(w)

    def route_many(
        self, offsets: Sequence[int] | np.ndarray, times: Sequence[int] | np.ndarray
    ) -> Routed:
        """Route a batch of accepted records, closing windows as they fill or fall behind
        the watermark: exactly what ``route`` record by record followed, after each
        ``Add``, by closing a full window and then the watermark's due ones would do.

        Records come in runs that share a bucket and change nothing but one window's
        count and the watermark; each run is routed at once. A record that may be late
        or inside a range closed before a restart is routed by ``route`` on its own.
        """
        out = Routed()
        n = len(times)
        if not n:
            return out
        p = self.policy
        dur = p.duration_ms
        t = np.asarray(times, dtype=np.int64)
        off = np.asarray(offsets, dtype=np.int64)
        # The watermark after each record: late records never raise it (they are behind it).
        wm_after = np.maximum.accumulate(t)
        if self.watermark is not None:
            np.maximum(wm_after, self.watermark, out=wm_after)
        odd = np.zeros(n, dtype=bool)
        if dur:
            buckets = t - t % dur
            wm_before = np.empty(n, dtype=np.int64)
            wm_before[1:] = wm_after[:-1]
            wm_before[0] = self.watermark if self.watermark is not None else np.iinfo(np.int64).min
            odd |= buckets + dur + p.allowed_lateness_ms <= wm_before
            # Where the bucket changes: a run never spans two.
            edges = np.flatnonzero(buckets[1:] != buckets[:-1]) + 1
        for c in self.closed:
            odd |= (off >= c.first) & (off <= c.last)
        odd_at = np.flatnonzero(odd)
        i = 0
        while i < n:
            if odd[i]:
                self._route_one(out, i, int(off[i]), int(t[i]))
                i += 1
                continue
            stop = n
            k = int(np.searchsorted(odd_at, i, side="right"))
            if k < len(odd_at):
                stop = int(odd_at[k])
            b = NO_BUCKET
            if dur:
                b = int(buckets[i])
                k = int(np.searchsorted(edges, i, side="right"))
                if k < len(edges):
                    stop = min(stop, int(edges[k]))
                others = [ob for ob in self.open if ob != b]
                if others:
                    # The first record that makes another open window due ends the run
                    # (it closes right after that record).
                    due_at = min(others) + dur + p.allowed_lateness_ms
                    j = int(np.searchsorted(wm_after, due_at, side="left"))
                    stop = min(stop, max(j, i) + 1)
            w = self.open.get(b)
            if p.max_count:
                stop = min(stop, i + p.max_count - (w.count if w is not None else 0))
            first = int(off[i])
            if w is None:
                wid = stable_id("win", self.stream, self.topic, self.partition, b, first)
                w = OpenWindow(wid, b, first, first, self.watermark)
                self.open[b] = w
            run = t[i:stop]
            lo, hi = int(run.min()), int(run.max())
            w.last = int(off[stop - 1])
            w.count += stop - i
            w.min_t = lo if w.min_t is None else min(w.min_t, lo)
            w.max_t = hi if w.max_t is None else max(w.max_t, hi)
            self.watermark = int(wm_after[stop - 1])
            out.adds.append((w, i, stop))
            self._close_due(w, out)
            i = stop
        return out

    def _route_one(self, out: Routed, i: int, offset: int, t_ms: int) -> None:
        r = self.route(offset, t_ms)
        if type(r) is Add:
            out.adds.append((r.window, i, i + 1))
            self._close_due(r.window, out)
        elif type(r) is Late:
            out.late.append((i, r))
        else:
            out.skipped += 1

    def _close_due(self, added_to: OpenWindow, out: Routed) -> None:
        """After an add: the window if it is full, then those the watermark has passed."""
        if self.policy.max_count and added_to.count >= self.policy.max_count:
            out.closing.append((added_to, "count"))
            self.close(added_to)
        if self.policy.duration_ms:
            for due in self.watermark_due():
                out.closing.append((due, "watermark"))
                self.close(due)

    def advance(self, watermark_ms: int | None) -> list[tuple[OpenWindow, CloseReason]]:
        """A producer's watermark record: the windows it closes, in order. A time moves the
        watermark (later records behind it are late); None, the end of the producer's
        input, closes every open window now, as the idle timeout would later, and moves
        nothing."""
        if watermark_ms is None:
            out: list[tuple[OpenWindow, CloseReason]] = [
                (w, "end_of_input") for _, w in sorted(self.open.items())
            ]
        else:
            if self.watermark is None or watermark_ms > self.watermark:
                self.watermark = watermark_ms
            out = [(w, "watermark") for w in self.watermark_due()]
        for w, _ in out:
            self.close(w)
        return out

    def due(self, window: OpenWindow) -> CloseReason | None:
        """Whether ``window`` closes now, and why."""
        p = self.policy
        if p.max_count and window.count >= p.max_count:
            return "count"
        if p.duration_ms and self.watermark is not None:
            if window.bucket + p.duration_ms + p.allowed_lateness_ms <= self.watermark:
                return "watermark"
        return None

    def watermark_due(self) -> list[OpenWindow]:
        """Open windows the watermark has passed (checked after each record)."""
        if not self.policy.duration_ms or self.watermark is None:
            return []
        limit = self.watermark - self.policy.duration_ms - self.policy.allowed_lateness_ms
        return [w for b, w in sorted(self.open.items()) if b <= limit]

    def close(self, window: OpenWindow) -> ClosedRange:
        del self.open[window.bucket]
        c = ClosedRange(window.window_id, window.bucket, window.first, window.last)
        self.closed.append(c)
        return c

    def commit_point(self, next_offset: int) -> tuple[int, int | None]:
        """(offset to commit, watermark as of that offset).

        Everything below the offset is in a closed window or the DLQ; the oldest
        open window restarts from its first record with the watermark it saw.
        """
        if self.open:
            oldest = min(self.open.values(), key=lambda w: w.first)
            return oldest.first, oldest.watermark_before
        return next_offset, self.watermark

    def prune(self, commit: int) -> None:
        """Forget closed ranges a replay from ``commit`` can no longer meet."""
        self.closed = [c for c in self.closed if c.last >= commit]

    def bounds(self, window: OpenWindow) -> tuple[int, int]:
        """Event-time bounds [start, end) in ms of a window."""
        if self.policy.duration_ms:
            return window.bucket, window.bucket + self.policy.duration_ms
        assert window.min_t is not None and window.max_t is not None
        return window.min_t, window.max_t + 1
