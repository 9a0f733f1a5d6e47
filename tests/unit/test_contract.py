"""The model-module contract: every breach named with its fix, before any run."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from shared import contract
from shared.schema import load_schema
from tests.conftest import ROOT, TAXI_SCHEMA

pytestmark = pytest.mark.unit

GOOD = """
LABEL_KEY = "label"
RAW_LABEL_FEATURES = ("failure",)
SLICES = [["site"]]
def preprocessing_fn(inputs): return inputs
def build_model(tf_transform_output): return None
def eval_config(baseline): return None
"""


def write(tmp_path: Path, text: str, name: str = "m.py") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def problems(tmp_path: Path, text: str) -> list[str]:
    return [p.what for p in contract.check_module(contract.import_module(write(tmp_path, text)))]


def test_the_bundled_modules_keep_the_contract() -> None:
    for path in (ROOT / "examples/taxi/model.py", ROOT / "tests/e2e/sensors/model.py"):
        module = contract.check(path, load_schema(path.parent / "data/schema.pbtxt")
                                if "taxi" in str(path) else None)  # fmt: skip
        assert isinstance(module, contract.ModelModule)


def test_a_sound_module_has_no_problem(tmp_path: Path) -> None:
    assert problems(tmp_path, GOOD) == []


@pytest.mark.parametrize(
    ("edit", "found"),
    [
        (('LABEL_KEY = "label"', ""), "no LABEL_KEY"),
        (('LABEL_KEY = "label"', "LABEL_KEY = 3"), "LABEL_KEY is 3"),
        (('RAW_LABEL_FEATURES = ("failure",)', ""), "no RAW_LABEL_FEATURES"),
        (('RAW_LABEL_FEATURES = ("failure",)', 'RAW_LABEL_FEATURES = "failure"'), "RAW_LABEL"),
        (("def eval_config(baseline): return None", ""), "no eval_config"),
        (("def build_model(tf_transform_output)", "def build_model(a, b)"), "build_model takes 2"),
        (("def preprocessing_fn(inputs)", "def preprocessing_fn()"), "preprocessing_fn takes 0"),
        (("def build_model(tf_transform_output): return None", "build_model = 1"), "not a func"),
        (('SLICES = [["site"]]', 'SLICES = ["site"]'), "SLICES is"),
        (('SLICES = [["site"]]', 'TFT_FORCE_TF_COMPAT_V1 = "yes"'), "TFT_FORCE_TF_COMPAT_V1 is"),
    ],
)
def test_each_breach_is_named(tmp_path: Path, edit: tuple[str, str], found: str) -> None:
    text = GOOD.replace(*edit)
    found_all = problems(tmp_path, text)
    assert any(found in p for p in found_all), found_all


def test_defaults_and_varargs_are_accepted(tmp_path: Path) -> None:
    text = GOOD.replace("def build_model(tf_transform_output)", "def build_model(t, lr=0.1)")
    text = text.replace("def eval_config(baseline)", "def eval_config(*args)")
    assert problems(tmp_path, text) == []


def test_tf1_graph_tracing_is_the_modules_choice_and_off_by_default(tmp_path: Path) -> None:
    default = contract.import_module(write(tmp_path, GOOD, "default.py"))
    assert contract.tft_compat_v1(default) is False
    chosen = contract.import_module(
        write(tmp_path, GOOD + "TFT_FORCE_TF_COMPAT_V1 = True\n", "chosen.py")
    )
    assert contract.check_module(chosen) == []
    assert contract.tft_compat_v1(chosen) is True


def test_a_module_that_cannot_be_imported_is_reported(tmp_path: Path) -> None:
    with pytest.raises(contract.ContractError, match="ZeroDivisionError"):
        contract.import_module(write(tmp_path, "x = 1 / 0\n"))
    with pytest.raises(contract.ContractError, match="does not exist"):
        contract.import_module(tmp_path / "absent.py")
    with pytest.raises(contract.ContractError) as e:
        contract.check(write(tmp_path, "x = 1\n", "empty.py"))
    assert len(e.value.problems) == 5  # label, raw label, three functions


def schema(text: str) -> schema_pb2.Schema:
    return text_format.Parse(text, schema_pb2.Schema())


def test_a_fixed_shape_on_a_feature_that_may_be_missing_is_caught() -> None:
    s = schema(
        'feature { name: "a" type: FLOAT shape { dim { size: 1 } } presence { min_fraction: 0.5 } }'
        'feature { name: "b" type: FLOAT shape { dim { size: 1 } } presence { min_fraction: 1 } }'
    )
    found = contract.check_schema(s)
    assert len(found) == 1 and "'a' has a fixed shape" in found[0].what
    assert "min_fraction" in found[0].fix


def test_schema_gaps_are_caught() -> None:
    assert "no feature" in contract.check_schema(schema(""))[0].what
    found = contract.check_schema(schema('feature { name: "a" }'), ("tips",))
    assert {p.what.split(" ")[0] for p in found} == {"feature", "RAW_LABEL_FEATURES"}
    assert contract.check_schema(load_schema(TAXI_SCHEMA), ("tips",)) == []


def test_the_trigger_builds_a_modules_tfma_configs_once_per_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart does not pay TFMA's import again for a module whose bytes passed; an
    edited module is checked again; a failing one is never remembered as passed."""
    from services.trigger.app import ModelSetup, check_models
    from services.trigger.settings import TriggerSettings
    from shared.artifacts import ArtifactStore
    from shared.settings import SettingsError

    calls: list[str] = []

    def fake(module: object) -> list[contract.Problem]:
        calls.append(getattr(module, "__name__", ""))
        bad = "BROKEN" in (getattr(module, "__doc__", "") or "")
        return [contract.Problem("eval_config broke", "fix it")] if bad else []

    monkeypatch.setattr(contract, "eval_config_problems", fake)
    store = ArtifactStore(str(tmp_path / "root"))
    module = write(tmp_path, GOOD)
    setup = ModelSetup("m", "m", str(module), "", TriggerSettings())
    check_models([setup], store)
    check_models([setup], store)
    assert len(calls) == 1
    module.write_text(GOOD + "\nX = 1\n")
    check_models([setup], store)
    assert len(calls) == 2
    module.write_text('"""BROKEN"""\n' + GOOD)
    for _ in range(2):
        with pytest.raises(SettingsError, match="eval_config broke"):
            check_models([setup], store)
    assert len(calls) == 4
