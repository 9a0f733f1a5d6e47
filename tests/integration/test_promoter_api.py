"""The approval API as a real process on a real broker and Redis.

Candidates arrive over Kafka. No model server runs here, so an approved
candidate's promotion waits at the serving step: an outage, said as such in
/healthz and the metrics, never a failed candidate. Promotion into a serving
model (and a serving pause during one) is covered by the end-to-end promoter test.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from shared import topics
from shared.events import CandidateMetrics, ModelCandidate, PromotionEvent, SliceMetrics
from shared.kafka import ensure_topics
from shared.settings import CommonSettings
from tests.integration.support import ingest_env, read_topic, start_service
from tests.poll import until

pytestmark = pytest.mark.integration
TOKENS = {
    "tok-viewer": {"identity": "vera", "role": "viewer"},
    "tok-alice": {"identity": "alice", "role": "approver"},
    "tok-bob": {"identity": "bob", "role": "approver"},
    "tok-root": {"identity": "root", "role": "admin"},
}


def H(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def cand(
    cid: str, model: str, blessed: bool = True, model_uri: str = "/nowhere/saved_model"
) -> ModelCandidate:
    return ModelCandidate(
        candidate_id=cid,
        model=model,
        run_id=f"run-{cid}",
        model_uri=model_uri,
        eval_uri="/nowhere/eval",
        blessed=blessed,
        failed_checks=[] if blessed else ["auc: change -0.2 below -0.01"],
        metrics=CandidateMetrics(
            overall={"auc": 0.8},
            slices=[SliceMetrics(slice="payment_type=Cash", metrics={"auc": 0.7})],
        ),
        baseline_metrics=CandidateMetrics(overall={"auc": 0.79}),
        windows=["w1", "w2"],
        eval_window="w3",
        reason="drift",
        trigger_evidence={"w2": ["payment_type drift linf 0.069 > 0.06"]},
    )


def send(kafka: str, *cs: ModelCandidate) -> None:
    async def go() -> None:
        p = AIOKafkaProducer(bootstrap_servers=kafka)
        await p.start()
        for c in cs:
            await p.send_and_wait(topics.CANDIDATES, c.to_bytes(), key=c.key)
        await p.stop()

    asyncio.run(go())


@pytest.mark.timeout(300)
def test_approval_api(kafka: str, redis_url: str, tmp_path: Path) -> None:
    asyncio.run(ensure_topics(CommonSettings(kafka_bootstrap=kafka, kafka_idempotent=False)))
    m = f"m{tmp_path.name[-6:]}"
    env = ingest_env(
        kafka,
        redis_url,
        tmp_path,
        CTRAIN_PROMOTER_TOKENS=json.dumps(TOKENS),
        CTRAIN_PROMOTER_TWO_APPROVERS=json.dumps([f"{m}-two"]),
        CTRAIN_SERVING_GRPC="127.0.0.1:1",  # nothing serves: an outage, said as such
        CTRAIN_SERVING_BASE=str(tmp_path / "serving"),
        CTRAIN_PROMOTER_AVAILABLE_TIMEOUT_S="2",
    )
    svc = start_service("promoter", env, tmp_path / "promoter.log")
    svc.wait_healthy(path="/livez")
    health = httpx.get(f"{svc.url}/healthz")
    assert health.status_code == 503 and "serving unreachable" in health.json()["reason"]
    url = svc.url
    saved = tmp_path / "saved_model"  # copied into the serving base before serving is asked
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"")
    send(
        kafka,
        cand("c-ok", m, model_uri=str(saved)),
        cand("c-bad", f"{m}-bad", blessed=False),
        cand("c-two", f"{m}-two"),
    )
    # The session's Redis may hold other tests' candidates: wait for these three.
    mine = {"c-ok", "c-bad", "c-two"}
    listed = until(
        lambda: (
            mine
            <= {
                c["candidate_id"]
                for c in httpx.get(f"{url}/v1/candidates", headers=H("tok-viewer")).json()[
                    "candidates"
                ]
            }
        )
    )
    assert listed

    # 401 / 403 / 404 / 422
    assert httpx.get(f"{url}/v1/candidates").status_code == 401
    assert httpx.get(f"{url}/v1/candidates", headers=H("tok-nope")).status_code == 401
    r = httpx.post(
        f"{url}/v1/candidates/c-ok/approve", json={"reason": "ok"}, headers=H("tok-viewer")
    )
    assert r.status_code == 403 and "approver" in r.json()["detail"]
    r = httpx.get(f"{url}/v1/candidates/c-missing", headers=H("tok-viewer"))
    assert r.status_code == 404 and "c-missing" in r.json()["detail"]
    r = httpx.post(f"{url}/v1/candidates/c-ok/approve", json={}, headers=H("tok-alice"))
    assert r.status_code == 422 and "reason" in r.text

    # the gate: unblessed is rejected with its failed checks; the blessed one waits
    bad = httpx.get(f"{url}/v1/candidates/c-bad", headers=H("tok-viewer")).json()
    assert bad["state"] == "rejected" and "auc" in bad["reason"]
    ok = httpx.get(f"{url}/v1/candidates/c-ok", headers=H("tok-viewer")).json()
    assert ok["state"] == "pending_approval"
    assert ok["metrics"]["overall"]["auc"] == {"candidate": 0.8, "baseline": 0.79}
    assert ok["lineage"]["windows"] == ["w1", "w2"] and ok["trigger_reason"] == "drift"
    assert ok["trigger_evidence"] == {"w2": ["payment_type drift linf 0.069 > 0.06"]}
    # Waiting for approval, it is offered to the monitor; what the monitor measured on
    # live data since its evaluation is shown beside stable.
    import redis as sync_redis

    from shared import keys

    r_ = sync_redis.Redis.from_url(redis_url)
    offered = json.loads(r_.hget(keys.challengers(m), "c-ok") or b"{}")
    assert offered["model_uri"] == str(saved)
    assert ok["live"]["summary"] == "not scored on live data yet"
    for i, (c, s) in enumerate(((0.95, 0.93), (0.96, 0.94))):
        entry = {"window_id": f"p{i}", "start": f"2014-0{i + 1}", "labelled": 500,
                 "challenger": {"auc": c}, "stable": {"auc": s}}  # fmt: skip
        r_.hset(keys.challenger_scores(m, "c-ok"), f"p{i}", json.dumps(entry))
    ok = httpx.get(f"{url}/v1/candidates/c-ok", headers=H("tok-viewer")).json()
    assert ok["live"]["summary"] == "on 2 windows since its evaluation: AUC 0.955 vs 0.935 (stable)"

    # only an admin overrides a rejection; a reject of a rejected candidate is 409
    r = httpx.post(
        f"{url}/v1/candidates/c-bad/approve", json={"reason": "x"}, headers=H("tok-alice")
    )
    assert r.status_code == 403
    r = httpx.post(
        f"{url}/v1/candidates/c-bad/reject", json={"reason": "x"}, headers=H("tok-alice")
    )
    assert r.status_code == 409 and "rejected" in r.json()["detail"]

    # two approvers: the same identity twice is refused, a second identity approves
    r = httpx.post(
        f"{url}/v1/candidates/c-two/approve", json={"reason": "looks good"}, headers=H("tok-alice")
    )
    assert r.status_code == 200 and r.json()["state"] == "pending_approval"
    r = httpx.post(
        f"{url}/v1/candidates/c-two/approve", json={"reason": "again"}, headers=H("tok-alice")
    )
    assert r.status_code == 409 and "already approved" in r.json()["detail"]
    r = httpx.post(
        f"{url}/v1/candidates/c-two/approve", json={"reason": "me too"}, headers=H("tok-bob")
    )
    assert r.status_code == 200 and r.json()["state"] in ("approved", "promoting", "failed")

    # with nothing serving, the promotion waits: an outage, not a failure of the model
    r = httpx.post(
        f"{url}/v1/candidates/c-ok/approve", json={"reason": "ship it"}, headers=H("tok-alice")
    )
    assert r.status_code == 200
    waiting = until(
        lambda: "ctrain_promoter_promotion_outage 1.0" in httpx.get(f"{url}/metrics").text
    )
    assert waiting
    assert "ctrain_promoter_serving_reachable 0.0" in httpx.get(f"{url}/metrics").text
    ok = httpx.get(f"{url}/v1/candidates/c-ok", headers=H("tok-viewer")).json()
    assert ok["state"] == "promoting"
    events = [
        e
        for e in asyncio.run(read_topic(kafka, topics.PROMOTIONS))
        if isinstance(e, PromotionEvent)
    ]
    assert not [e for e in events if e.candidate_id == "c-ok"]
    assert {e.decision for e in events if e.candidate_id == "c-bad"} >= {"rejected"}

    # a newer candidate supersedes an open one of the same model
    send(kafka, cand("c-new2", f"{m}-sup"))
    until(
        lambda: httpx.get(f"{url}/v1/candidates/c-new2", headers=H("tok-viewer")).status_code == 200
    )
    send(kafka, cand("c-new3", f"{m}-sup"))
    until(
        lambda: (
            httpx.get(f"{url}/v1/candidates/c-new2", headers=H("tok-viewer")).json()["state"]
            == "superseded"
        )
    )

    audit = httpx.get(f"{url}/v1/audit", headers=H("tok-viewer")).json()["entries"]
    acts = {(e["candidate_id"], e["actor"], e["before"], e["after"]) for e in audit}
    assert ("c-two", "bob", "pending_approval", "approved") in acts
    assert ("c-bad", "gate", "new", "rejected") in acts
    assert httpx.get(f"{url}/v1/models/nope", headers=H("tok-viewer")).status_code == 404
    assert "ctrain_promoter_promotions_total" in httpx.get(f"{url}/metrics").text
    svc.proc.send_signal(signal.SIGTERM)
    assert svc.proc.wait(timeout=60) == 0


def test_ids_by_unique_prefix_and_approvers_per_model(
    kafka: str, redis_url: str, tmp_path: Path
) -> None:
    """A unique prefix names a candidate (an ambiguous one says which it could be), and
    the models file's approvers are the only identities (besides an admin) that decide."""
    from tests.conftest import ROOT

    asyncio.run(ensure_topics(CommonSettings(kafka_bootstrap=kafka, kafka_idempotent=False)))
    u = tmp_path.name[-6:]
    m = f"m{u}"
    taxi = ROOT / "examples" / "taxi"
    config = tmp_path / "ctrain.yaml"
    config.write_text(
        f"models:\n  {m}:\n    stream: s{u}\n    schema: {taxi / 'data/schema.pbtxt'}\n"
        f"    module: {taxi / 'model.py'}\n    promotion: {{policy: manual, approvers: [alice]}}\n"
    )
    env = ingest_env(kafka, redis_url, tmp_path, CTRAIN_CONFIG=str(config),
                     CTRAIN_PROMOTER_TOKENS=json.dumps(TOKENS),
                     CTRAIN_SERVING_GRPC="127.0.0.1:1", CTRAIN_PROMOTER_AVAILABLE_TIMEOUT_S="2",
                     CTRAIN_SERVING_BASE=str(tmp_path / "serving"))  # fmt: skip
    svc = start_service("promoter", env, tmp_path / "promoter.log")
    svc.wait_healthy(path="/livez")
    url = svc.url
    ids = [f"cand-{u}-aaa1", f"cand-{u}-aaa2", f"cand-{u}-bbb"]
    send(kafka, *(cand(i, m) for i in ids))
    until(lambda: httpx.get(f"{url}/v1/candidates/{ids[2]}", headers=H("tok-viewer")).is_success)
    for i in ids[:2]:
        until(lambda i=i: httpx.get(f"{url}/v1/candidates/{i}", headers=H("tok-viewer")).is_success)

    r = httpx.get(f"{url}/v1/candidates/cand-{u}-b", headers=H("tok-viewer"))
    assert r.status_code == 200 and r.json()["candidate_id"] == ids[2]
    r = httpx.get(f"{url}/v1/candidates/cand-{u}-aaa", headers=H("tok-viewer"))
    assert r.status_code == 400 and ids[0] in r.json()["detail"] and ids[1] in r.json()["detail"]
    assert httpx.get(f"{url}/v1/candidates/cand-{u}-zz", headers=H("tok-viewer")).status_code == 404

    # bob is an approver, but not of this model; alice is, and a prefix is enough
    r = httpx.post(f"{url}/v1/candidates/cand-{u}-b/reject", json={"reason": "x"},
                   headers=H("tok-bob"))  # fmt: skip
    assert r.status_code == 403 and "not an approver of model" in r.json()["detail"]
    r = httpx.post(f"{url}/v1/candidates/cand-{u}-b/reject", json={"reason": "no"},
                   headers=H("tok-alice"))  # fmt: skip
    assert r.status_code == 200 and r.json()["candidate_id"] == ids[2]
    assert r.json()["state"] == "rejected"
