"""The collector's settings while ingest runs, and their restoration."""

from __future__ import annotations

import gc

import pytest

from services.ingest.gc_tuning import gc_tuned
from services.ingest.settings import IngestSettings

pytestmark = pytest.mark.unit


def test_tuned_while_running_and_restored_after() -> None:
    before = gc.get_threshold()
    with gc_tuned(123_456):
        assert gc.get_threshold() == (123_456, *before[1:])
        assert gc.get_freeze_count() > 0  # start-up objects are out of the collector's way
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_restored_when_the_body_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), gc_tuned(50_000):
        raise RuntimeError("the poll loop died")
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_zero_changes_nothing() -> None:
    before = gc.get_threshold()
    with gc_tuned(0):
        assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_the_setting_reaches_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert IngestSettings().gc_young_threshold == 100_000
    monkeypatch.setenv("CTRAIN_INGEST_GC_YOUNG_THRESHOLD", "0")
    assert IngestSettings().gc_young_threshold == 0
