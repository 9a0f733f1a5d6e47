"""What every fault test of the whole loop checks once its faults are over (docs/faults.md)."""

from __future__ import annotations

import itertools
from typing import Any

from ctrain import client
from ctrain.demo import Demo


def nothing_lost_or_twice(d: Demo, produced: int, what: str) -> tuple[list[str], dict[str, Any]]:
    """Wait until ``produced`` examples are accounted, then: no event id published with
    two contents, no window unreadable, no two windows share an offset, every window
    validated, no decision started two runs, no candidate promoted twice, every serving
    version names one candidate, and ``stable`` points at a version serving reports
    AVAILABLE. Returns (the promoted candidates, the model's view)."""
    assert d.tail is not None
    s = d.tail.state
    d.settle(produced, what)  # what a restart redelivered arrives before counting
    assert s.examples_accounted() == produced
    assert s.conflicts == [], s.conflicts
    assert s.unreadable == [], s.unreadable
    by_part: dict[int, list[tuple[int, int]]] = {}
    for w in s.windows.values():
        for o in w.offsets:
            by_part.setdefault(o.partition, []).append((o.first, o.last))
    for ranges in by_part.values():
        ranges.sort()
        for (_, last), (first_next, _) in itertools.pairwise(ranges):
            assert first_next > last, f"windows overlap: {ranges}"
    assert set(s.validations) == set(s.windows)
    sets = [tuple(evs[0].windows) for evs in s.runs.values()]
    assert len(sets) == len(set(sets)), sets
    promoted = [p.candidate_id for p in s.promotions if p.decision in ("auto", "approved")]
    assert len(promoted) == len(set(promoted)), promoted
    pc = client.promoter("viewer", d.live_state())
    try:
        model = pc.model(d.model)
    finally:
        pc.close()
    assert model is not None
    by_version = model["candidates"]
    assert len(set(by_version.values())) == len(by_version), by_version
    stable = model["labels"]["stable"]
    assert model["serving_reports"][str(stable)] == "AVAILABLE"  # no label ran ahead
    return promoted, model
