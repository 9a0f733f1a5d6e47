"""The promoter's judgement of a watched promotion and a challenger's comparison."""

from __future__ import annotations

import pytest

from services.promoter.quality import RollbackPolicy, comparison, judge

pytestmark = pytest.mark.unit
P = RollbackPolicy(enabled=True, windows=2, margin=0.02, metric="auc")


def watch(*pairs: tuple[float | None, float | None]) -> dict[str, object]:
    windows: dict[str, dict[str, object]] = {}
    for i, (s, p) in enumerate(pairs):
        w: dict[str, object] = {"start": f"2014-0{i + 1}-01"}
        if s is not None:
            w["stable"] = s
        if p is not None:
            w["previous"] = p
        windows[f"per-{i}"] = w
    return {"stable": 3, "previous": 2, "windows": windows}


def test_rollback_only_when_worse_by_the_margin_on_all_watched_windows() -> None:
    assert judge(watch((0.80, 0.90)), P) is None  # one window of two
    assert judge(watch((0.80, None), (0.80, 0.90)), P) is None  # a window without both
    verdict, why = judge(watch((0.80, 0.90), (0.85, 0.90)), P)  # type: ignore[misc]
    assert verdict == "rollback"
    assert why.startswith("version 3 worse than version 2 by more than 0.02 auc on all 2")
    assert "per-0: auc 0.8000 vs 0.9000 (-0.1000)" in why
    verdict, why = judge(watch((0.80, 0.90), (0.89, 0.90)), P)  # type: ignore[misc]
    assert verdict == "keep" and "on 1 of 2 windows" in why
    # The oldest K windows decide; later ones are not needed.
    verdict, _ = judge(watch((0.95, 0.90), (0.80, 0.90), (0.70, 0.90)), P)  # type: ignore[misc]
    assert verdict == "keep"


def test_lower_is_better_metrics_roll_back_when_higher() -> None:
    p = RollbackPolicy(enabled=True, windows=1, margin=0.5, metric="rmse")
    assert judge(watch((3.0, 2.0)), p)[0] == "rollback"  # type: ignore[index]
    assert judge(watch((2.4, 2.0)), p)[0] == "keep"  # type: ignore[index]


def test_comparison_weights_windows_by_labels() -> None:
    entries = [
        {
            "window_id": "b",
            "start": "2",
            "labelled": 300,
            "challenger": {"auc": 0.95},
            "stable": {"auc": 0.90},
        },
        {
            "window_id": "a",
            "start": "1",
            "labelled": 100,
            "challenger": {"auc": 0.91},
            "stable": {"auc": 0.94},
        },
        {"window_id": "c", "start": "3", "labelled": 0, "challenger": {}, "stable": {}},
    ]
    c = comparison(entries, "auc")
    assert c["challenger"] == pytest.approx(0.94) and c["stable"] == pytest.approx(0.91)
    assert c["summary"] == "on 2 windows since its evaluation: AUC 0.940 vs 0.910 (stable)"
    assert [w["window_id"] for w in c["windows"]] == ["a", "b", "c"]
    assert comparison([], "auc")["summary"] == "not scored on live data yet"
    assert "no labelled window" in comparison(entries[2:], "auc")["summary"]
