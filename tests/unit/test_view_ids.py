"""The demo's live view never cuts an id an operator has to type."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from ctrain.loop import LoopState
from ctrain.view import candidate_panel
from shared.events import CandidateMetrics, ModelCandidate

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("width", [80, 120])
def test_candidate_ids_are_whole_at_any_width(width: int) -> None:
    loop = LoopState()
    c = ModelCandidate(
        candidate_id="cand-2bd5c462662f4a1b2c3d",
        model="taxi",
        run_id="run-1",
        model_uri="m",
        eval_uri="e",
        blessed=False,
        failed_checks=["auc: change -0.0213 below -0.01 on payment_type=Cash"],
        metrics=CandidateMetrics(overall={"auc": 0.94}),
        windows=["w"],
        eval_window="w",
    )
    loop.candidates[c.candidate_id] = c
    out = io.StringIO()
    Console(file=out, width=width).print(candidate_panel(loop))
    assert "cand-2bd5c462662f4a1b2c3d" in out.getvalue()
    assert all(len(line) <= width for line in out.getvalue().splitlines())
