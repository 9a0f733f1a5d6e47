"""A user's own CSV to a served model, as the README tells a new user to do it:
`ctrain model new` then `ctrain demo --data FILE --model NAME`, on data ctrain has
never seen (generated here), with the module ctrain wrote and no change to ctrain."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as csv
import pytest

from ctrain import cli
from ctrain.demo import Demo, DemoOptions, Progress
from ctrain.loop import LoopState
from shared.config import load_config

pytestmark = pytest.mark.e2e


def readings(days: int, seed: int) -> pa.Table:
    """Machine load (a number) from temperature, vibration and site, one row per ~2 min."""
    rng = random.Random(seed)
    rows: dict[str, list[object]] = {k: [] for k in ("site", "temperature", "vibration", "ts")}
    rows["load"] = []
    for i in range(days * 700):
        site = rng.choice(["north", "south", "east"])
        temp, vib = rng.gauss(72, 6), rng.gauss(1.0, 0.3)
        rows["site"].append(site)
        rows["temperature"].append(round(temp, 2))
        rows["vibration"].append(round(vib, 3))
        rows["ts"].append(1_704_067_200 + i * 123)
        base = 40 + 2.0 * (temp - 72) + 15 * (vib - 1) + (8 if site == "east" else 0)
        rows["load"].append(round(base + rng.gauss(0, 2), 2))
    return pa.table(rows)


def demo(data: str, model: str) -> tuple[Progress, LoopState]:
    """`ctrain demo --data DATA --model MODEL --auto-approve --stop`, as fast as it goes."""
    d = Demo(
        DemoOptions(data=data, model=model, config="ctrain.yaml", speedup=0, keep=False,
                    auto_approve=True),
        view=lambda m: None,
    )  # fmt: skip
    try:
        progress = d.run()
    finally:
        d.stop()
    assert d.tail is not None
    return progress, d.tail.state


@pytest.mark.timeout(1200)
def test_a_csv_to_a_served_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CTRAIN_DEV_STATE_DIR", str(tmp_path / ".ctrain"))
    csv.write_csv(readings(10, seed=7), "plant.csv")
    assert cli.main(["model", "new", "plant", "--data", "plant.csv", "--label", "load",
                     "--time-column", "ts"]) == 0  # fmt: skip
    spec = load_config("ctrain.yaml").models["plant"]
    assert spec.task == "regression" and spec.topic == "ctrain.examples.plant"

    progress, loop = demo("plant.csv", "plant")
    cand = next(iter(loop.candidates.values()))
    assert cand.blessed and cand.model == "plant"
    # A generated regression model beats predicting the mean by far on this data.
    mae = cand.metrics.overall["mean_absolute_error"]
    assert mae < 0.5 * cand.metrics.overall.get("mean_label", 40), cand.metrics.overall
    assert progress.before is not None and progress.before[0] == 1
    assert all(20 < p < 80 for p in progress.before[1]), progress.before
    # The later rows are like the history: usually the trigger says why it does not
    # retrain; should noise cross a threshold, the retrained model must serve instead.
    assert progress.phase.startswith("done"), progress.phase
    if progress.phase.startswith("done: no retraining needed"):
        assert len(loop.runs) == 1 and loop.stable_version("plant") == 1
    else:
        assert loop.stable_version("plant") == 2 and progress.after is not None
    assert not loop.dlq


def small_table(n: int, seed: int) -> pa.Table:
    """A few hundred rows with no time column, about 3 % of them without a label."""
    rng = random.Random(seed)
    rows: dict[str, list[object]] = {"kind": [], "size": [], "score": [], "churned": []}
    for i in range(n):
        kind = rng.choice(["basic", "plus", "pro"])
        size, score = rng.gauss(10, 3), rng.gauss(0, 1)
        risk = 0.8 * score - 0.2 * (size - 10) + (0.7 if kind == "basic" else 0.0)
        rows["kind"].append(kind)
        rows["size"].append(round(size, 2))
        rows["score"].append(round(score, 3))
        rows["churned"].append(None if i % 33 == 5 else ("yes" if risk > 0.6 else "no"))
    return pa.table(rows)


@pytest.mark.timeout(1200)
def test_a_small_table_without_time_and_with_missing_labels_closes_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a new user tried: `model new` on a table with no time column and some empty
    labels, then the demo. The rows become count windows, each a period; the unlabelled
    ones stream as examples without a label; the first model trains on the labelled."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CTRAIN_DEV_STATE_DIR", str(tmp_path / ".ctrain"))
    csv.write_csv(small_table(400, seed=3), "accounts.csv")
    assert cli.main(["model", "new", "churn", "--data", "accounts.csv", "--label", "churned"]) == 0
    spec = load_config("ctrain.yaml").models["churn"]
    assert spec.labels.source == "stream" and spec.windows.event_time_field is None
    progress, loop = demo("accounts.csv", "churn")
    assert progress.phase.startswith("done"), progress.phase
    first = next(iter(loop.candidates.values()))
    assert first.blessed and first.labels is not None
    assert first.labels["train"]["unlabelled"] + first.labels["eval"]["unlabelled"] >= 1
    assert loop.stable_version("churn") >= 1
    assert not loop.dlq  # rows without a label are examples, not rejects
