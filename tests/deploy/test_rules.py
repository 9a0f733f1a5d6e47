"""Alert rules (promtool check + a unit test per alert) and dashboards: every metric
they name exists in the services' code, in TF Serving, or on the list of metrics the
services must add (support.PENDING_METRICS)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from tests.deploy.support import (
    DASHBOARDS,
    PENDING_METRICS,
    ROOT,
    RULES,
    TF_SERVING_METRICS,
)

pytestmark = pytest.mark.unit

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package `prometheus`)"
)
UNIT_TESTS = Path(__file__).parent / "promtool" / "rules_test.yml"


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in rules() if "alert" in r}


@needs_promtool
def test_promtool_check_rules() -> None:
    out = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_promtool_unit_tests(tmp_path: Path) -> None:
    """rules_test.yml spells out each alert's summary; the static description is copied
    from rules.yml here, so the test file does not restate prose."""
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    tests["rule_files"] = [str(RULES)]
    desc = {name: a["annotations"]["description"] for name, a in alerts().items()}
    for t in tests["tests"]:
        for case in t.get("alert_rule_test", []):
            for exp in case.get("exp_alerts") or []:
                exp.setdefault("exp_annotations", {})["description"] = desc[case["alertname"]]
    f = tmp_path / "rules_test.yml"
    f.write_text(yaml.safe_dump(tests))
    out = subprocess.run([str(PROMTOOL), "test", "rules", str(f)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_firing_unit_test() -> None:
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fired = {
        c["alertname"] for t in tests for c in t.get("alert_rule_test", []) if c.get("exp_alerts")
    }
    assert set(alerts()) - fired == set()
    for name, a in alerts().items():
        assert a["labels"]["severity"] in {"warning", "critical"}, name
        assert "{{" not in a["annotations"]["description"], f"{name}: keep descriptions static"
        assert a["annotations"]["summary"], name


# ---------------------------------------------------------------- metric names
def exported_metrics() -> set[str]:
    """Sample names the services' code registers (as Prometheus will see them)."""
    from services.ingest.metrics import IngestMetrics
    from services.monitor.metrics import MonitorMetrics
    from services.promoter.metrics import PromoterMetrics
    from services.trigger.metrics import TriggerMetrics
    from services.validator.metrics import ValidatorMetrics

    reg = CollectorRegistry()
    IngestMetrics(reg)
    ValidatorMetrics(reg)
    TriggerMetrics(reg)
    PromoterMetrics(reg)
    MonitorMetrics(reg)
    names: set[str] = set()
    for fam in reg.collect():
        names |= _sample_names(fam.name, fam.type)
    # metrics created inline (the promoter's app): Counter/Gauge/Histogram("name", ...)
    for py in (ROOT / "services").rglob("*.py"):
        for kind, name in re.findall(
            r'\b(Counter|Gauge|Histogram)\(\s*"(ctrain_\w+)"', py.read_text()
        ):
            names |= _sample_names(name.removesuffix("_total"), kind.lower())
    return names


def _sample_names(name: str, kind: str) -> set[str]:
    if kind == "counter":
        return {name + "_total"}
    if kind == "histogram":
        return {name + s for s in ("_bucket", "_sum", "_count")}
    return {name}


def pending_metrics() -> set[str]:
    out: set[str] = set()
    for name, (kind, _) in PENDING_METRICS.items():
        out |= _sample_names(name.removesuffix("_total"), kind)
    return out


METRIC = re.compile(r"(?<![\w:])((?:ctrain_|:tensorflow:)[A-Za-z0-9_:]+)")


def dashboard_exprs() -> dict[str, list[str]]:
    out = {}
    for f in sorted(DASHBOARDS.glob("*.json")):
        d = json.loads(f.read_text())
        exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
        exprs += [v["query"]["query"] for v in d["templating"]["list"]]
        out[f.name] = exprs
    return out


def test_rules_and_dashboards_use_real_metric_names() -> None:
    known = exported_metrics() | pending_metrics() | TF_SERVING_METRICS
    assert {"ctrain_ingest_windows_closed_total", "ctrain_promoter_promotions_total"} <= known
    used: dict[str, set[str]] = {}
    for r in rules():
        used.setdefault("rules.yml", set()).update(METRIC.findall(r["expr"]))
    for f, exprs in dashboard_exprs().items():
        for e in exprs:
            used.setdefault(f, set()).update(METRIC.findall(e))
    unknown = {f: names - known for f, names in used.items() if names - known}
    assert not unknown, f"metrics nobody exports: {unknown}"
    # pending metrics named in rules appear in the pending list with their labels
    for r in rules():
        for m in METRIC.findall(r["expr"]):
            if m in pending_metrics() - exported_metrics():
                assert (
                    m in PENDING_METRICS
                    or re.sub(r"_(bucket|sum|count)$", "", m) in PENDING_METRICS
                )


def test_recording_rules_feed_the_dashboards() -> None:
    records = {r["record"] for r in rules() if "record" in r}
    used = {
        m
        for exprs in dashboard_exprs().values()
        for e in exprs
        for m in re.findall(r"ctrain:\w+", e)
    }
    assert used <= records


# ---------------------------------------------------------------- dashboards
@pytest.mark.parametrize("path", sorted(DASHBOARDS.glob("*.json")), ids=lambda p: p.name)
def test_dashboard_is_provisionable(path: Path) -> None:
    d = json.loads(path.read_text())
    assert re.fullmatch(r"[a-z0-9-]{1,40}", d["uid"]) and d["title"].startswith("ctrain")
    assert d["schemaVersion"] >= 36
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "prometheus" and p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
        for var in re.findall(r"\$(\w+)", json.dumps(p)):
            assert var in {v["name"] for v in d["templating"]["list"]} | {
                "__rate_interval",
                "__interval",
            }, var
    prov = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert prov["datasources"][0]["uid"] == "prometheus"


def test_dashboards_cover_the_loop() -> None:
    titles = {json.loads(p.read_text())["uid"] for p in DASHBOARDS.glob("*.json")}
    assert titles == {
        "ctrain-loop",
        "ctrain-drift",
        "ctrain-training",
        "ctrain-promotion",
        "ctrain-serving",
    }
    text = " ".join(e for exprs in dashboard_exprs().values() for e in exprs)
    for needle in (
        "ctrain_ingest_examples_accepted_total",
        "ctrain_ingest_examples_rejected_total",
        "ctrain_validator_feature_distance",
        "ctrain_validator_feature_threshold",
        "ctrain_trigger_run_duration_seconds_bucket",
        "ctrain_promoter_promotions_total",
        ":tensorflow:serving:request_latency_bucket",
    ):
        assert needle in text, needle
