"""Every test carries its folder's kind marker (tests/conftest.py refuses to run else)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import ROOT, unmarked

pytestmark = pytest.mark.unit


@dataclass
class FakeItem:
    fspath: str
    nodeid: str
    marks: list[str] = field(default_factory=list)

    def iter_markers(self) -> Any:
        return (pytest.Mark(m, (), {}) for m in self.marks)


def test_a_test_without_its_folders_marker_is_named() -> None:
    items: list[Any] = [
        FakeItem(str(ROOT / "tests/unit/test_a.py"), "unit-ok", ["unit"]),
        FakeItem(str(ROOT / "tests/unit/test_b.py"), "unit-missing", ["slow"]),
        FakeItem(str(ROOT / "tests/integration/test_c.py"), "wrong-kind", ["unit"]),
        FakeItem(str(ROOT / "tests/deploy/test_d.py"), "deploy-ok", ["e2e"]),
        FakeItem(str(ROOT / "tests/deploy/test_e.py"), "deploy-none", []),
    ]
    assert unmarked(items) == ["unit-missing", "wrong-kind", "deploy-none"]


def test_this_suite_is_fully_marked(request: pytest.FixtureRequest) -> None:
    assert unmarked(request.session.items) == []
