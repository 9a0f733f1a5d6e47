"""Two streams and two models through one stack (issue: any stream, any model).

The taxi trips and a machine-sensor stream the test generates (its own schema and a
module written from docs/models.md) are replayed at the same time into one
deployment of the four services, configured by one models file. Each model trains
only on its own stream's windows, both are promoted and serve side by side, and
drift in the sensor stream starts a sensor run and nothing for taxi.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest

from ctrain import cli, client, devstack
from ctrain.loop import EventTail, LoopState, predict_stable
from ctrain.replay import read_table, replay
from shared.config import load_config
from shared.schema import example_spec, load_schema
from shared.settings import CommonSettings
from shared.shard import arrow_schema
from shared.tfexample import rows_to_examples
from tests.conftest import ROOT, TAXI_CSV
from tests.e2e.sensors.data import sensor_days

pytestmark = pytest.mark.e2e
SENSORS = Path(__file__).resolve().parent / "sensors"


def models_file(tmp: Path) -> Path:
    taxi = ROOT / "examples" / "taxi"
    f = tmp / "ctrain.yaml"
    f.write_text(
        f"""
version: 1
models:
  taxi:
    stream: taxi
    topic: ctrain.examples
    schema: {taxi / "data/schema.pbtxt"}
    module: {taxi / "model.py"}
    windows: {{event_time_field: trip_start_timestamp, window_duration_s: 7862400,
               allowed_lateness_s: 86400, idle_timeout_s: 5}}
    validation: {{ignore_features: [trip_start_timestamp, trip_start_month]}}
    trigger: {{cooldown_s: 0, epochs: 1, min_train_examples: 2000, min_eval_examples: 1000}}
    promotion: {{policy: auto}}
  taxi-fare:
    stream: taxi-fare
    schema: {taxi / "data/schema.pbtxt"}
    module: {taxi / "fare/model.py"}
    task: regression
    windows: {{event_time_field: trip_start_timestamp, window_duration_s: 7862400,
               allowed_lateness_s: 86400, idle_timeout_s: 5}}
    validation: {{ignore_features: [trip_start_timestamp, trip_start_month]}}
    trigger: {{cooldown_s: 0, epochs: 2, min_train_examples: 2000, min_eval_examples: 1000}}
    promotion: {{policy: auto}}
  sensors:
    stream: sensors
    schema: {SENSORS / "schema.pbtxt"}
    module: {SENSORS / "model.py"}
    task: multiclass
    windows: {{event_time_field: ts, window_duration_s: 86400, allowed_lateness_s: 3600,
               idle_timeout_s: 5}}
    validation: {{ignore_features: [ts]}}
    # Four drifted days of 700 readings: too few to wait for 75 % of the training data
    # from after the change (post_change_share); this test is about routing.
    trigger: {{cooldown_s: 0, epochs: 2, consecutive: 2, min_train_examples: 2000,
               min_eval_examples: 1000, post_change_share: 0}}
    promotion: {{policy: auto}}
