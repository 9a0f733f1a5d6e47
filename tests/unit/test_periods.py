"""Period assembly (pure): completeness, idle partitions, grace, small periods grouped."""

from __future__ import annotations

import pytest

from services.validator import periods as per

pytestmark = pytest.mark.unit
H = 3_600_000
PARTS = ["t:0", "t:1", "t:2"]


def add(book: per.Book, wid: str, k: int, part: str, n: int = 500, now: float = 0.0) -> bool:
    return per.add(book, wid, k * H, (k + 1) * H, n, [part], True, now)


def test_a_period_waits_for_every_partition_then_is_judged_whole() -> None:
    b = per.Book()
    add(b, "a0", 0, "t:0")
    add(b, "a1", 1, "t:0")  # partition 0 moved past period 0
    assert per.complete(b, PARTS, 0, 120) == []
    add(b, "c1", 1, "t:2")  # partition 2 had nothing in period 0 and moved on
    # Partition 1 cut period 0 by count: more of it may follow.
    per.add(b, "b0", 0, H, 500, ["t:1"], True, 0.0, final=False)
    assert per.complete(b, PARTS, 0, 120) == []
    add(b, "b1", 1, "t:1")
    done = per.complete(b, PARTS, 0, 120)
    assert [p.members for p in done] == [["a0", "b0"], ["a1", "c1", "b1"]]
    units = per.judge(b, "s", done[0], PARTS, 200)
    assert len(units) == 1 and units[0].count == 1000 and units[0].complete
    assert units[0].members == ("a0", "b0") and b.last == ["a0", "b0"]
    assert not add(b, "late0", 0, "t:2")  # its period was judged: counted as late


def test_an_idle_partition_does_not_hold_periods_unless_it_got_data_since() -> None:
    b = per.Book()
    add(b, "a0", 0, "t:0")
    add(b, "a1", 1, "t:0")
    b.idle["t:1"] = 40
    b.idle["t:2"] = 7
    # Nothing written to either since they said so: period 0 is complete.
    assert [p.key for p in per.complete(b, PARTS, 0, 120, {"t:0": 99, "t:1": 40, "t:2": 7})]
    # Partition 2 got records after its announcement: wait for its window.
    assert per.complete(b, PARTS, 0, 120, {"t:0": 99, "t:1": 40, "t:2": 9}) == []
    # Without the broker's end offsets an announcement is not trusted.
    assert per.complete(b, PARTS, 0, 120, None) == []
    add(b, "c0", 0, "t:2")  # its window: the announcement is obsolete
    assert "t:2" not in b.idle


def test_grace_judges_a_period_with_a_silent_partition_as_incomplete() -> None:
    b = per.Book()
    add(b, "a0", 0, "t:0", now=100.0)
    assert per.complete(b, PARTS, 219.0, 120) == []
    (p,) = per.complete(b, PARTS, 220.0, 120)
    (u,) = per.judge(b, "s", p, PARTS, 200)
    assert not u.complete and u.members == ("a0",)


def test_small_periods_are_judged_together_and_a_large_one_alone() -> None:
    b = per.Book()
    units = []
    for k, n in enumerate([80, 70, 90, 1000, 50]):
        add(b, f"w{k}", k, "t:0", n=n)
    b.frontier["t:0"] = 10 * H
    for p in per.complete(b, ["t:0"], 0, 120):
        units.append(per.judge(b, "s", p, ["t:0"], 200))
    counts = [[u.count for u in us] for us in units]
    # 80, 70 wait; 90 completes a group of 240; 1000 alone; 50 pending.
    assert counts == [[80], [70], [90, 240], [1000], [50]]
    group = units[2][1]
    assert group.unit_id.startswith("group-") and group.members == ("w0", "w1", "w2")
    assert group.start_ms == 0 and group.end_ms == 3 * H
    assert [p.key for p in b.pending] == [f"{4 * H}:{5 * H}"]
    assert b.by_window["w2"] == [units[2][0].unit_id, group.unit_id]


def test_count_windows_are_their_own_period_and_state_round_trips() -> None:
    b = per.Book()
    per.add(b, "c0", 5, 900, 300, ["t:0"], False, 0.0)
    per.add(b, "c1", 5, 950, 300, ["t:1"], False, 0.0)
    assert len(per.complete(b, PARTS, 0, 120)) == 2
    b.idle["t:2"] = 3
    assert per.Book.from_json(b.to_json()) == b


def test_a_late_window_amends_its_judged_period_once() -> None:
    """Its partition was silent past the grace time: the period was judged without it.
    When it arrives the period is judged again with it, as one unit that replaces the
    first verdict; the same window again changes nothing."""
    b = per.Book()
    add(b, "a0", 0, "t:0", now=100.0)
    (p,) = per.complete(b, PARTS, 220.0, 120)
    (first,) = per.judge(b, "s", p, PARTS, 200)
    assert not add(b, "b0", 0, "t:1")  # late
    unit = per.amend(b, "s", "b0", 0, H, True, list(first.members), first.count, 500)
    assert unit is not None and unit.members == ("a0", "b0") and unit.count == 1000
    assert unit.complete and unit.unit_id != first.unit_id
    assert b.judged[f"0:{H}"] == unit.unit_id and b.by_window["b0"] == [unit.unit_id]
    assert per.amend(b, "s", "b0", 0, H, True, list(unit.members), unit.count, 500) is None
    # A window of a period never judged is not an amendment.
    assert per.amend(b, "s", "z9", 9 * H, 10 * H, True, [], 0, 5) is None
