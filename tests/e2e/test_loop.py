"""The closed loop, end to end: the four services as processes, a real broker, real
Redis, the embedded model server and kfp.local.

1. History replayed, first model trained and approved; 2014 replayed; drift starts
   a run by itself; its blessed candidate is approved through the API; `stable`
   moves; the new version answers predictions.
2. A candidate that fails TFMA's thresholds is rejected by the gate with its reasons
   and never serves.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from ctrain import cli, client
from ctrain.commands import common
from ctrain.demo import Demo, DemoOptions
from shared import topics
from shared.events import ModelCandidate
from shared.kafka import read_to_end
from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _no_duplicates(d: Demo) -> None:
    assert d.tail is not None
    s = d.tail.state
    assert s.conflicts == [], s.conflicts
    assert s.unreadable == [], s.unreadable
    # One run per decision: every run published is one decision the trigger took.
    tc = client.trigger(d.state)
    try:
        taken = [x["run_id"] for x in tc.decisions(1000) if x["taken"] == "true"]
    finally:
        tc.close()
    assert sorted(taken) == sorted(s.runs), (taken, list(s.runs))


@pytest.mark.timeout(1500)
def test_drift_retrains_and_the_approved_model_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CTRAIN_DEV_STATE_DIR", str(tmp_path / "dev"))
    seen: dict[str, Any] = {}
    # The CLI's output, wide enough that ids are never folded.
    screen = io.StringIO()
    monkeypatch.setattr(common, "console", Console(file=screen, width=300))

    def operator(cand: ModelCandidate, state: dict[str, Any]) -> bool:
        """An approver rejects the first retrained candidate from the CLI; the shift
        persists, so the trigger retries by itself; the approver reads the next one
        through the API and approves it from the CLI."""
        pc = client.promoter("viewer", state)
        if not seen.get("rejected"):
            seen["rejected"] = cand
            try:
                d.await_pending(pc, cand.candidate_id)  # the promoter has it
            finally:
                pc.close()
            assert cli.main(["candidates", "reject", cand.candidate_id, "--reason", "e2e"]) == 0
            return False
        try:
            seen["view"] = d.await_pending(pc, cand.candidate_id)
        finally:
            pc.close()
        assert cli.main(["candidates", "show", cand.candidate_id]) == 0
        reason = "drift confirmed; metrics hold"
        assert cli.main(["candidates", "approve", cand.candidate_id, "--reason", reason]) == 0
        return True

    # A short cooldown: the retry after the rejection starts within seconds.
    monkeypatch.setenv("CTRAIN_TRIGGER_COOLDOWN_S", "5")
    d = Demo(DemoOptions(speedup=0, keep=False, operator=operator), view=lambda m: None)
    try:
        progress = d.run()
        assert d.tail is not None
        s = d.tail.state
        # Every replayed trip is in exactly one window or the DLQ (two real trips lack
        # pickup_community_area).
        total = progress.replay_total + d.load()[0].num_rows
        assert s.examples_accounted() == total
        assert {x.reason for x in s.dlq} == {"missing_feature"}
        # The second run was started by the data, not by a person.
        drift_run = progress.drift_run
        assert drift_run is not None and drift_run != progress.bootstrap_run
        reason = s.runs[drift_run][0].reason
        assert reason in ("drift", "skew"), reason
        cand = next(c for c in s.candidates.values() if c.run_id == drift_run)
        assert cand.blessed, cand.failed_checks
        # The first retrained candidate was rejected; the shift persisted and the trigger
        # started the next run by itself, judged on at least 1,000 held-out trips.
        rejected = seen["rejected"]
        assert progress.rejected == [rejected.candidate_id] and rejected.run_id != drift_run
        assert s.runs[rejected.run_id][0].reason in ("drift", "skew")
        for c in (rejected, cand):
            assert c.eval_examples is not None and c.eval_examples >= 1000, c
            assert c.train_examples is not None and c.train_examples >= 3000, c
            assert c.eval_windows and set(c.eval_windows).isdisjoint(c.windows)
        tc = client.trigger(d.state)
        try:
            log = tc.decisions(1000)
            trig = tc.state()
        finally:
            tc.close()
        assert any(x["reason"].startswith("re-armed: candidate") for x in log)
        assert any(x["reason"].startswith("new episode:") for x in log)
        # While drift or skew held, no decision said "no policy fired".
        held = [
            x
            for x in log
            if x["inputs"] != "{}"
            and max(
                json.loads(x["inputs"]).get(k, 0) for k in ("consecutive_drift", "consecutive_skew")
            )
            >= 2
        ]
        assert len(held) >= 2 and not any(x["reason"].startswith("no policy") for x in held)
        assert trig["model"] == "taxi" and trig["budget_left"] >= 0
        assert cand.baseline_metrics is not None  # TFMA compared it with the serving model
        assert cand.trigger_evidence, "the approver sees which distances fired"
        view = seen["view"]
        assert view["state"] == "pending_approval"
        assert view["metrics"]["overall"], view
        shown = screen.getvalue()
        assert cand.candidate_id in shown and "TFMA vs the serving model" in shown
        assert f"evaluated on {cand.eval_examples} examples" in shown
        # `stable` moved from the first model to the retrained one, which now answers.
        assert progress.before is not None and progress.after is not None
        promo = next(p for p in s.promotions if p.candidate_id == cand.candidate_id)
        assert promo.decision == "approved" and promo.actor == "operator"
        assert progress.before[0] == 1
        assert progress.after[0] == promo.version == 2
        assert len(progress.after[1]) == len(progress.before[1]) == 5
        assert all(0.0 <= p <= 1.0 for p in progress.after[1])
        pc = client.promoter("viewer", d.state)
        try:
            model = pc.model("taxi")
        finally:
            pc.close()
        assert model is not None and model["labels"]["stable"] == 2
        assert model["serving_reports"]["2"] == "AVAILABLE"
        _no_duplicates(d)
        # The monitor scored every period judged while v1 served (2014: data the model
        # never saw), on the trips' own labels, through serving; nothing dead-lettered.
        by_v1 = {e.window_id: e for e in s.scored if e.role == "stable" and e.version == 1}
        assert len(by_v1) >= 3, [(e.window_id, e.version, e.role) for e in s.scored]
        for e in by_v1.values():
            assert e.label_coverage == 1.0 and 0.7 < e.metrics.realized["auc"] <= 1.0, e
            assert abs(e.metrics.estimated["auc"] - e.metrics.realized["auc"]) < 0.1, e
        letters = asyncio.run(read_to_end(d.state["kafka"], topics.EVENTS_DLQ))
        assert letters == [], [r.value[:300] for r in letters]
        # The operator's one view, then a rollback from the CLI: v1 answers again.
        assert cli.main(["status"]) == 0
        out = screen.getvalue()
        assert "skew" in out and "stable=v2" in out and drift_run in out
        assert "trigger of taxi:" in out and "budget left" in out
        assert "live quality of taxi (monitor)" in out
        assert cli.main(["rollback", "--reason", "e2e: back to v1"]) == 0
        assert d.predict(d.load()[1].slice(0, 2))[0] == 1
    finally:
        d.stop()


@pytest.mark.timeout(900)
def test_a_candidate_failing_tfma_is_rejected_with_its_reasons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CTRAIN_DEV_STATE_DIR", str(tmp_path / "dev"))
    # The real taxi model with an AUC floor no model reaches on this data.
    src = (ROOT / "examples" / "taxi" / "model.py").read_text()
    assert "AUC_LOWER_BOUND = 0.6" in src
    module = tmp_path / "strict_model.py"
    module.write_text(src.replace("AUC_LOWER_BOUND = 0.6", "AUC_LOWER_BOUND = 0.999"))
    d = Demo(
        DemoOptions(speedup=0, keep=False, auto_approve=True, model_module=str(module)),
        view=lambda m: None,
    )
    try:
        first, _ = d.load()
        d.start()
        cand = d.history(first)
        assert not cand.blessed
        assert any("auc" in c.lower() for c in cand.failed_checks), cand.failed_checks
        assert d.tail is not None
        promo = d.tail.wait_for(
            lambda s: next((p for p in s.promotions if p.candidate_id == cand.candidate_id), None),
            60,
            "the gate's decision",
        )
        assert promo.decision == "rejected" and promo.actor == "gate"
        assert "auc" in promo.reason.lower()
        pc = client.promoter("viewer", d.state)
        try:
            rec = pc.candidate(cand.candidate_id)
            assert rec["state"] == "rejected"
            assert rec["failed_checks"] == cand.failed_checks
            # Even under the auto policy, nothing was promoted.
            assert pc.model("taxi") is None
        finally:
            pc.close()
        # From the shell: listed as rejected; an approver cannot override the gate
        # (only an admin can), and the CLI says why.
        screen = io.StringIO()
        monkeypatch.setattr(common, "console", Console(file=screen, width=300))
        assert cli.main(["candidates", "list", "--state", "rejected"]) == 0
        assert cand.candidate_id in screen.getvalue()
        assert cli.main(["candidates", "approve", cand.candidate_id]) == 2
        assert "403" in screen.getvalue() and "admin" in screen.getvalue()
        _no_duplicates(d)
    finally:
        d.stop()
