"""`ctrain model new`: the plan it makes from data, and the clear errors on bad input."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from ctrain import cli, scaffold
from shared import contract
from shared.config import load_config
from tests.e2e.sensors.data import sensor_days

pytestmark = pytest.mark.unit


def table(**cols: list[object]) -> pa.Table:
    return pa.table(cols)


def test_the_task_follows_the_label() -> None:
    base = {"x": [1.0, 2.0, 3.0, 4.0], "s": ["a", "b", "a", "b"]}
    assert scaffold.plan("m", table(**base, y=[0, 1, 0, 1]), "y", None, None).task == "binary"
    p = scaffold.plan("m", table(**base, y=["a", "b", "c", "a"]), "y", None, None)
    assert p.task == "multiclass" and p.classes == ("a", "b", "c")
    assert p.floor == pytest.approx(0.51)  # the majority class's share + 0.01
    p = scaffold.plan("m", table(**base, y=[1.5, 2.5, 3.0, 9.0]), "y", None, None)
    assert p.task == "regression" and p.floor == pytest.approx(2.5)  # MAE of the mean
    p = scaffold.plan("m", table(**base, y=["no", "yes", "no", "no"]), "y", None, None)
    assert p.task == "binary" and p.positive == "yes"  # the rarer class is predicted
    assert p.numeric == ("x",) and p.strings == ("s",)


@pytest.mark.parametrize(
    ("cols", "label", "task", "error"),
    [
        ({"x": [1, 2]}, "y", None, "no column 'y'"),
        ({"x": [1, 2], "y": [1, 1]}, "y", None, "one value"),
        ({"x": [1, 2], "y": ["a", "b"]}, "y", "regression", "not numeric"),
        ({"x": [1, 2, 3], "y": [0, 1, 2]}, "y", "binary", "binary needs exactly 2"),
        ({"x": [1.0, 2.0], "y": [0.5, 1.5]}, "y", "binary", "is a float"),
        ({"x": [1, 2], "y": [None, None]}, "y", None, "empty in every row"),
        ({"y": [0, 1]}, "y", None, "no feature columns"),
    ],
)
def test_bad_input_gets_a_clear_error(
    cols: dict[str, list[object]], label: str, task: str | None, error: str
) -> None:
    with pytest.raises(scaffold.ScaffoldError, match=error):
        scaffold.plan("m", pa.table(cols), label, task, None)


def test_empty_and_badly_named(tmp_path: Path) -> None:
    with pytest.raises(scaffold.ScaffoldError, match="no rows"):
        scaffold.plan("m", pa.table({"x": pa.array([], pa.int64())}), "x", None, None)
    with pytest.raises(scaffold.ScaffoldError, match="lower-case"):
        scaffold.plan("My Model", pa.table({"x": [1], "y": [1]}), "y", None, None)


def test_new_writes_a_module_that_keeps_the_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.csv as csv

    monkeypatch.chdir(tmp_path)
    csv.write_csv(sensor_days(0, 2, shifted=False, seed=1), "readings.csv")
    assert cli.main(["model", "new", "sensors", "--data", "readings.csv", "--label", "mode",
                     "--time-column", "ts"]) == 0  # fmt: skip
    cfg = load_config(tmp_path / "ctrain.yaml")
    m = cfg.models["sensors"]
    assert m.task == "multiclass" and m.windows.event_time_field == "ts"
    assert m.validation.ignore_features == ["ts"]
    module = contract.check(m.module)
    assert module.CLASSES[0] == "none" and module.RAW_LABEL_FEATURES == ("mode",)
    # A second model joins the same file; the same name twice is refused.
    csv.write_csv(pa.table({"a": [1.0, 2.0, 3.0], "b": [2.0, 4.1, 5.9]}), "line.csv")
    assert cli.main(["model", "new", "line", "--data", "line.csv", "--label", "b"]) == 0
    assert set(load_config(tmp_path / "ctrain.yaml").models) == {"sensors", "line"}
    assert cli.main(["model", "new", "line", "--data", "line.csv", "--label", "b",
                     "--dir", "other"]) == 1  # fmt: skip


def test_new_refuses_unreadable_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["model", "new", "m", "--data", "absent.csv", "--label", "y"]) == 1
    Path("empty.csv").write_text("")
    assert cli.main(["model", "new", "m", "--data", "empty.csv", "--label", "y"]) == 1
    assert not Path("ctrain.yaml").exists()


def test_rows_without_a_label_become_unlabelled_examples_and_rows_without_time_periods() -> None:
    """A few hundred rows, 3 % without a label, no time column: the model's labels come on
    their own stream, and the rows are cut by count into periods the loop can train on."""
    n = 300
    y: list[int | None] = [i % 2 for i in range(n)]
    for i in range(0, n, 33):
        y[i] = None
    table = pa.table({"x": [float(i) for i in range(n)], "s": ["a", "b", "c"] * 100, "y": y})
    p = scaffold.plan("small", table, "y", None, None)
    assert p.unlabelled == 10 and p.labelled == 290 and p.task == "binary"
    got = scaffold.sizes(p, table)
    assert got["labels"] == {"source": "stream"}
    count = got["windows"]["window_max_count"]
    assert count == got["validation"]["min_examples"] == 50
    # The demo replays the first 60 % (180 rows) as history: periods of 50, 50, 50 and
    # the last 30 (too small alone). Evaluation takes 30 + 50; training the 100 before.
    assert got["trigger"]["min_eval_examples"] <= 80 * 0.96
    assert got["trigger"]["min_train_examples"] <= 100 * 0.96
    full = scaffold.sizes(
        scaffold.plan("small", table.filter(pa.array([v is not None for v in y])), "y", None, None),
        table,
    )
    assert "labels" not in full
