"""The pure pieces behind ``ctrain demo``, ``status`` and the loop tests."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from ctrain import client
from ctrain.demo import TIME_COLUMN
from ctrain.demo_support import split_at_window
from ctrain.loop import LoopState
from services.trigger.backends import components_of
from services.validator.app import window_summary
from shared.events import (
    Distance,
    FeatureDistances,
    OffsetRange,
    PromotionEvent,
    TrainingRun,
    WindowClosed,
    WindowValidated,
)

pytestmark = pytest.mark.unit

LOG = """\
\x1b[1m08:42:12.581 - INFO - Executing task \x1b[96m'gather'\x1b[0m
08:42:13.313 - INFO - Task \x1b[96m'gather'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
some component output
08:42:13.317 - INFO - Executing task 'validate'
08:42:18.158 - INFO - Task 'validate' finished with status FAILURE
23:59:59.000 - INFO - Executing task 'train'
00:00:09.500 - INFO - Task 'train' finished with status SUCCESS
08:50:00.000 - INFO - Executing task 'evaluate'
"""


def test_components_are_read_from_the_kfp_local_log() -> None:
    comps = {c["name"]: c for c in components_of(LOG)}
    assert list(comps) == ["gather", "validate", "train", "evaluate"]
    assert comps["gather"]["state"] == "succeeded"
    assert comps["gather"]["seconds"] == pytest.approx(0.732)
    assert comps["validate"]["state"] == "failed"
    assert comps["train"]["seconds"] == pytest.approx(10.5)  # across midnight
    assert comps["evaluate"]["state"] == "running" and "seconds" not in comps["evaluate"]
    assert components_of("") == []


def _window(wid: str, sha: str = "a", count: int = 10) -> WindowClosed:
    t = datetime(2014, 1, 1, tzinfo=UTC)
    return WindowClosed(
        window_id=wid,
        stream="taxi",
        start=t,
        end=t,
        example_count=count,
        offsets=[OffsetRange(topic="x", partition=0, first=0, last=count - 1)],
        data_uri="u",
        sha256=sha,
    )


def test_loop_state_accepts_redelivery_and_flags_a_second_content() -> None:
    s = LoopState()
    s.add(_window("w1"), 1.0)
    s.add(_window("w1"), 2.0)  # the same window again after a restart: fine
    assert s.conflicts == [] and s.published[("window", "w1")] == 2
    s.add(_window("w1", sha="b"), 3.0)
    assert s.conflicts == ["window w1 published with different contents"]
    assert s.examples_accounted() == 10


def test_loop_state_tracks_runs_and_the_stable_label() -> None:
    s = LoopState()
    for state in ("submitted", "running", "succeeded"):
        s.add(
            TrainingRun(
                run_id="r", model="taxi", reason="skew", windows=["a"], state=state, backend="local"
            ),
            0.0,
        )
    assert s.run_state("r") == "succeeded"
    assert s.stable_version("taxi") is None
    s.add(
        PromotionEvent(
            id="p",
            candidate_id="c",
            model="taxi",
            decision="auto",
            actor="gate",
            reason="",
            version=2,
            labels={"stable": 2},
        ),
        0.0,
    )
    assert s.stable_version("taxi") == 2


def test_the_demo_splits_on_a_window_boundary() -> None:
    day = 86400
    ts = [calendar.timegm((2013, 12, 1, 0, 0, 0)), calendar.timegm((2014, 3, 1, 0, 0, 0))]
    table = pa.table({"trip_start_timestamp": ts})
    before, after = split_at_window(table, 91 * day, TIME_COLUMN)
    boundary = calendar.timegm((2014, 2, 6, 0, 0, 0))  # first multiple of 91 days in 2014
    assert boundary % (91 * day) == 0
    assert before.column(0).to_pylist() == ts[:1] and after.column(0).to_pylist() == ts[1:]


def test_tokens_are_the_least_powerful_that_suffices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "tokens.json"
    f.write_bytes(
        orjson.dumps(
            {
                "adm": {"identity": "root", "role": "admin"},
                "app": {"identity": "op", "role": "approver"},
                "view": {"identity": "v", "role": "viewer"},
            }
        )
    )
    state = {"tokens_file": str(f)}
    assert client.token_for("viewer", state) == "view"
    assert client.token_for("approver", state) == "app"
    assert client.token_for("admin", state) == "adm"
    monkeypatch.setenv("CTRAIN_TOKEN", "mine")
    assert client.token_for("admin", state) == "mine"


def test_window_summary_lists_crossed_distances_first() -> None:
    def dist(v: float, thr: float) -> Distance:
        return Distance(measure="linf", value=v, threshold=thr, crossed=v > thr, baseline="b")

    v = WindowValidated(
        id="v",
        window_id="w",
        stream="taxi",
        stats_uri="s",
        verdict="skew",
        example_count=100,
        features=[
            FeatureDistances(name="company", drift=dist(0.09, 0.1)),
            FeatureDistances(name="payment_type", skew=dist(0.07, 0.06)),
        ],
    )
    out = window_summary(v)
    assert [d["feature"] for d in out["distances"]] == ["payment_type", "company"]
    assert out["distances"][0]["crossed"] is True and out["verdict"] == "skew"


def test_paced_replay_due_times() -> None:
    from ctrain.replay import _due

    assert _due(100.0, 3, 10.0, None, None) == pytest.approx(100.3)
    # Row j is due when the data's clock since the first row, sped up, has passed.
    assert _due(100.0, 2, None, 10.0, [0.0, 10.0, 20.0]) == pytest.approx(101.0)
    assert _due(100.0, 3, None, None, None) == 0.0  # unpaced: always due


def test_approve_wait_ends_when_the_candidate_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from ctrain.commands import common, decide

    class Promoter:
        def __init__(self, states: list[str]) -> None:
            self.states = states

        def candidate(self, cid: str) -> dict[str, object]:
            return {
                "state": self.states.pop(0) if len(self.states) > 1 else self.states[0],
                "version": 2,
            }

    screen = io.StringIO()
    monkeypatch.setattr(common, "console", Console(file=screen, width=200))
    monkeypatch.setattr(decide.time, "sleep", lambda s: None)
    ok = Promoter(["approved", "promoting", "serving"])
    assert decide._wait_promoted(ok, "cand-1", 5) == 0  # type: ignore[arg-type]
    assert "cand-1: serving (version 2)" in screen.getvalue()
    assert decide._wait_promoted(Promoter(["promoting", "failed"]), "cand-2", 5) == 1  # type: ignore[arg-type]


def test_demo_summary_counts_judged_periods(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from ctrain.commands import common
    from ctrain.commands import demo as demo_cmd
    from ctrain.demo import Progress
    from ctrain.loop import LoopState
    from shared.events import MemberWindow, WindowValidated

    loop = LoopState()
    for i, verdict in enumerate(["ok", "skew", "insufficient_data"]):
        loop.add(
            WindowValidated(
                id=f"v{i}", window_id=f"period-{i}", stream="s", stats_uri="x",
                verdict=verdict, example_count=10, scope="period",  # type: ignore[arg-type]
                members=[MemberWindow(window_id=f"w{i}", data_uri="d", example_count=10)],
            ),
            0.0,
        )  # fmt: skip
    screen = io.StringIO()
    monkeypatch.setattr(common, "console", Console(file=screen, width=200))
    demo = SimpleNamespace(progress=Progress(), tail=SimpleNamespace(state=loop),
                           opts=SimpleNamespace(keep=False))  # fmt: skip
    demo_cmd.summary(demo)
    assert "3 judged (1 drifted or skewed), 0 windows" in screen.getvalue()
    assert loop.judged_windows() == {"w0", "w1", "w2"} and loop.validations == {}


def test_demo_shows_live_quality_and_a_rollback(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from rich.console import Console

    from ctrain.commands import common
    from ctrain.commands import demo as demo_cmd
    from ctrain.demo import Progress
    from ctrain.loop import LoopState
    from ctrain.view import describe
    from shared.events import PromotionEvent, QualityMetrics, WindowScored

    loop = LoopState()
    start = datetime(2014, 4, 1, tzinfo=UTC)
    for step, auc in ((0.0, None), (0.9, 0.912)):
        loop.add(
            WindowScored(
                id=f"s{step}", model="taxi", version=2, window_id="period-1", stream="taxi",
                window_start=start, example_count=1000, labelled_count=int(step * 1000),
                label_coverage=step, coverage_step=step,
                metrics=QualityMetrics(realized={"auc": auc} if auc else {},
                                       estimated={"auc": 0.901}),
            ),
            0.0,
        )  # fmt: skip
    loop.add(
        PromotionEvent(id="p", candidate_id="c", model="taxi", decision="rolled_back",
                       actor="ctrain-monitor", reason="automatic rollback: worse", version=1),
        0.0,
    )  # fmt: skip
    assert describe(loop.scored[0]) == (
        "[blue]quality[/blue] stable v2 on 2014-04-01: no labels yet, estimated 0.901 "
        "(0% of 1,000 labelled)"
    )
    screen = io.StringIO()
    monkeypatch.setattr(common, "console", Console(file=screen, width=200))
    demo = SimpleNamespace(progress=Progress(), tail=SimpleNamespace(state=loop),
                           opts=SimpleNamespace(keep=False))  # fmt: skip
    demo_cmd.summary(demo)
    text = screen.getvalue()
    # The last score of the window only, and the rollback with its actor.
    assert "stable v2 on 2014-04-01: auc 0.912, estimated 0.901 (90% of 1,000 labelled)" in text
    assert "no labels yet" not in text
    assert "by ctrain-monitor: automatic rollback: worse" in text


def test_dev_ports_are_chosen_below_the_ephemeral_range() -> None:
    """A port inside the kernel's ephemeral range can be taken as the source port of an
    outgoing connection before the service binds it; the dev stack picks below it."""
    import socket

    from ctrain.devstack import _ephemeral_low, free_port

    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)  # never the same port twice before anyone binds
    for port in ports[:20]:
        assert 20000 <= port < _ephemeral_low()
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # and it is free
