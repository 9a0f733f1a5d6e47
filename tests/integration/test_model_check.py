"""A broken model module or schema is reported before any run: by `ctrain model check`
and by the trigger, which refuses to start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ctrain import cli
from tests.conftest import ROOT, TAXI_CSV, TAXI_SCHEMA
from tests.integration.support import ingest_env, start_service

pytestmark = pytest.mark.integration
TAXI_MODULE = ROOT / "examples" / "taxi" / "model.py"


def test_the_trigger_refuses_to_start_on_a_broken_module(
    tmp_path: Path, redis_url: str, kafka: str
) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text(TAXI_MODULE.read_text().replace("def eval_config(", "def _eval_config("))
    env = ingest_env(kafka, redis_url, tmp_path, CTRAIN_TRIGGER_MODULE_PATH=str(broken),
                     CTRAIN_TRIGGER_MODEL="taxi")  # fmt: skip
    svc = start_service("trigger", env, tmp_path / "trigger.log")
    assert svc.proc.wait(timeout=120) == 2
    log = svc.log.read_text()
    assert "cannot start" in log and "it defines no eval_config" in log


def test_a_schema_tft_cannot_read_stops_the_trigger(
    tmp_path: Path, redis_url: str, kafka: str
) -> None:
    value_count = 'name: "company"\n  value_count {\n    min: 1\n    max: 1\n  }\n'
    assert value_count in TAXI_SCHEMA.read_text()
    text = TAXI_SCHEMA.read_text().replace(
        value_count, 'name: "company"\n  shape {\n    dim {\n      size: 1\n    }\n  }\n', 1
    )
    schema = tmp_path / "schema.pbtxt"
    schema.write_text(text)
    env = ingest_env(kafka, redis_url, tmp_path, CTRAIN_SCHEMA=str(schema),
                     CTRAIN_TRIGGER_MODULE_PATH=str(TAXI_MODULE), CTRAIN_TRIGGER_MODEL="taxi")  # fmt: skip
    svc = start_service("trigger", env, tmp_path / "trigger.log")
    assert svc.proc.wait(timeout=120) == 2
    assert "'company' has a fixed shape but may be missing" in svc.log.read_text()


def test_model_check_names_each_problem_and_its_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("LABEL_KEY = 1\ndef preprocessing_fn(a, b): return a\n")
    assert cli.main(["model", "check", str(broken), "--schema", str(TAXI_SCHEMA)]) == 1
    out = capsys.readouterr().out
    assert "4 problem(s)" in out.replace("\n", " ") or "problem(s)" in out
    for finding in ("LABEL_KEY is 1", "no RAW_LABEL_FEATURES", "preprocessing_fn takes 2",
                    "no build_model", "no eval_config"):  # fmt: skip
        assert finding in out, (finding, out)
    assert out.count("fix") >= 5


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_model_check_runs_the_steps_on_data(tmp_path: Path) -> None:
    """The real module passes on real rows; a module whose graph breaks fails in plain words."""
    ok = subprocess.run(
        [sys.executable, "-m", "ctrain.cli", "model", "check", str(TAXI_MODULE),
         "--schema", str(TAXI_SCHEMA), "--data", str(TAXI_CSV), "--rows", "400"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert "ok TF Transform" in ok.stdout and "ok TFMA" in ok.stdout
    # It leaves once its work is said: no TensorFlow teardown traceback after it.
    assert "Exception ignored" not in ok.stderr, ok.stderr[-2000:]
    bad = tmp_path / "bad.py"
    bad.write_text(TAXI_MODULE.read_text().replace('inputs["fare"]', 'inputs["no_such_feature"]'))
    out = subprocess.run(
        [sys.executable, "-m", "ctrain.cli", "model", "check", str(bad),
         "--schema", str(TAXI_SCHEMA), "--data", str(TAXI_CSV), "--rows", "200"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert out.returncode == 1
    assert (
        "TF Transform (preprocessing_fn) failed" in out.stdout and "no_such_feature" in out.stdout
    )


def test_an_eval_config_that_does_not_parse_stops_the_trigger(
    tmp_path: Path, redis_url: str, kafka: str
) -> None:
    broken = tmp_path / "broken.py"
    src = TAXI_MODULE.read_text()
    assert 'class_name: "ExampleCount"' in src
    broken.write_text(src.replace('class_name: "ExampleCount"', 'class_nme: "ExampleCount"'))
    env = ingest_env(kafka, redis_url, tmp_path, CTRAIN_TRIGGER_MODULE_PATH=str(broken),
                     CTRAIN_TRIGGER_MODEL="taxi")  # fmt: skip
    svc = start_service("trigger", env, tmp_path / "trigger.log")
    assert svc.proc.wait(timeout=180) == 2
    log = svc.log.read_text()
    assert "eval_config(False) raised ParseError" in log and "class_nme" in log
