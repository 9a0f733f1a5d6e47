from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.windowing import Add, Late, PartitionWindows, Skip, WindowPolicy

pytestmark = pytest.mark.unit
D = 1000


def feed(pw: PartitionWindows, times: list[int]) -> list[tuple[str, int]]:
    """Route times in order; return (window id, offset) per added record; close as due."""
    out = []
    for off, t in enumerate(times):
        r = pw.route(off, t)
        if isinstance(r, Add):
            out.append((r.window.window_id, off))
            if pw.policy.max_count and r.window.count >= pw.policy.max_count:
                pw.close(r.window)
            for w in pw.watermark_due():
                pw.close(w)
    return out


def test_count_windows_cut_every_n() -> None:
    pw = PartitionWindows("s", "t", 0, WindowPolicy(max_count=3))
    added = feed(pw, [5, 1, 9, 2, 2, 2, 7])
    ids = [w for w, _ in added]
    assert ids[0] == ids[1] == ids[2] != ids[3] == ids[4] == ids[5] != ids[6]
    assert len(pw.closed) == 2 and len(pw.open) == 1


def test_event_time_buckets_close_on_watermark() -> None:
    pw = PartitionWindows("s", "t", 0, WindowPolicy(max_count=None, duration_ms=D))
    feed(pw, [10, 500, 999, 1000])
    assert [c.bucket for c in pw.closed] == [0]
    assert list(pw.open) == [1000]


def test_late_record_after_close_and_lateness() -> None:
    pw = PartitionWindows(
        "s", "t", 0, WindowPolicy(max_count=None, duration_ms=D, allowed_lateness_ms=200)
    )
    assert isinstance(pw.route(0, 100), Add)
    assert isinstance(pw.route(1, 1100), Add)  # bucket 0 stays open: within lateness
    assert isinstance(pw.route(2, 900), Add)  # joins bucket 0
    assert pw.watermark_due() == []
    assert isinstance(pw.route(3, 1250), Add)
    [due] = pw.watermark_due()
    pw.close(due)
    r = pw.route(4, 950)
    assert isinstance(r, Late) and r.bucket == 0


def test_skip_records_of_windows_closed_before_restart() -> None:
    pw = PartitionWindows("s", "t", 0, WindowPolicy(max_count=2))
    feed(pw, [1, 2, 3])
    closed = list(pw.closed)
    again = PartitionWindows("s", "t", 0, WindowPolicy(max_count=2), closed=closed)
    assert isinstance(again.route(0, 1), Skip) and isinstance(again.route(1, 2), Skip)
    r = again.route(2, 3)
    assert isinstance(r, Add) and r.window.window_id == pw.open[pw.policy.bucket(3)].window_id


def test_policy_needs_a_bound() -> None:
    with pytest.raises(ValueError, match="count"):
        WindowPolicy(max_count=None, duration_ms=None)


times_strategy = st.lists(st.integers(min_value=0, max_value=20 * D), min_size=1, max_size=200)


@given(times=times_strategy, n=st.integers(1, 50), lateness=st.integers(0, 3 * D))
@settings(max_examples=150, deadline=None)
def test_every_record_lands_exactly_once(times: list[int], n: int, lateness: int) -> None:
    """Each record is in exactly one window or late; windows respect count and bounds."""
    policy = WindowPolicy(max_count=n, duration_ms=D, allowed_lateness_ms=lateness)
    pw = PartitionWindows("s", "t", 0, policy)
    members: dict[str, list[int]] = {}
    late = 0
    for off, t in enumerate(times):
        r = pw.route(off, t)
        if isinstance(r, Late):
            late += 1
            assert r.bucket + D + lateness <= r.watermark
            continue
        assert isinstance(r, Add)
        members.setdefault(r.window.window_id, []).append(t)
        assert r.window.bucket <= t < r.window.bucket + D
        if r.window.count >= n:
            pw.close(r.window)
        for w in pw.watermark_due():
            pw.close(w)
    assert sum(len(v) for v in members.values()) + late == len(times)
    assert all(len(v) <= n for v in members.values())


@given(times=times_strategy, n=st.integers(1, 50))
@settings(max_examples=100, deadline=None)
def test_window_ids_are_deterministic(times: list[int], n: int) -> None:
    policy = WindowPolicy(max_count=n, duration_ms=D)
    a = feed(PartitionWindows("s", "t", 0, policy), times)
    b = feed(PartitionWindows("s", "t", 0, policy), times)
    assert a == b


