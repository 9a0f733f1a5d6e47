"""Promotion end to end: a real taxi SavedModel, the embedded TF-Serving stand-in,
a real broker and Redis, the promoter as a process.

candidate -> pending_approval -> approve -> version directory -> AVAILABLE ->
stable label -> predictions through the label over gRPC and REST; a second
candidate, rollback; a rejection; SIGKILL between copy and label.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from pyarrow import csv

from ctrain.devstack import modelserver_process
from ctrain.loop import predict_stable
from shared import topics
from shared.events import CandidateMetrics, ModelCandidate
from shared.kafka import ensure_topics
from shared.schema import example_spec, load_schema
from shared.settings import CommonSettings
from shared.shard import ShardWriter, arrow_schema
from tests.conftest import ROOT, TAXI_CSV, TAXI_SCHEMA
from tests.integration.support import free_port, ingest_env, start_service
from tests.poll import until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
MODULE = ROOT / "examples" / "taxi" / "model.py"
TOKENS = {
    "tok-op": {"identity": "operator", "role": "approver"},
    "tok-admin": {"identity": "root", "role": "admin"},
}


def H(tok: str = "tok-op") -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


@pytest.fixture(scope="module")
def taxi_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Train a small real taxi model once, with the pipeline's own steps."""
    from services.trigger import steps

    d = tmp_path_factory.mktemp("model")
    schema = arrow_schema(example_spec(load_schema(TAXI_SCHEMA)))
    t = csv.read_csv(TAXI_CSV, convert_options=csv.ConvertOptions(strings_can_be_null=True))
    t = t.select(schema.names).cast(schema)
    paths = {}
    for name, part in (("train", t.slice(0, 6000)), ("eval", t.slice(6000, 1500))):
        p = d / name / "data.parquet"
        p.parent.mkdir()
        w = ShardWriter(schema, str(p))
        w.add(part.combine_chunks().to_batches()[0])
        w.finish()
        paths[name] = str(p)
    g = steps.gather([paths["train"]], [paths["eval"]], str(d / "gather"))
    tr = steps.transform(
        str(g["train"]), str(g["eval"]), str(TAXI_SCHEMA), str(MODULE), str(d / "tf")
    )
    model = steps.train(tr, str(MODULE), str(d / "model"), epochs=1)
    return {"model": str(model["model"]), "eval": paths["eval"]}


def candidate(cid: str, model_uri: str, eval_uri: str, blessed: bool = True) -> ModelCandidate:
    return ModelCandidate(
        candidate_id=cid,
        model="taxi",
        run_id=f"run-{cid}",
        model_uri=model_uri,
        eval_uri="e",
        blessed=blessed,
        failed_checks=[] if blessed else ["auc below 0.6"],
        metrics=CandidateMetrics(overall={"auc": 0.8}),
        windows=[f"w-{cid}"],
        eval_window="we",
        eval_data_uri=eval_uri,
    )


def send(kafka: str, c: ModelCandidate) -> None:
    async def go() -> None:
        p = AIOKafkaProducer(bootstrap_servers=kafka)
        await p.start()
        await p.send_and_wait(topics.CANDIDATES, c.to_bytes(), key=c.key)
        await p.stop()

    asyncio.run(go())


def state_of(url: str, cid: str) -> str:
    r = httpx.get(f"{url}/v1/candidates/{cid}", headers=H(), timeout=10)
    return str(r.json().get("state")) if r.status_code == 200 else ""


