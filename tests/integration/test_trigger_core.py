"""The trigger core against a real Redis: decisions, claims, redelivery, results.

The backend here is an in-process stand-in that finishes runs by writing the
``result.json`` a real pipeline's last component writes; the real backends
have their own tests (kfp.local end to end, and a KFP REST server).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from services.trigger import policy as pol
from services.trigger.backends import Outcome
from services.trigger.core import Trigger, TriggerConfig
from services.trigger.metrics import TriggerMetrics
from shared.artifacts import ArtifactStore
from shared.events import (
    Anomaly,
    Distance,
    Event,
    FeatureDistances,
    MemberWindow,
    ModelCandidate,
    PromotionEvent,
    QualityMetrics,
    TrainingRun,
    WindowScored,
    WindowValidated,
)
from tests.conftest import ROOT, TAXI_SCHEMA

pytestmark = pytest.mark.integration


class ScriptedBackend:
    name = "local"

    def __init__(self, fail: bool = False) -> None:
        self.submitted: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail

    async def submit(self, run_id: str, params: dict[str, Any]) -> str:
        self.submitted.append((run_id, params))
        return f"b-{run_id}"

    async def wait(self, run_id: str, backend_run_id: str, run_dir: str) -> Outcome:
        if self.fail:
            return Outcome("failed", "transform", "Traceback ...\nValueError: boom")
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        result = {
            "trained": {"model": f"{run_dir}/model"},
            "evaluated": {
                "blessed": True,
                "failed_checks": [],
                "eval_uri": f"{run_dir}/eval",
                "metrics": {
                    "overall": {"auc": 0.9, "example_count": 1000},
                    "slices": [{"slice": "payment_type=Cash", "metrics": {"auc": 0.8}}],
                },
                "baseline_metrics": None,
            },
        }
        (Path(run_dir) / "result.json").write_text(json.dumps(result))
        return Outcome("succeeded")


def validation(i: int, verdict: str, blocking: bool = False) -> WindowValidated:
    start = datetime(2014, 1, 1, tzinfo=UTC) + timedelta(days=30 * i)
    d = Distance(
        measure="linf",
        value=0.2 if verdict in ("drift", "skew") else 0.01,
        threshold=0.06,
        crossed=verdict in ("drift", "skew"),
        baseline="prev",
    )
    return WindowValidated(
        id=f"val-{i}",
        window_id=f"per-{i}",
        stream="taxi",
        stats_uri="s",
        verdict=verdict,  # type: ignore[arg-type]
        example_count=1000,
        features=[
            FeatureDistances(name="payment_type", skew=d)
            if verdict == "skew"
            else FeatureDistances(name="payment_type", drift=d)
        ],
        anomalies=[
            Anomaly(
                feature="fare", code="SCHEMA_MISSING_COLUMN", severity="blocking", description="x"
            )
        ]
        if blocking
        else [],
        window_start=start,
        window_end=start + timedelta(days=30),
        scope="period",
        members=[
            MemberWindow(
                window_id=f"win-{i}-p{p}", data_uri=f"/w/{i}-{p}.parquet", example_count=500
            )
            for p in range(2)
        ],
    )


async def make(
    redis_url: str,
    tmp: Path,
    backend: ScriptedBackend,
    model: str,
    policy: pol.Policy | None = None,
    **config: Any,
) -> tuple[Trigger, list[Event]]:
    out: list[Event] = []

    async def publish(e: Event) -> None:
        out.append(e)

    t = Trigger(
        redis=Redis.from_url(redis_url),
        store=ArtifactStore(str(tmp)),
        backend=backend,
        metrics=TriggerMetrics(CollectorRegistry()),
        config=TriggerConfig(
            model=model,
            module_path=str(ROOT / "examples/taxi/model.py"),
            schema_path=str(TAXI_SCHEMA),
            # The newest periods before evaluation, whichever side of a change (the wait
            # for data after it has its own tests: tests/unit/test_labels.py).
            policy=policy
            or pol.Policy(
                consecutive=2,
                cooldown_s=0,
                min_train_examples=2000,
                min_eval_examples=1000,
                post_change_share=0,
            ),
            **config,
        ),
        publish=publish,
    )
    return t, out


def test_the_trigger_waits_for_labels_then_starts_on_its_tick(
    redis_url: str, tmp_path: Path
) -> None:
    """Skew holds while the labels of the periods are still out: the trigger says so;
    once the label join has them (counts and clock in Redis) and they have matured, the
    next tick starts the run, with no new period, on the labelled examples."""
    from shared import keys

    async def go() -> None:
        backend = ScriptedBackend()
        model = f"l-{tmp_path.name}"
        policy = pol.Policy(
            consecutive=2,
            cooldown_s=0,
            min_train_examples=2000,
            min_eval_examples=800,
            post_change_share=0,
            label_stream=True,
            label_maturity_s=10 * 86400,
        )
        t, _ = await make(redis_url, tmp_path, backend, model, policy, label_features=("tips",))
        redis = Redis.from_url(redis_url)
        await redis.delete(keys.labels_count(model), keys.labels_clock(model))
        for i, v in enumerate(["ok", "ok", "ok", "skew", "skew"]):
            d = await t.on_validation(validation(i, v))
        assert d is not None and not d.take and d.guard == "labels"
        assert "waiting for labels: 0 labelled evaluation examples of 800 needed" in d.reason
        assert await t.tick() is not None and backend.submitted == []
        # The join catches up: 450 of each shard's 500 examples labelled, and the labels'
        # clock 10 days past the newest period: all of them matured.
        members = {f"win-{i}-p{p}": 450 for i in range(5) for p in range(2)}
        await redis.hset(keys.labels_count(model), mapping=members)
        end = validation(4, "skew").window_end
        assert end is not None
        clock = int((end + timedelta(days=10)).timestamp() * 1000)
        await redis.set(keys.labels_clock(model), clock)
        d = await t.tick()
        assert d is not None and d.take and d.trigger == "skew"
        await asyncio.gather(*t.followers.values())
        [(run_id, params)] = backend.submitted
        spec = json.loads(params["labels_json"])
        assert spec["features"] == ["tips"] and spec["default"] is None
        assert set(spec["matured"]) == {
            u for i in range(5) for u in (f"/w/{i}-0.parquet", f"/w/{i}-1.parquet")
        } & set(json.loads(params["windows_json"]) + json.loads(params["eval_json"]))
        view = await t.run(run_id)
        assert view is not None and view["train_examples"] == 2700
        assert view["eval_examples"] == 900
        assert all(p["labelled"] == 900 for p in view["labels"].values()), view["labels"]

    asyncio.run(go())


def test_drift_starts_one_run_even_when_redelivered(redis_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        backend = ScriptedBackend()
        flink = ("--runner=FlinkRunner", "--flink_master=flink:8081")
        t, out = await make(redis_url, tmp_path, backend, f"m-{tmp_path.name}", beam_args=flink)
        for v in [validation(0, "ok"), validation(1, "drift"), validation(2, "drift")]:
            await t.on_validation(v)
        # Redelivery of the last validation, and a second trigger instance seeing it.
        assert await t.on_validation(validation(2, "drift")) is None
        t2, out2 = await make(redis_url, tmp_path, backend, f"m-{tmp_path.name}")
        assert await t2.on_validation(validation(2, "drift")) is None
        await asyncio.gather(*t.followers.values())
        assert len(backend.submitted) == 1
        run_id, params = backend.submitted[0]
        assert json.loads(params["windows_json"]) == [
            "/w/0-0.parquet",
            "/w/0-1.parquet",
            "/w/1-0.parquet",
            "/w/1-1.parquet",
        ]
        assert json.loads(params["eval_json"]) == ["/w/2-0.parquet", "/w/2-1.parquet"]
        # The trigger's Beam options go to the run's transform and evaluation steps.
        assert json.loads(params["beam_args_json"]) == list(flink)
        # The run reads its own copy of the module and schema (lineage; a KFP pod
        # cannot read the trigger's disk).
        module = ROOT / "examples/taxi/model.py"
        assert params["module_path"] == f"{params['run_dir']}/inputs/model.py"
        assert Path(params["module_path"]).read_bytes() == module.read_bytes()
        assert Path(params["schema_path"]).read_bytes() == TAXI_SCHEMA.read_bytes()
        view = await t.run(run_id)
        assert view is not None
        assert view["module_sha256"] == hashlib.sha256(module.read_bytes()).hexdigest()
        states = [e.state for e in out if isinstance(e, TrainingRun)]
        assert states == ["submitted", "running", "succeeded"]
        cands = [e for e in out if isinstance(e, ModelCandidate)]
        assert len(cands) == 1 and cands[0].run_id == run_id and cands[0].blessed
        c = cands[0]
        assert c.windows == ["win-0-p0", "win-0-p1", "win-1-p0", "win-1-p1"]
        assert c.eval_windows == ["win-2-p0", "win-2-p1"] and c.eval_window == "win-2-p1"
        assert c.train_examples == 2000 and c.eval_examples == 1000
        assert c.metrics.slices[0].slice == "payment_type=Cash"
        assert c.trigger_evidence["per-2"] == ["payment_type drift linf 0.2 > 0.06"]
        decisions = await t.decisions()
        assert any(d["taken"] == "true" and d["trigger"] == "drift" for d in decisions)
        assert any(d["reason"].startswith("no policy fired") for d in decisions)
        view = await t.run(run_id)
        assert view is not None and view["train_examples"] == 2000
        assert view["eval_windows"] == ["win-2-p0", "win-2-p1"]
        state = await t.load_state()
        assert state.in_flight is None and state.last_success_at is not None
        assert out2 == []

    asyncio.run(go())


def test_failed_run_reports_component_and_log_tail(redis_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        t, out = await make(redis_url, tmp_path, ScriptedBackend(fail=True), f"f-{tmp_path.name}")
        for v in [validation(0, "ok"), validation(1, "drift"), validation(2, "drift")]:
            await t.on_validation(v)
        await asyncio.gather(*t.followers.values())
        failed = [e for e in out if isinstance(e, TrainingRun) and e.state == "failed"]
        assert len(failed) == 1 and failed[0].failed_component == "transform"
        assert "ValueError: boom" in (failed[0].log_tail or "")
        assert not [e for e in out if isinstance(e, ModelCandidate)]
        # The run's view (the console's runs page) carries the same error.
        view = await t.run(failed[0].run_id)
        assert view is not None and view["failed_component"] == "transform"
        assert "ValueError: boom" in view["error"]

    asyncio.run(go())


def test_blocking_window_never_trains_and_manual_request(redis_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        backend = ScriptedBackend()
        t, _ = await make(redis_url, tmp_path, backend, f"b-{tmp_path.name}")
        for v in [
            validation(0, "ok"),
            validation(1, "ok"),
            validation(3, "drift"),
            validation(4, "drift", blocking=True),
        ]:
            await t.on_validation(v)
        assert backend.submitted == []
        d, run_id = await t.manual("operator asked")
        assert d.take and run_id
        await asyncio.gather(*t.followers.values())
        _, params = backend.submitted[0]
        assert "/w/4-" not in params["windows_json"] + params["eval_json"]

    asyncio.run(go())


def test_persistent_skew_retrains_after_a_rejection_and_after_a_promotion(
    redis_url: str, tmp_path: Path
) -> None:
    """The case users hit: a shift that persists must not leave the trigger silent."""

    async def go() -> None:
        backend = ScriptedBackend()
        model = f"p-{tmp_path.name}"
        t, out = await make(redis_url, tmp_path, backend, model)
        # A window of one partition is not a judged period: the trigger ignores it.
        single = validation(0, "skew").model_copy(update={"scope": "window"})
        assert await t.on_validation(single) is None
        for i, v in enumerate(["ok", "ok", "skew", "skew"]):
            await t.on_validation(validation(i, v))
        await asyncio.gather(*t.followers.values())
        assert len(backend.submitted) == 1
        cand = [e for e in out if isinstance(e, ModelCandidate)][-1]
        d = await t.on_validation(validation(4, "skew"))
        assert d is not None and not d.take and d.guard == "disarmed"
        assert f"candidate {cand.candidate_id} awaits a decision" in d.reason
        view = await t.state_view()
        assert not view["armed"] and view["consecutive_skew"] == 3 and view["budget_left"] == 3
        assert t.metrics.streak.labels("skew")._value.get() == 3  # type: ignore[attr-defined]
        assert t.metrics.armed._value.get() == 0  # type: ignore[attr-defined]
        assert t.metrics.blocked.labels("disarmed")._value.get() == 1  # type: ignore[attr-defined]
        # An operator rejects the candidate: the shift still holds, the next period retrains.
        rejected = PromotionEvent(
            id="p1",
            candidate_id=cand.candidate_id,
            model=model,
            decision="rejected",
            actor="alice",
            reason="worse on cards",
        )
        assert await t.on_promotion(rejected)
        assert not await t.on_promotion(rejected.model_copy(update={"model": "other"}))
        assert (await t.state_view())["armed"]
        await t.on_validation(validation(5, "skew"))
        await asyncio.gather(*t.followers.values())
        assert len(backend.submitted) == 2
        # The second candidate is promoted: a new episode; skew counts afresh.
        await t.redis.set(f"ctrain:serving:{model}:model_uri", b"/models/v2")
        d = await t.on_validation(validation(6, "skew"))
        assert d is not None and not d.take and d.reason.startswith("no policy fired")
        d = await t.on_validation(validation(7, "skew"))
        assert d is not None and d.take and d.trigger == "skew"
        await asyncio.gather(*t.followers.values())
        assert len(backend.submitted) == 3
        notes = [x["reason"] for x in await t.decisions(100)]
        assert any(n.startswith("new episode: /models/v2 serves") for n in notes)
        assert any(n.startswith("re-armed: candidate") for n in notes)

    asyncio.run(go())


def test_a_failed_run_is_retried_on_a_tick_without_new_data(redis_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        backend = ScriptedBackend(fail=True)
        t, _ = await make(redis_url, tmp_path, backend, f"t-{tmp_path.name}")
        assert await t.tick() is None  # nothing known yet
        for i, v in enumerate(["ok", "ok", "skew", "skew"]):
            await t.on_validation(validation(i, v))
        assert await t.tick() is None  # in flight
        await asyncio.gather(*t.followers.values())
        assert len(backend.submitted) == 1
        d = await t.tick()  # the shift still holds and the run failed: try again
        assert d is not None and d.take and d.trigger == "skew"
        await asyncio.gather(*t.followers.values())
        assert len(backend.submitted) == 2 and backend.submitted[0][0] != backend.submitted[1][0]
        assert (await t.state_view())["attempts"] == 2
        sources = [x["source"] for x in await t.decisions(10) if x["taken"] == "true"]
        assert sources[0] == "tick"

    asyncio.run(go())


def test_a_period_amended_by_a_late_window_is_not_decided_on_again(
    redis_url: str, tmp_path: Path
) -> None:
    async def go() -> None:
        backend = ScriptedBackend()
        t, _ = await make(redis_url, tmp_path, backend, f"am-{tmp_path.name}")
        await t.on_validation(validation(0, "ok"))
        await t.on_validation(validation(1, "drift"))
        first = validation(1, "drift")
        late = MemberWindow(window_id="win-1-p2", data_uri="/w/1-2.parquet", example_count=500)
        amended = first.model_copy(
            update={
                "id": "val-1b",
                "window_id": "per-1b",
                "example_count": 1500,
                "members": [*first.members, late],
            }
        )
        assert await t.on_validation(amended) is None
        state = await t.load_state()
        assert state.consecutive_drift == 1  # the same period: the streak did not step
        assert [w.window_id for w in state.windows] == ["per-0", "per-1b"]
        latest = (await t.decisions(1))[0]
        assert latest["source"] == "validation:per-1b" and "amended" in latest["reason"]
        await t.on_validation(validation(2, "drift"))  # the streak goes on from there
        await asyncio.gather(*t.followers.values())
        params = backend.submitted[0][1]
        assert "/w/1-2.parquet" in json.loads(params["windows_json"])  # trained on all of it

    asyncio.run(go())


def scored(i: int, auc: float, version: int, model: str) -> WindowScored:
    return WindowScored(
        id=f"score-{i}-{version}",
        model=model,
        version=version,
        window_id=f"per-{i}",
        stream="taxi",
        example_count=1000,
        labelled_count=1000,
        label_coverage=1.0,
        metrics=QualityMetrics(realized={"auc": auc}, estimated={"auc": auc + 0.01}),
    )


def test_live_quality_below_the_models_own_evaluation_starts_a_quality_run(
    redis_url: str, tmp_path: Path
) -> None:
    """The monitor's WindowScored events: the promoted version's live AUC falls below its
    own evaluation (0.9, from its candidate) by more than the margin for two windows."""

    async def go() -> None:
        backend = ScriptedBackend()
        model = f"q-{tmp_path.name}"
        t, out = await make(redis_url, tmp_path, backend, model)
        t.config = dataclasses.replace(
            t.config,
            policy=dataclasses.replace(t.config.policy, quality_metric="auc", quality_margin=0.05),
        )
        for i in range(2):
            await t.on_validation(validation(i, "ok"))
        await t.on_validation(validation(2, "drift"))
        await t.on_validation(validation(3, "drift"))
        await asyncio.gather(*t.followers.values())
        [cand] = [e for e in out if isinstance(e, ModelCandidate)]
        promoted = PromotionEvent(
            id="p",
            candidate_id=cand.candidate_id,
            model=model,
            decision="approved",
            actor="a",
            reason="ok",
            version=4,
        )
        assert await t.on_promotion(promoted)
        await t.redis.set(f"ctrain:serving:{model}:model_uri", b"/models/v4")
        state = await t.load_state()
        assert state.serving_version == 4 and state.serving_eval["auc"] == 0.9
        await t.on_validation(validation(4, "ok"))
        # Scores of the version it replaced do not count; a good window breaks nothing.
        assert await t.on_quality(scored(4, 0.5, 3, model)) is None
        assert (
            await t.on_quality(scored(3, 0.5, 4, model).model_copy(update={"role": "challenger"}))
            is None
        )
        d = await t.on_quality(scored(3, 0.88, 4, model))
        assert d is not None and not d.take
        d = await t.on_quality(scored(4, 0.84, 4, model))  # 0.84 < 0.9 - 0.05
        assert d is not None and not d.take and "no policy fired" in d.reason
        await t.on_validation(validation(5, "ok"))
        d = await t.on_quality(scored(5, 0.80, 4, model))
        assert d is not None and d.take and d.trigger == "quality"
        assert "worse than its own evaluation 0.9000" in d.reason
        assert await t.on_quality(scored(5, 0.80, 4, model)) is None  # redelivered
        await asyncio.gather(*t.followers.values())
        runs = [e for e in out if isinstance(e, TrainingRun) and e.state == "submitted"]
        assert [r.reason for r in runs] == ["drift", "quality"] and len(backend.submitted) == 2
        view = await t.state_view()
        assert view["serving_version"] == 4 and "realized auc 0.8000" in view["quality"]
        assert t.metrics.streak.labels("quality")._value.get() == 2  # type: ignore[attr-defined]
        entries = await t.decisions(50)
        assert any(e["source"] == "quality:per-5" and e["taken"] == "true" for e in entries)

    asyncio.run(go())


def test_the_submit_latency_bench_runs(redis_url: str, tmp_path: Path) -> None:
    """bench/trigger.py's latency part, short: every timed validation starts a run (it
    once stopped at its first event, the trigger deciding on periods only)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_trigger", ROOT / "bench/trigger.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    took = asyncio.run(bench.latency(3, redis_url, str(tmp_path)))
    assert len(took) == 3 and all(t > 0 for t in took)