def _one_by_one(
    pw: PartitionWindows, offsets: list[int], times: list[int]
) -> tuple[list[str], list[tuple[str, str]]]:
    """The reference: ``route`` per record, then the closes the core makes after an add.
    Returns each record's fate (window id, "late" or "skip") and the closes in order."""
    fates: list[str] = []
    closes: list[tuple[str, str]] = []
    for off, t in zip(offsets, times, strict=True):
        r = pw.route(off, t)
        if isinstance(r, Late):
            fates.append("late")
            continue
        if isinstance(r, Skip):
            fates.append("skip")
            continue
        fates.append(r.window.window_id)
        if pw.policy.max_count and r.window.count >= pw.policy.max_count:
            closes.append((r.window.window_id, "count"))
            pw.close(r.window)
        for w in pw.watermark_due():
            closes.append((w.window_id, "watermark"))
            pw.close(w)
    return fates, closes


def _state(pw: PartitionWindows) -> tuple[object, ...]:
    return (pw.watermark, list(pw.closed), sorted((b, w.__dict__) for b, w in pw.open.items()))


@st.composite
def _streams(draw: st.DrawFn) -> tuple[WindowPolicy, list[int], list[int], list[int], int]:
    duration = draw(st.sampled_from([None, 7, 50, 1000]))
    count = draw(st.sampled_from([None, 1, 2, 5, 40])) if duration else draw(st.integers(1, 40))
    policy = WindowPolicy(
        max_count=count, duration_ms=duration, allowed_lateness_ms=draw(st.integers(0, 60))
    )
    # Mostly ordered, sometimes out of order, sometimes negative: every path of the router.
    steps = draw(st.lists(st.integers(-40, 60), min_size=1, max_size=300))
    t0 = draw(st.integers(-500, 500))
    times = [t0 + sum(steps[: i + 1]) for i in range(len(steps))]
    cuts = sorted(draw(st.lists(st.integers(0, len(times)), max_size=6)))
    first = draw(st.integers(0, 1000))
    restart = draw(st.integers(0, len(times)))
    return policy, times, cuts, list(range(first, first + len(times))), restart


@given(stream=_streams())
@settings(max_examples=400, deadline=None)
def test_route_many_equals_route_record_by_record(
    stream: tuple[WindowPolicy, list[int], list[int], list[int], int],
) -> None:
    """Batched routing is the record-by-record router, whatever the batch boundaries:
    same window per record, same lates and skips, same closes in the same order, same
    state after, including after a restart that replays records of closed windows."""
    policy, times, cuts, offsets, restart = stream
    ref = PartitionWindows("s", "t", 3, policy)
    fast = PartitionWindows("s", "t", 3, policy)
    # A first run up to ``restart``, then both routers resume from its closed ranges and
    # watermark, as a new owner does from a checkpoint, and replay everything.
    first = PartitionWindows("s", "t", 3, policy)
    _one_by_one(first, offsets[:restart], times[:restart])
    if not first.open:
        for r in (ref, fast):
            r.closed = list(first.closed)
            r.watermark = first.watermark
    want, want_closes = _one_by_one(ref, offsets, times)
    got: list[str] = []
    got_closes: list[tuple[str, str]] = []
    bounds = [0, *cuts, len(times)]
    for a, b in itertools.pairwise(bounds):
        routed = fast.route_many(offsets[a:b], times[a:b])
        fates = ["skip"] * (b - a)
        for w, start, stop in routed.adds:
            fates[start:stop] = [w.window_id] * (stop - start)
        for i, _late in routed.late:
            fates[i] = "late"
        assert fates.count("skip") == routed.skipped
        got += fates
        got_closes += [(w.window_id, why) for w, why in routed.closing]
    assert got == want
    assert got_closes == want_closes
    assert _state(fast) == _state(ref)


def test_route_many_late_exactly_at_the_boundary() -> None:
    """A record whose window ends exactly at the watermark (plus lateness) is late, in
    the middle of a batch as well as on its own."""
    for lateness in (0, 200):
        pw = PartitionWindows(
            "s", "t", 0, WindowPolicy(max_count=None, duration_ms=D, allowed_lateness_ms=lateness)
        )
        routed = pw.route_many([0, 1, 2, 3], [100, D + lateness, 999, D + lateness + 1])
        assert [(w.bucket, a, b) for w, a, b in routed.adds] == [(0, 0, 1), (D, 1, 2), (D, 3, 4)]
        assert [(i, late.bucket) for i, late in routed.late] == [(2, 0)]
        assert [(w.bucket, why) for w, why in routed.closing] == [(0, "watermark")]
