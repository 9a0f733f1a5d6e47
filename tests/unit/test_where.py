"""ctrain/where.py: the one place the command line resolves the dev state, the models file
and the artifact root (environment, then the dev stack's state, then defaults)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from ctrain import devstack, where

pytestmark = pytest.mark.unit


@pytest.fixture
def clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("CTRAIN_CONFIG", "CTRAIN_ARTIFACT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CTRAIN_DEV_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_no_stack_no_file(clean: Path) -> None:
    assert where.load_state() is None and devstack.load_state() is None
    assert where.models_file() is None
    assert where.artifact_root() == "./artifacts"
    assert where.stack_models_file(None) == where.bundled_models_file()
    assert Path(where.bundled_models_file()).is_file()


def test_the_stack_state_then_the_environment(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean / "state").mkdir()
    state = {"config": "/x/models.yaml", "artifact_root": "/x/artifacts"}
    (clean / "state" / "dev.json").write_bytes(orjson.dumps(state))
    assert where.load_state() == state
    assert where.models_file(where.load_state()) == "/x/models.yaml"
    assert where.artifact_root() == "/x/artifacts"
    monkeypatch.setenv("CTRAIN_CONFIG", "/env/models.yaml")
    monkeypatch.setenv("CTRAIN_ARTIFACT_ROOT", "/env/artifacts")
    assert where.models_file(where.load_state()) == "/env/models.yaml"
    assert where.artifact_root() == "/env/artifacts"
    assert where.stack_models_file(None) == "/env/models.yaml"
    assert where.stack_models_file("mine.yaml") == str(clean / "mine.yaml")


def test_a_models_file_in_the_working_directory(clean: Path) -> None:
    (clean / "ctrain.yaml").write_text("models: {}\n")
    assert where.models_file() == "ctrain.yaml"
    assert where.models_file_to_write(None) == Path("ctrain.yaml")
    assert where.models_file_to_write("other.yaml") == Path("other.yaml")
