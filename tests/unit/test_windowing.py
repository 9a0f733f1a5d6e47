from __future__ import annotations

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