"""
    )
    return f


def stream_of(loop: LoopState, window_ids: list[str]) -> set[str]:
    """Streams of the windows a run names (periods name their member windows)."""
    members = {p.window_id: [m.window_id for m in p.members] for p in loop.periods.values()}
    ids = [m for w in window_ids for m in members.get(w, [w])]
    return {loop.windows[w].stream for w in ids if w in loop.windows}


def first_run(state: dict[str, Any], loop: LoopState, model: str, stream: str) -> str:
    """The model's first run: asked for once the trigger has read every judged period of
    its stream (one the history's own drift started counts)."""
    periods = {p.window_id for p in loop.periods.values() if p.stream == stream}
    tc = client.trigger(state)
    try:
        deadline = time.monotonic() + 120
        while True:
            seen = {d["source"].removeprefix("validation:") for d in tc.decisions(500, model)}
            if periods <= seen:
                break
            assert time.monotonic() < deadline, f"{model}: trigger has not read {periods - seen}"
            time.sleep(0.2)  # poll interval: the trigger reads validations on its own
        runs = tc.runs(model=model)
        if runs:
            return str(runs[0]["run_id"])
        resp = tc.train("first model", model=model)
        assert resp["started"], resp
        return str(resp["run_id"])
    finally:
        tc.close()


def scripting(capsys: pytest.CaptureFixture[str], loop: LoopState) -> None:
    """The command line with two models: --model, -o json, full ids, unique prefixes."""
    capsys.readouterr()
    assert cli.main(["status"]) == 2
    assert "declares 3 models" in capsys.readouterr().out.replace("\n", " ")
    assert cli.main(["candidates", "list", "--model", "sensors", "-o", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed and {c["model"] for c in listed} == {"sensors"}
    cid = listed[0]["candidate_id"]
    # A table in an 80-column pipe still shows whole ids (a cut one would be "not found").
    assert cli.main(["candidates", "list", "--model", "sensors"]) == 0
    assert cid in capsys.readouterr().out
    assert cli.main(["candidates", "show", cid[:12], "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["candidate_id"] == cid
    assert cli.main(["runs", "--model", "taxi", "-o", "json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert runs and {r["model"] for r in runs} == {"taxi"}
    assert cli.main(["runs", runs[0]["run_id"][:10], "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == runs[0]["run_id"]
    assert cli.main(["windows", "--model", "sensors", "-o", "json"]) == 0
    wins = json.loads(capsys.readouterr().out)
    assert wins and all(loop.windows[w["window_id"]].stream == "sensors" for w in wins
                        if w["window_id"] in loop.windows)  # fmt: skip
    # The trigger's API with several models: which one, or a clear refusal.
    url = client.service_url("trigger")
    r = httpx.get(f"{url}/v1/state")
    assert r.status_code == 400 and "name the model" in r.json()["detail"]
    r = httpx.get(f"{url}/v1/runs", params={"model": "nope"})
    assert r.status_code == 404 and "sensors" in r.json()["detail"]
    assert httpx.get(f"{url}/v1/models").json()["models"][0]["stream"]
    assert cli.main(["status", "--model", "taxi", "-o", "json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["model"] == "taxi" and st["serving"]["labels"]["stable"] >= 1


def predict(state: dict[str, Any], model: str, schema_path: str, rows: pa.Table) -> list[float]:
    schema = arrow_schema(example_spec(load_schema(schema_path)))
    fields = [f for f in schema if f.name in rows.column_names]
    typed = pa.table([rows.column(f.name).cast(f.type) for f in fields], schema=pa.schema(fields))
    version, scores = predict_stable(state["serving_grpc"], model, rows_to_examples(typed))
    assert version >= 1
    return scores


@pytest.mark.timeout(1500)
def test_two_streams_two_models_one_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CTRAIN_DEV_STATE_DIR", str(tmp_path / "dev"))
    config = models_file(tmp_path)
    cfg = load_config(config)
    taxi = read_table(TAXI_CSV)
    years = pa.compute.year(  # type: ignore[attr-defined]
        pa.compute.cast(taxi.column("trip_start_timestamp"), pa.timestamp("s"))  # type: ignore[attr-defined]
    )
    taxi_2013 = taxi.filter(pa.compute.equal(years, 2013))  # type: ignore[attr-defined]
    calm = sensor_days(0, 8, shifted=False, seed=1)
    moved = sensor_days(8, 4, shifted=True, seed=2)

    state = devstack.up(echo=lambda m: None, config=str(config))
    tail = EventTail(state["kafka"])
    tail.__enter__()
    try:
        common = CommonSettings(kafka_bootstrap=state["kafka"], kafka_idempotent=False)

        async def both() -> None:
            await asyncio.gather(
                replay(common, taxi_2013, time_column="trip_start_timestamp",
                       topic=cfg.models["taxi"].topic),
                replay(common, calm, time_column="ts", topic=cfg.models["sensors"].topic),
                replay(common, taxi_2013, time_column="trip_start_timestamp",
                       topic=cfg.models["taxi-fare"].topic),
            )  # fmt: skip

        asyncio.run(both())
        expected = 2 * taxi_2013.num_rows + calm.num_rows

        def settled(s: LoopState) -> bool:
            return (
                s.examples_accounted() >= expected
                and set(s.validations) >= set(s.windows)
                and s.judged_windows() >= set(s.windows)
            )

        tail.wait_for(settled, 300, "both streams windowed and judged")
        streams = {w.stream for w in tail.state.windows.values()}
        assert streams == {"taxi", "taxi-fare", "sensors"}
        # Two real 2013 trips lack pickup_community_area; every sensor reading is valid.
        assert {(d.source.topic, d.reason) for d in tail.state.dlq} <= {
            ("ctrain.examples", "missing_feature"),
            ("ctrain.examples.taxi-fare", "missing_feature"),
        }

        first = {m: first_run(state, tail.state, m, cfg.models[m].stream) for m in cfg.models}
        assert all(first.values()), first

        def all_serving(s: LoopState) -> bool:
            return all(s.stable_version(m) for m in cfg.models)

        tail.wait_for(all_serving, 900, "every first model promoted")
        pc = client.promoter("viewer", state)
        try:
            views = {m: pc.model(m) for m in cfg.models}
        finally:
            pc.close()
        for m, view in views.items():
            assert view is not None and "stable" in view["labels"], (m, view)
        taxi_scores = predict(state, "taxi", cfg.models["taxi"].schema_path, taxi_2013.slice(0, 4))
        sensor_scores = predict(state, "sensors", cfg.models["sensors"].schema_path, moved[:4])
        fares = predict(
            state, "taxi-fare", cfg.models["taxi-fare"].schema_path, taxi_2013.slice(0, 4)
        )
        # binary: one probability per trip; multi-class: three per reading; regression: $
        assert len(taxi_scores) == 4 and len(sensor_scores) == 12 and len(fares) == 4
        assert all(0 <= p <= 1 for p in taxi_scores + sensor_scores)
        assert all(0 < f < 200 for f in fares), fares
        fare_cand = next(c for c in tail.state.candidates.values() if c.model == "taxi-fare")
        assert "mean_absolute_error" in fare_cand.metrics.overall, fare_cand.metrics
        sensor_cand = next(c for c in tail.state.candidates.values() if c.model == "sensors")
        assert "sparse_categorical_accuracy" in sensor_cand.metrics.overall

        # Drift in the sensor stream: a sensor run, nothing for taxi.
        taxi_runs = {r for r, evs in tail.state.runs.items() if evs[0].model != "sensors"}
        asyncio.run(replay(common, moved, time_column="ts", topic=cfg.models["sensors"].topic))

        def sensor_drift_run(s: LoopState) -> str | None:
            return next(
                (
                    r
                    for r, evs in s.runs.items()
                    if evs[0].model == "sensors" and evs[0].reason in ("drift", "skew")
                ),
                None,
            )

        tail.wait_for(sensor_drift_run, 300, "a drift run of the sensor model")
        tail.wait_for(
            lambda s: (
                s.examples_accounted() >= expected + moved.num_rows
                and s.judged_windows() >= set(s.windows)
            ),
            300,
            "the drifted days judged",
        )
        loop = tail.state
        assert {r for r, evs in loop.runs.items() if evs[0].model != "sensors"} == taxi_runs
        for run_id, evs in loop.runs.items():
            model = evs[0].model
            assert stream_of(loop, evs[0].windows) == {cfg.models[model].stream}, (run_id, model)
        for c in loop.candidates.values():
            assert stream_of(loop, c.eval_windows) <= {cfg.models[c.model].stream}
        assert not loop.conflicts, loop.conflicts
        sensor_periods = {p.window_id for p in loop.periods.values() if p.stream == "sensors"}
        tc = client.trigger(state)
        try:
            taxi_sources = {
                d["source"].removeprefix("validation:") for d in tc.decisions(500, "taxi")
            }
        finally:
            tc.close()
        assert sensor_periods and not taxi_sources & sensor_periods
        scripting(capsys, loop)
    finally:
        tail.stop()
        devstack.down(echo=lambda m: None)
