"""``ctrain backtest`` from the shell: windows, recorded validations, sweeps, bad flags."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from pyarrow import csv
from rich.console import Console

from ctrain import cli
from ctrain.commands import common as cli_common
from ctrain.synth import Segment, resample, write_windows
from shared.events import Distance, FeatureDistances, MemberWindow, WindowValidated
from shared.schema import example_spec, load_schema
from shared.shard import arrow_schema
from tests.conftest import TAXI_CSV, TAXI_SCHEMA

pytestmark = pytest.mark.unit


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> io.StringIO:
    out = io.StringIO()
    monkeypatch.setattr(cli_common, "console", Console(file=out, width=250))
    monkeypatch.setenv("CTRAIN_DEV_STATE_DIR", str(tmp_path / "nodev"))
    return out


@pytest.fixture(scope="module")
def step_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bt")
    schema = arrow_schema(example_spec(load_schema(TAXI_SCHEMA)))
    table = csv.read_csv(TAXI_CSV, convert_options=csv.ConvertOptions(strings_can_be_null=True))
    table = table.select(schema.names).cast(schema)
    rng = np.random.default_rng(5)
    plan = [Segment(700, 0.2)] * 6 + [Segment(700, 0.55)] * 6
    periods = [resample(table, "payment_type", "Credit Card", s, rng) for s in plan]
    write_windows(periods, root, "step", schema, 3600, partitions=2, seed=3)
    return root


def common(root: Path) -> list[str]:
    return [
        "backtest", "--stream", "step", "--root", str(root), "--schema", str(TAXI_SCHEMA),
        "--ignore", "trip_start_timestamp,trip_start_month,trip_start_hour",
        "--min-train-examples", "1400", "--min-eval-examples", "1400", "--cooldown-s", "0",
        "--drift-linf", "0.5",  # skew alone here (the schema's drift comparator is 0.06)
        "--post-change-share", "0",  # the newest periods: the training choice is not tested
    ]  # fmt: skip


def test_windows_report_when_runs_would_start_and_why(
    step_root: Path, screen: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([*common(step_root), "--skew-linf", "0.15"]) == 0
    text = screen.getvalue()
    assert "runs" in text and "skew: skew in 2 judged periods in a row" in text
    assert cli.main([*common(step_root), "--skew-linf", "0.15", "-o", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["periods"]) == 12
    first = report["runs"][0]
    assert first["trigger"] == "skew" and 6 <= first["index"] <= 8
    assert first["train_examples"] >= 1400 and first["eval_examples"] >= 1400
    assert report["episodes"][0]["runs"] == [first["index"]]


def test_a_label_delay_shows_when_runs_become_possible(
    step_root: Path, screen: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hourly periods; labels an hour late: the first run waits until the periods after
    the change it needs hold labels and have matured (the default training choice), and
    the table says how long after the change."""
    base = common(step_root)
    cut = base.index("--post-change-share")
    args = [*base[:cut], *base[cut + 2 :], "--skew-linf", "0.15", "-o", "json"]
    assert cli.main(args) == 0
    inline = json.loads(capsys.readouterr().out)["runs"][0]
    assert cli.main([*args, "--label-delay", "1h"]) == 0
    late = json.loads(capsys.readouterr().out)
    first = late["runs"][0]
    assert first["index"] > inline["index"], (first, inline)
    assert first["since_crossing_s"] > inline["since_crossing_s"]
    waited = [p["decision"] for p in late["periods"][inline["index"] : first["index"]]]
    assert waited and all("stopped: waiting for" in d for d in waited), waited
    assert cli.main([*args[:-2], "--label-delay", "1h"]) == 0
    assert "event time since" in screen.getvalue()
    assert cli.main([*args, "--label-delay", "soon"]) == 2


def test_a_sweep_shows_what_each_threshold_would_have_done(
    step_root: Path, screen: io.StringIO
) -> None:
    assert cli.main([*common(step_root), "--sweep", "skew_linf=0.15,0.9"]) == 0
    rows = {
        line.split("│")[1].strip(): line
        for line in screen.getvalue().splitlines()
        if "skew_linf=" in line
    }
    assert set(rows) == {"skew_linf=0.15", "skew_linf=0.9"}
    assert rows["skew_linf=0.9"].split("│")[2].strip() == "0"  # too high: nothing fires
    assert int(rows["skew_linf=0.15"].split("│")[2].strip()) >= 1


