"""A real Prometheus (Debian's `prometheus` binary) scrapes a running ctrain dev stack
(`ctrain dev up`), loads deploy/prometheus/rules.yml and evaluates every rule; every
dashboard query is accepted by its PromQL engine. Readiness by probing only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.deploy.support import DASHBOARDS, ROOT, RULES
from tests.poll import until

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")

# Series every running service exports from its start (unlabelled families).
KEY_SERIES = {
    "ingest": [
        "ctrain_ingest_examples_accepted_total",
        "ctrain_ingest_open_windows",
        "ctrain_ingest_window_examples_count",
    ],
    "validator": ["ctrain_validator_rows_total", "ctrain_validator_processing_seconds_count"],
    "trigger": ["ctrain_trigger_runs_in_flight", "ctrain_trigger_run_duration_seconds_count"],
    "monitor": ["ctrain_monitor_timer_failures_total"],
}


def ctrain(args: list[str], env: dict[str, str], timeout: float) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "ctrain.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state_dir = tmp_path_factory.mktemp("devstack")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTRAIN_")}
    env["CTRAIN_DEV_STATE_DIR"] = str(state_dir)
    try:
        ctrain(["dev", "up"], env, timeout=600)
        yield json.loads((state_dir / "dev.json").read_text())
    finally:
        ctrain(["dev", "down"], env, timeout=180)


@pytest.fixture(scope="module")
def prometheus(
    dev_stack: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (Debian package `prometheus`)")
    from ctrain.devstack import free_port

    d = tmp_path_factory.mktemp("prometheus")
    services = {
        p["name"]: p["address"] for p in dev_stack["procs"] if p["address"].startswith("http")
    }
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": f"ctrain-{name}",
                "static_configs": [{"targets": [urllib.parse.urlsplit(addr).netloc]}],
            }
            for name, addr in sorted(services.items())
        ],
    }
    (d / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(d / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={d / 'prometheus.yml'}",
            f"--storage.tsdb.path={d / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        until(
            lambda: _get(url, "/-/ready", raw=True) and proc.poll() is None,
            60,
            "prometheus ready",
            ignore=(OSError,),
        )
        yield url
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _get(base: str, path: str, raw: bool = False, **params: str) -> Any:
    q = f"?{urllib.parse.urlencode(params)}" if params else ""
    try:
        with urllib.request.urlopen(base + path + q, timeout=5) as r:
            body = r.read()
    except urllib.error.HTTPError as e:
        if raw:
            return None
        body = e.read()
    return body if raw else json.loads(body)


def query(base: str, expr: str) -> list[dict[str, Any]]:
    r = _get(base, "/api/v1/query", query=expr)
    assert r["status"] == "success", (expr, r)
    return r["data"]["result"]


def test_every_service_is_scraped_with_its_key_series(
    prometheus: str, dev_stack: dict[str, Any]
) -> None:
    services = {p["name"] for p in dev_stack["procs"] if p["address"].startswith("http")}
    assert {"ingest", "validator", "trigger"} <= services

    def all_up() -> bool:
        targets = _get(prometheus, "/api/v1/targets")["data"]["activeTargets"]
        return len(targets) == len(services) and all(t["health"] == "up" for t in targets)

    until(all_up, 60, "every target up", ignore=(OSError,))
    for name in services:
        (up,) = query(prometheus, f'up{{job="ctrain-{name}"}}')
        assert up["value"][1] == "1"
        for series in KEY_SERIES.get(name, []):
            assert query(prometheus, f'{series}{{job="ctrain-{name}"}}'), series


def test_rules_load_and_evaluate(prometheus: str) -> None:
    want = yaml.safe_load(RULES.read_text())["groups"]
    n_rules = sum(len(g["rules"]) for g in want)

    def evaluated() -> list[dict[str, Any]] | None:
        groups = _get(prometheus, "/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        done = len(rules) == n_rules and all(
            not r["lastEvaluation"].startswith("0001-") for r in rules
        )
        return groups if done else None

    groups = until(evaluated, 60, "every rule evaluated", ignore=(OSError,))
    assert sorted(g["name"] for g in groups) == sorted(g["name"] for g in want)
    for g in groups:
        for r in g["rules"]:
            assert r["health"] == "ok", (r["name"], r.get("lastError"))
    # the stack is up and idle: nothing about ingest, drift or training fires
    firing = {
        a["labels"]["alertname"] for a in _get(prometheus, "/api/v1/alerts")["data"]["alerts"]
    }
    assert not firing & {
        "CtrainIngestStalled",
        "CtrainTrainingRunsFailing",
        "CtrainDeadLetterRateHigh",
    }


def test_dashboard_queries_are_valid_promql(prometheus: str) -> None:
    checked = 0
    for f in sorted(DASHBOARDS.glob("*.json")):
        d = json.loads(f.read_text())
        exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
        for e in exprs:
            e = e.replace("$__rate_interval", "1m").replace("$__interval", "15s")
            for v in d["templating"]["list"]:
                e = e.replace(f"${v['name']}", ".*")
            query(prometheus, e)  # asserts status == success (parses and evaluates)
            checked += 1
    assert checked >= 10, f"only {checked} dashboard queries found"
