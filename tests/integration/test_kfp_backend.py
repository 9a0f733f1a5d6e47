"""The ``kfp`` backend against a local server speaking the KFP v2beta1 REST API.

The server implements the endpoints ``kfp.Client`` calls (healthz, experiments,
runs create/list/get) and records what it was sent, so the test can assert the
submitted pipeline spec and parameters, idempotent re-submission by display
name, and the mapping of KFP states and failed tasks.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from services.trigger.backends import KfpBackend
from services.trigger.pipeline import STEPS, compile_pipeline
from tests.integration.support import free_port

pytestmark = pytest.mark.integration


class FakeKfp:
    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.created: list[dict[str, Any]] = []
        self.fail_task: str | None = None
        self.app = FastAPI()
        a = self.app

        @a.get("/apis/v2beta1/healthz")
        async def healthz() -> dict[str, Any]:
            return {"multi_user": False}

        @a.get("/apis/v2beta1/experiments")
        async def list_experiments() -> dict[str, Any]:
            return {"experiments": [{"experiment_id": "exp-1", "display_name": "ctrain"}]}

        @a.post("/apis/v2beta1/runs")
        async def create_run(request: Request) -> dict[str, Any]:
            body = await request.json()
            self.created.append(body)
            rid = f"kfp-run-{len(self.created)}"
            self.runs[rid] = {
                "run_id": rid,
                "display_name": body["display_name"],
                "experiment_id": body.get("experiment_id"),
                "state": "PENDING",
                "polls": 0,
            }
            return self._view(rid)

        @a.get("/apis/v2beta1/runs")
        async def list_runs(filter: str = "") -> dict[str, Any]:
            wanted = None
            if filter:
                preds = json.loads(filter).get("predicates", [])
                wanted = next(
                    (p.get("string_value") for p in preds if p["key"] == "display_name"), None
                )
            hits = [
                self._view(r) for r, v in self.runs.items() if wanted in (None, v["display_name"])
            ]
            return {"runs": hits, "total_size": len(hits)}

        @a.get("/apis/v2beta1/runs/{rid}")
        async def get_run(rid: str) -> dict[str, Any]:
            run = self.runs[rid]
            run["polls"] += 1
            if run["polls"] >= 3:
                run["state"] = "FAILED" if self.fail_task else "SUCCEEDED"
            elif run["polls"] >= 1:
                run["state"] = "RUNNING"
            return self._view(rid)

    def _view(self, rid: str) -> dict[str, Any]:
        r = self.runs[rid]
        view: dict[str, Any] = {
            "run_id": rid,
            "display_name": r["display_name"],
            "experiment_id": r["experiment_id"],
            "state": r["state"],
        }
        if r["state"] == "FAILED":
            view["error"] = {"message": f"task {self.fail_task} exited 1"}
            view["run_details"] = {
                "task_details": [
                    {"display_name": "gather", "state": "SUCCEEDED"},
                    {"display_name": self.fail_task, "state": "FAILED"},
                ]
            }
        return view


@pytest.fixture
def fake_kfp() -> Iterator[tuple[FakeKfp, str]]:
    fake = FakeKfp()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(fake.app, host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/apis/v2beta1/healthz", timeout=0.5).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)  # probe interval
    yield fake, url
    server.should_exit = True
    thread.join(timeout=10)


PARAMS = {
    "run_dir": "/artifacts/runs/run-x",
    "windows_json": '["/a/w1.parquet", "/a/w2.parquet"]',
    "eval_uri": "/a/w3.parquet",
    "schema_path": "/a/schema.pbtxt",
    "module_path": "/a/model.py",
    "model_dir": "/a/models/taxi/cand-1",
    "baseline_model": "",
    "epochs": 2,
}


def test_submit_spec_params_idempotency_and_success(
    fake_kfp: tuple[FakeKfp, str], tmp_path: Path
) -> None:
    fake, url = fake_kfp
    package = compile_pipeline(str(tmp_path / "pipeline.yaml"))
    backend = KfpBackend(url, package, poll_s=0.05)
    rid = asyncio.run(backend.submit("run-x", PARAMS))
    again = asyncio.run(backend.submit("run-x", PARAMS))
    assert rid == again == "kfp-run-1"
    assert len(fake.created) == 1  # found by display name, not submitted twice
    body = fake.created[0]
    assert body["display_name"] == "run-x" and body["experiment_id"] == "exp-1"
    spec = body["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "ctrain-continuous-training"
    assert {f"exec-{s}" for s in STEPS} == set(spec["deploymentSpec"]["executors"])
    params = body["runtime_config"]["parameters"]
    assert params["windows_json"] == PARAMS["windows_json"] and params["epochs"] == 2
    outcome = asyncio.run(backend.wait("run-x", rid, PARAMS["run_dir"]))
    assert outcome.state == "succeeded"


def test_failed_run_names_the_failing_component(
    fake_kfp: tuple[FakeKfp, str], tmp_path: Path
) -> None:
    fake, url = fake_kfp
    fake.fail_task = "train"
    backend = KfpBackend(url, compile_pipeline(str(tmp_path / "p.yaml")), poll_s=0.05)
    rid = asyncio.run(backend.submit("run-y", PARAMS))
    outcome = asyncio.run(backend.wait("run-y", rid, PARAMS["run_dir"]))
    assert outcome.state == "failed"
    assert outcome.failed_component == "train"
    assert outcome.log_tail and "train" in outcome.log_tail