@pytest.mark.timeout(900)
def test_approve_serve_rollback_reject_and_crash(
    kafka: str, empty_redis_url: str, tmp_path: Path, taxi_model: dict[str, str]
) -> None:
    from shared.shard import read_shard
    from shared.tfexample import rows_to_examples

    redis_url = empty_redis_url  # a promoter reads every layout an earlier test left

    asyncio.run(ensure_topics(CommonSettings(kafka_bootstrap=kafka, kafka_idempotent=False)))
    grpc_port, rest_port = free_port(), free_port()
    config = tmp_path / "models.config"
    config.write_text("model_config_list {\n}\n")
    serving_base = tmp_path / "serving"
    serving_base.mkdir()
    ms = modelserver_process(config, grpc_port, rest_port, tmp_path / "ms.log")

    rest = f"http://127.0.0.1:{rest_port}"
    try:
        env = ingest_env(
            kafka,
            redis_url,
            tmp_path,
            CTRAIN_PROMOTER_TOKENS=json.dumps(TOKENS),
            CTRAIN_SERVING_GRPC=f"127.0.0.1:{grpc_port}",
            CTRAIN_SERVING_REST=f"127.0.0.1:{rest_port}",
            CTRAIN_SERVING_BASE=str(serving_base),
        )
        promoter = start_service("promoter", env, tmp_path / "promoter.log")
        promoter.wait_healthy()
        url = promoter.url
        examples = rows_to_examples(read_shard(taxi_model["eval"]).slice(0, 3))

        # 1: pending -> approve -> serving as version 1 under "stable"
        send(kafka, candidate("c1", taxi_model["model"], taxi_model["eval"]))
        until(lambda: state_of(url, "c1") == "pending_approval", what="c1 pending")
        r = httpx.post(f"{url}/v1/candidates/c1/approve", json={"reason": "good"}, headers=H())
        assert r.status_code == 200, r.text
        until(lambda: state_of(url, "c1") == "serving", what="c1 serving")
        assert (serving_base / "taxi" / "1" / "saved_model.pb").exists()
        view = httpx.get(f"{url}/v1/models/taxi", headers=H()).json()
        assert view["labels"] == {"stable": 1} and view["serving_reports"]["1"] == "AVAILABLE"
        p1 = predict_stable(f"127.0.0.1:{grpc_port}", "taxi", examples)[1]
        assert len(p1) == 3 and all(0 <= x <= 1 for x in p1)
        rr = httpx.post(
            f"{rest}/v1/models/taxi/labels/stable:predict",
            json={
                "instances": [{"examples": {"b64": base64.b64encode(e).decode()}} for e in examples]
            },
            timeout=30,
        )
        assert rr.status_code == 200, rr.text
        assert len(rr.json()["predictions"]) == 3

        # 2: a second candidate; SIGKILL the promoter once its version directory appears
        send(kafka, candidate("c2", taxi_model["model"], taxi_model["eval"]))
        until(lambda: state_of(url, "c2") == "pending_approval", what="c2 pending")
        httpx.post(f"{url}/v1/candidates/c2/approve", json={"reason": "newer"}, headers=H())
        until(lambda: (serving_base / "taxi" / "2").exists(), 60, "version 2 copied")
        promoter.proc.send_signal(signal.SIGKILL)
        promoter.proc.wait()
        labels = json.loads(
            httpx.get(f"{rest}/v1/models/taxi/labels/stable", timeout=10).text or "{}"
        )
        assert labels  # stable still answers (version 1 or 2, both on disk)
        promoter = start_service("promoter", env, tmp_path / "promoter.log")
        promoter.wait_healthy()
        url = promoter.url
        final = until(
            lambda: state_of(url, "c2") in ("serving", "failed") and state_of(url, "c2"),
            what="c2 resolved",
        )
        view = httpx.get(f"{url}/v1/models/taxi", headers=H()).json()
        stable = view["labels"]["stable"]
        assert (
            serving_base / "taxi" / str(stable)
        ).is_dir()  # stable never names a missing version
        if final == "serving":
            assert view["labels"] == {"stable": 2, "previous": 1}
            assert state_of(url, "c1") == "superseded"

            # 3: rollback to the previous version
            r = httpx.post(
                f"{url}/v1/models/taxi/rollback", json={"reason": "regression"}, headers=H()
            )
            assert r.status_code == 200, r.text
            assert httpx.get(f"{url}/v1/models/taxi", headers=H()).json()["labels"]["stable"] == 1
            assert state_of(url, "c2") == "rolled_back" and state_of(url, "c1") == "serving"

        # 4: an unblessed candidate is rejected with its reasons
        send(kafka, candidate("c3", taxi_model["model"], taxi_model["eval"], blessed=False))
        until(lambda: state_of(url, "c3") == "rejected", what="c3 rejected")
        body = httpx.get(f"{url}/v1/candidates/c3", headers=H()).json()
        assert "auc below 0.6" in body["reason"]

        # 5: serving paused (SIGSTOP) during a promotion: an outage, said as such, not
        # a failed candidate; the promotion resumes once serving answers again.
        send(kafka, candidate("c4", taxi_model["model"], taxi_model["eval"]))
        until(lambda: state_of(url, "c4") == "pending_approval", what="c4 pending")
        ms.send_signal(signal.SIGSTOP)
        try:
            r = httpx.post(f"{url}/v1/candidates/c4/approve", json={"reason": "x"}, headers=H())
            assert r.status_code == 200, r.text
            metrics = f"{url}/metrics"
            until(
                lambda: "ctrain_promoter_promotion_outage 1.0" in httpx.get(metrics).text,
                60,
                "the promotion says it waits on an outage",
            )
            health = httpx.get(f"{url}/healthz", timeout=10)
            assert health.status_code == 503 and "serving unreachable" in health.json()["reason"]
            assert state_of(url, "c4") == "promoting"
            view = httpx.get(f"{url}/v1/models/taxi", headers=H(), timeout=30).json()
            assert view["serving_reachable"] is False and view["serving_reports"] is None
        finally:
            ms.send_signal(signal.SIGCONT)
        until(lambda: state_of(url, "c4") == "serving", 180, "c4 served once serving is back")
        view = httpx.get(f"{url}/v1/models/taxi", headers=H(), timeout=30).json()
        stable = view["labels"]["stable"]
        assert view["candidates"][str(stable)] == "c4" and view["serving_reachable"] is True
        assert view["serving_reports"][str(stable)] == "AVAILABLE"  # the label never ran ahead
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        assert "ctrain_promoter_promotion_outage 0.0" in httpx.get(f"{url}/metrics").text
        promoter.proc.send_signal(signal.SIGTERM)
        assert promoter.proc.wait(timeout=60) == 0
    finally:
        ms.send_signal(signal.SIGTERM)
        ms.wait(timeout=30)