def _recorded(root: Path, stream: str, skews: list[float]) -> None:
    t0 = datetime(2021, 1, 1, tzinfo=UTC)
    for i, value in enumerate(skews):
        start = t0 + timedelta(hours=i)
        d = Distance(measure="linf", value=value, threshold=0.1, crossed=value > 0.1, baseline="b")
        v = WindowValidated(
            id=f"val-{i}", window_id=f"period-{i:03d}", stream=stream, stats_uri="s",
            verdict="skew" if value > 0.1 else "ok", example_count=1000,
            features=[FeatureDistances(name="payment_type", skew=d)],
            window_start=start, window_end=start + timedelta(hours=1), scope="period",
            members=[MemberWindow(window_id=f"w{i}", data_uri=f"/w/{i}", example_count=1000)],
        )  # fmt: skip
        p = root / "validations" / stream / v.window_id / "validated.json"
        p.parent.mkdir(parents=True)
        p.write_bytes(v.to_bytes())


def test_recorded_validations_rethresholded(
    tmp_path: Path, screen: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    _recorded(tmp_path, "rec", [0.02] * 6 + [0.2] * 6)
    base = ["backtest", "--stream", "rec", "--source", "validations", "--root", str(tmp_path)]
    flags = ["--min-train-examples", "2000", "--min-eval-examples", "1000", "-o", "json",
             "--post-change-share", "0"]  # fmt: skip
    assert cli.main([*base, *flags]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [r["index"] for r in runs][:1] == [7] and runs[0]["trigger"] == "skew"
    assert cli.main([*base, *flags, "--skew-linf", "0.3"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"] == []
    # Failed runs are retried: at once with no cooldown (a 0 flag counts), within the budget.
    retry = [*base, *flags, "--outcomes", "fail", "--daily-budget", "4"]
    assert cli.main([*retry, "--cooldown-s", "0"]) == 0
    assert [r["index"] for r in json.loads(capsys.readouterr().out)["runs"]] == [7, 8, 9, 10]
    assert cli.main([*retry, "--cooldown-s", "7200", "--backoff", "1"]) == 0
    assert [r["index"] for r in json.loads(capsys.readouterr().out)["runs"]] == [7, 9, 11]


def test_bad_flags_and_missing_data_say_what_is_wrong(tmp_path: Path, screen: io.StringIO) -> None:
    base = ["backtest", "--stream", "none", "--root", str(tmp_path)]
    assert cli.main([*base, "--outcomes", "promote,maybe"]) == 2
    assert "--outcomes" in screen.getvalue() and "maybe" in screen.getvalue()
    assert cli.main([*base, "--sweep", "colour=1,2"]) == 2
    assert "NAME one of" in screen.getvalue()
    assert cli.main([*base, "--schema", str(TAXI_SCHEMA)]) == 1
    assert "no windows of stream 'none'" in screen.getvalue()
    assert cli.main([*base, "--source", "validations"]) == 1
    assert "no judged periods" in screen.getvalue()


def test_the_models_file_gives_the_streams_policy_and_schema(
    step_root: Path, screen: io.StringIO, capsys: pytest.CaptureFixture[str],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """With CTRAIN_CONFIG the stream's model sets the backtest's policy and schema (no
    --schema here): five periods in a row instead of two put the first run later."""
    from tests.conftest import ROOT

    f = tmp_path / "ctrain.yaml"
    f.write_text(
        f"models:\n  m:\n    stream: step\n    schema: {TAXI_SCHEMA}\n"
        f"    module: {ROOT / 'examples/taxi/model.py'}\n"
        "    validation: {ignore_features: [trip_start_timestamp, trip_start_month,"
        " trip_start_hour]}\n"
        "    trigger: {consecutive: 5, min_train_examples: 1400, min_eval_examples: 1400,"
        " cooldown_s: 0, post_change_share: 0}\n"
    )
    monkeypatch.setenv("CTRAIN_CONFIG", str(f))
    args = ["backtest", "--stream", "step", "--root", str(step_root), "-o", "json",
            "--skew-linf", "0.15", "--drift-linf", "0.5"]  # fmt: skip
    assert cli.main(args) == 0
    first = json.loads(capsys.readouterr().out)["runs"][0]
    assert first["trigger"] == "skew" and first["index"] >= 9, first
    assert cli.main([*args, "--consecutive", "2"]) == 0  # a flag still wins
    assert json.loads(capsys.readouterr().out)["runs"][0]["index"] <= 8
