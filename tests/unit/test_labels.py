"""Labels from their own stream, the pure parts: the record's forms, the artifact-store
layout both readers share, and the trigger sizing data by labelled examples."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.trigger import policy as pol
from services.trigger import steps
from shared import labels as lb
from shared.artifacts import ArtifactStore
from shared.events import LabelRecord

pytestmark = pytest.mark.unit
DAY = 86_400.0


def test_a_label_record_is_the_raw_label_features() -> None:
    one = LabelRecord(example_id="tx-1", label=3.5)
    assert one.values(("tips",)) == {"tips": 3.5}
    with pytest.raises(ValueError, match=r"has 2 features .*send them as 'features'"):
        one.values(("tips", "fare"))
    both = LabelRecord(example_id="tx-1", features={"tips": 1.0, "fare": 4.0})
    assert both.values(("tips", "fare")) == {"tips": 1.0, "fare": 4.0}
    with pytest.raises(ValueError, match="missing fare; not label features: x"):
        LabelRecord(example_id="tx-1", features={"tips": 1.0, "x": 2}).values(("tips", "fare"))
    with pytest.raises(ValueError, match=r"'label' .* or 'features'"):
        LabelRecord(example_id="tx-1")
    with pytest.raises(ValueError, match=r"'label' .* or 'features'"):
        LabelRecord(example_id="tx-1", label=1, features={"tips": 1.0})


def test_label_features_of_a_module() -> None:
    raw = types.SimpleNamespace(LABEL_KEY="big_tip", RAW_LABEL_FEATURES=("tips",))
    assert lb.label_features(raw) == ("tips",)
    plain = types.SimpleNamespace(LABEL_KEY="y", RAW_LABEL_FEATURES=())
    assert lb.label_features(plain) == ("y",)


def shard(tmp_path: Path, n: int = 6) -> str:
    d = tmp_path / "windows" / "s" / "w1"
    d.mkdir(parents=True)
    table = pa.table(
        {
            "x": pa.array(range(n), pa.int64()),
            "y": pa.array([None, None, 1.0, None, None, None][:n], pa.float32()),
        }
    )
    pq.write_table(table, d / "data.parquet")
    return str(d / "data.parquet")


def joined(row: int, y: float, p: int = 0, o: int = 0) -> lb.Joined:
    return lb.Joined(row, f"id{row}", 1000, p, o, {"y": y})


def test_segments_written_again_or_cut_otherwise_read_as_one_label_a_row(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    uri = shard(tmp_path)
    assert lb.read_joined(store, uri).num_rows == 0
    lb.write_segment(store, uri, "p0-o0", [joined(0, 1.0, o=0), joined(3, 0.0, o=1)])
    # After a crash the same labels come in other batches: one segment again, one new.
    lb.write_segment(store, uri, "p0-o0", [joined(0, 1.0, o=0), joined(3, 0.0, o=1)])
    lb.write_segment(store, uri, "p0-o1", [joined(3, 0.0, o=1), joined(4, 1.0, o=2)])
    got = lb.read_joined(store, uri)
    assert got.column("row").to_pylist() == [0, 3, 4]
    assert got.column("src_offset").to_pylist() == [0, 1, 2]
    assert sorted(store.listdir(lb.labels_dir(uri))) == ["p0-o0.parquet", "p0-o1.parquet"]


def test_attach_keeps_labelled_rows_defaults_matured_ones_and_counts(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    uri = shard(tmp_path)
    lb.write_segment(store, uri, "a", [joined(0, 1.0), joined(2, 0.0), joined(4, 0.0, o=1)])
    table = pq.read_table(uri)
    got, n = lb.attach(table, lb.read_joined(store, uri), ("y",))
    # Row 2 carries its label in the window: it keeps it (1.0), the join's does not win.
    assert got.column("x").to_pylist() == [0, 2, 4]
    assert got.column("y").to_pylist() == [1.0, 1.0, 0.0]
    assert n == lb.Counts(labelled=3, defaulted=0, unlabelled=3)
    got, n = lb.attach(table, lb.read_joined(store, uri), ("y",), default={"y": 0})
    assert got.column("y").to_pylist() == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert got.schema.field("y").type == pa.float32()
    assert n == lb.Counts(labelled=3, defaulted=3, unlabelled=0)
    only, rows = lb.joined_only(table, lb.read_joined(store, uri), ("y",))
    assert rows.tolist() == [0, 4] and only.column("y").to_pylist() == [1.0, 0.0]


def test_gather_trains_on_labelled_examples_only_and_says_how_many(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    train = shard(tmp_path)
    lb.write_segment(store, train, "a", [joined(0, 1.0), joined(1, 0.0)])
    ev_dir = tmp_path / "ev"
    ev_dir.mkdir()
    ev = str(ev_dir / "data.parquet")
    pq.write_table(pq.read_table(train), ev)
    lb.write_segment(store, ev, "a", [joined(5, 1.0)])
    spec = json.dumps({"features": ["y"], "default": {"y": 0}, "matured": [ev]})
    out = steps.gather([train], [ev], str(tmp_path / "out"), labels_json=spec)
    assert out["train_rows"] == 3 and out["eval_rows"] == 6
    counts = (tmp_path / "out" / "labels.json").read_text()
    # Evaluation: row 2 carries its label, row 5 was joined, the other 4 defaulted at
    # maturity; training: 2 joined + 1 carried, 3 left out.
    assert '"eval": {\n  "defaulted": 4,\n  "labelled": 2,\n  "unlabelled": 0' in counts
    assert '"train": {\n  "defaulted": 0,\n  "labelled": 3,\n  "unlabelled": 3' in counts
    # Nothing labelled and nothing matured: a clear error, no empty training set.
    bare = '{"features": ["y"], "default": null, "matured": []}'
    with pytest.raises(steps.StepError, match="no labelled held-out examples: 5 examples wait"):
        steps.gather([train], [_empty_labels(tmp_path)], str(tmp_path / "o2"), labels_json=bare)


def _empty_labels(tmp_path: Path) -> str:
    d = tmp_path / "nolabels"
    d.mkdir()
    t = pa.table({"x": pa.array(range(5), pa.int64()), "y": pa.nulls(5, pa.float32())})
    pq.write_table(t, d / "data.parquet")
    return str(d / "data.parquet")


def period(i: int, n: int = 1000, labelled: int = 0, verdict: str = "ok") -> pol.WindowInfo:
    return pol.WindowInfo(
        f"per{i}",
        f"2014-01-{i + 1:02d}",
        n,
        verdict,
        False,
        end_s=(i + 1) * DAY,
        members=(f"w{i}",),
        data_uris=(f"/s/w{i}",),
        member_counts=(n,),
        labelled=labelled,
    )


LABELS = dict(
    min_train_examples=2000,
    min_eval_examples=1000,
    cooldown_s=0,
    label_stream=True,
    label_maturity_s=3 * DAY,
)


def test_the_trigger_waits_for_labels_and_says_how_many_and_when() -> None:
    p = pol.Policy(**LABELS)  # type: ignore[arg-type]
    state = pol.ModelState()
    for i in range(5):
        pol.observe(state, period(i, labelled=500))
    state.label_now = 5 * DAY  # periods 0 and 1 have matured (end + 3 d)
    d = pol.decide(state, 0.0, p, manual=True)
    # Evaluation takes the matured periods 0 and 1: nothing older is left to train on.
    assert not d.take and d.guard == "labels"
    assert d.reason.endswith(
        "stopped: waiting for labels: 0 labelled training examples of 2,000 needed; "
        "window per2 matures in 1 d"
    )
    # Labels arrive: the older periods fill up and mature; evaluation is the newest matured.
    state.windows = [dataclasses.replace(w, labelled=1000) for w in state.windows]
    state.label_now = 8 * DAY  # every period matured
    d = pol.decide(state, 0.0, p, manual=True)
    assert d.take and [w.window_id for w in d.evaluation] == ["per4"]
    assert [w.window_id for w in d.train] == ["per2", "per3"]
    assert d.train_examples == 2000 and d.eval_examples == 1000


def test_unmatured_periods_are_never_evaluation_and_a_default_counts_at_maturity() -> None:
    p = pol.Policy(**{**LABELS, "label_default": True})  # type: ignore[arg-type]
    state = pol.ModelState()
    for i in range(4):
        pol.observe(state, period(i, labelled=100))
    state.label_now = 3.5 * DAY  # period 0 ends on day 1: it matures on day 4
    _, _, problem = pol.select(state, p)
    assert problem == (
        "waiting for labels: 0 labelled evaluation examples of 1,000 needed; "
        "window per0 matures in 12 h"
    )
    state.label_now = 4 * DAY
    _, _, problem = pol.select(state, p)
    # Period 0 is evaluation (all 1,000 once defaulted); the others are newer.
    assert problem is not None and "0 labelled training examples of 2,000" in problem
    state.label_now = 6 * DAY  # periods 0..2 matured; period 3 still collects labels
    train, ev, problem = pol.select(state, p)
    assert problem is None
    assert [w.window_id for w in ev] == ["per2"] and [w.window_id for w in train] == [
        "per0",
        "per1",
    ]
    # Inline labels: every example counts, no period waits.
    inline = pol.Policy(min_train_examples=2000, min_eval_examples=1000, cooldown_s=0)
    state = pol.ModelState()
    for i in range(3):
        pol.observe(state, dataclasses.replace(period(i), labelled=-1))
    train, ev, problem = pol.select(state, inline)
    assert problem is None and [w.window_id for w in ev] == ["per2"]


def test_a_shift_is_trained_on_the_world_after_it() -> None:
    """With the default share, a skew run waits until three quarters of its training
    examples come from the periods since the streak began, and says so meanwhile."""
    p = pol.Policy(consecutive=2, min_train_examples=2000, min_eval_examples=1000, cooldown_s=0)
    assert p.post_change_share == 0.75

    def skewed(i: int) -> pol.WindowInfo:
        return dataclasses.replace(period(i, verdict="skew"), labelled=-1, skew=True)

    state = pol.ModelState()
    for i in range(6):
        pol.observe(state, dataclasses.replace(period(i), labelled=-1))
    pol.observe(state, skewed(6))
    pol.observe(state, skewed(7))
    assert pol.change_start(state, "skew") == 6
    d = pol.decide(state, 0.0, p)
    assert not d.take and d.guard == "data"
    assert "waiting for data after the change: 1,000 training examples since per6 of 1,500" in (
        d.reason
    )
    # Before this rule: the newest periods before evaluation, half of them the old world.
    old = pol.decide(state, 0.0, dataclasses.replace(p, post_change_share=0.0))
    assert old.take and [w.window_id for w in old.train] == ["per5", "per6"]
    pol.observe(state, skewed(8))
    d = pol.decide(state, 0.0, p)
    assert d.take and [w.window_id for w in d.evaluation] == ["per8"]
    assert [w.window_id for w in d.train] == ["per6", "per7"]
    # A manual request is not held to it.
    assert pol.select(state, p, "manual")[2] is None


def test_unreadable_labels_are_a_clear_error_for_the_reader_and_the_gather_step(
    tmp_path: Path,
) -> None:
    store = ArtifactStore(str(tmp_path))
    uri = shard(tmp_path)
    lb.write_segment(store, uri, "a", [joined(0, 1.0)])
    Path(lb.labels_dir(uri), "b.parquet").write_bytes(b"not parquet")
    with pytest.raises(lb.LabelsUnreadable, match=r"labels of .*data\.parquet"):
        lb.read_joined(store, uri)
    spec = json.dumps({"features": ["y"], "default": None, "matured": []})
    with pytest.raises(steps.StepError, match=r"cannot read the training shard .* or its labels"):
        steps.gather([uri], [uri], str(tmp_path / "out"), labels_json=spec)


def test_replay_with_labels_refuses_what_it_cannot_do() -> None:
    import asyncio

    from ctrain.replay import ReplayError
    from ctrain.replay_labels import parse_duration, replay_with_labels
    from shared.settings import CommonSettings

    assert parse_duration("30d") == 30 * DAY and parse_duration("12h") == 43_200
    assert parse_duration("90") == 90 and parse_duration("2w") == 14 * DAY
    with pytest.raises(ReplayError, match="use a number with s, m, h, d or w"):
        parse_duration("soon")
    table = pa.table({"t": [1, 2], "y": [0.0, 1.0]})

    def go(**kw: object) -> None:
        args: dict[str, object] = dict(
            time_column="t", label_columns=("y",), delay_s=1.0, topic="x"
        )
        args.update(kw)
        asyncio.run(replay_with_labels(CommonSettings(), table, **args))  # type: ignore[arg-type]

    with pytest.raises(ReplayError, match=r"column\(s\) tips not in the file; columns: t, y"):
        go(label_columns=("tips",))
    with pytest.raises(ReplayError, match="never-labelled is a fraction"):
        go(never_fraction=1.0)


def test_replay_label_delay_needs_a_time_column(capsys: pytest.CaptureFixture[str]) -> None:
    from ctrain import cli

    assert cli.main(["replay", "x.csv", "--topic", "t", "--label-delay", "30d"]) == 2
    assert "--label-delay needs --time-column" in capsys.readouterr().out
