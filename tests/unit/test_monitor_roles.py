"""How the monitor turns a window's predictions into metrics, for each task type."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry

from services.monitor.core import Monitor, _scores
from services.monitor.data import ModelView, WindowData
from services.monitor.metrics import MonitorMetrics

pytestmark = pytest.mark.unit


def view(task: str, **kw: object) -> ModelView:
    base = dict(
        name="m", stream="s", task=task, label_key="y", raw_label_features=("raw",),
        slices=(("site",),), output_key="out", slice_min_examples=2,
    )  # fmt: skip
    return ModelView(**{**base, **kw})  # type: ignore[arg-type]


def monitor(m: ModelView) -> Monitor:
    return Monitor({m.name: m}, None, None, None, MonitorMetrics(CollectorRegistry()), None, None)  # type: ignore[arg-type]


WIN = {"validation_id": "v1", "version": "7", "start_ms": "0", "end_ms": "1000", "stream": "s"}


def scored(m: ModelView, scores: np.ndarray, labels: list[float | None]) -> object:
    table = pa.table({"raw": [1, 2, 3, 4], "site": ["a", "a", "b", "b"]})
    data = WindowData(table, ["t:0:0", "t:0:1", "t:0:2", "t:0:3"], np.ones(4, bool), [])
    lab = np.array([np.nan if x is None else x for x in labels])
    preds = Monitor._predictions(m, data, scores, lab)
    got = np.asarray(preds.column("label").to_numpy(), np.float64).copy()
    got[3] = 1.0  # a label joined later for the one without
    return monitor(m)._scored(m, "w", WIN, preds, _scores(preds), got, "stable")


def test_multiclass_probabilities_and_class_ids() -> None:
    m = view("multiclass")
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.1, 0.7, 0.2]])
    e = scored(m, probs, [0, 1, 0, None])
    assert e.labelled_count == 4 and e.label_coverage == 1.0 and e.version == 7  # type: ignore[attr-defined]
    assert e.metrics.realized["accuracy"] == pytest.approx(0.75)  # type: ignore[attr-defined]
    assert e.metrics.estimated == {}  # type: ignore[attr-defined]
    slices = {s.slice: s.metrics for s in e.metrics.slices}  # type: ignore[attr-defined]
    assert slices["site=a"]["accuracy"] == 1.0 and slices["site=b"]["count"] == 2.0


def test_regression_and_binary_outputs_of_one_or_two_columns() -> None:
    e = scored(view("regression"), np.array([[1.0], [2.0], [3.0], [5.0]]), [1.0, 2.0, 4.0, None])
    assert e.metrics.realized["mae"] == pytest.approx((0 + 0 + 1 + 4) / 4)  # type: ignore[attr-defined]
    two = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    b = scored(view("binary", coverage_steps=(0.5, 0.9)), two, [0, 1, None, None])
    # Two labels in the window and one delayed: 3 of 4.
    assert b.labelled_count == 3 and b.coverage_step == 0.5  # type: ignore[attr-defined]
    assert b.metrics.realized["auc"] == 1.0 and "auc" in b.metrics.estimated  # type: ignore[attr-defined]


def test_the_trigger_quality_policy_is_off_without_a_floor_or_margin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.trigger.config import policy_from
    from services.trigger.settings import TriggerSettings

    assert policy_from(TriggerSettings()).quality_metric == ""
    monkeypatch.setenv("CTRAIN_TRIGGER_QUALITY_MARGIN", "0.03")
    p = policy_from(TriggerSettings())
    assert p.quality_metric == "auc" and p.quality_margin == 0.03 and p.quality_floor is None
    monkeypatch.setenv("CTRAIN_TRIGGER_TASK", "regression")
    monkeypatch.setenv("CTRAIN_TRIGGER_QUALITY_FLOOR", "2.5")
    p = policy_from(TriggerSettings())
    assert p.quality_metric == "rmse" and p.quality_floor == 2.5
    monkeypatch.setenv("CTRAIN_TRIGGER_QUALITY_METRIC", "mae")
    assert policy_from(TriggerSettings()).quality_metric == "mae"
