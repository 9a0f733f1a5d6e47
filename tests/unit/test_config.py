"""The models file: checked at load, applied per model, env overriding only where safe."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.ingest.app import streams_from
from services.ingest.settings import IngestSettings
from services.monitor.settings import MonitorSettings
from services.promoter.app import gate_from
from services.promoter.settings import PromoterSettings
from services.trigger.app import models_from
from services.trigger.settings import TriggerSettings
from services.validator.settings import ValidatorSettings
from shared import config as C
from shared.settings import CommonSettings, SettingsError
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

TAXI = ROOT / "examples" / "taxi"


def two_models(tmp_path: Path, extra: str = "") -> Path:
    f = tmp_path / "ctrain.yaml"
    f.write_text(
        f"""
models:
  taxi:
    stream: taxi
    topic: ctrain.examples
    schema: {TAXI / "data/schema.pbtxt"}
    module: {TAXI / "model.py"}
    windows: {{window_duration_s: 100, event_time_field: trip_start_timestamp}}
    trigger: {{cooldown_s: 5}}
    promotion: {{policy: auto, approvers: [alice]}}
  fares:
    stream: fares
    schema: {TAXI / "data/schema.pbtxt"}
    module: {TAXI / "model.py"}
    task: regression
    validation: {{drift_jsd: 0.4}}
    promotion: {{two_approvers: true}}
{extra}"""
    )
    return f


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("CTRAIN_"):
            monkeypatch.delenv(k)


def test_the_bundled_example_loads_and_its_paths_are_resolved() -> None:
    cfg = C.load_config(TAXI / "ctrain.yaml")
    m = cfg.models["taxi"]
    assert cfg.only() == "taxi" and m.stream == "taxi" and m.topic == "ctrain.examples"
    assert Path(m.schema_path).is_file() and Path(m.module).is_file()
    assert m.windows.given()["event_time_field"] == "trip_start_timestamp"


def test_unknown_keys_are_named_with_the_valid_ones(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("models:\n  m:\n    stream: s\n    schema: x\n    module: y\n    trigger:\n"
                 "      cooldown: 5\n")  # fmt: skip
    with pytest.raises(SettingsError) as e:
        C.load_config(f)
    msg = str(e.value)
    assert "models.m.trigger.cooldown: unknown key" in msg and "cooldown_s" in msg
    f.write_text("modles: {}\n")
    with pytest.raises(SettingsError, match="valid keys here: models, version"):
        C.load_config(f)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("models: {}", "at least 1"),
        ("- a\n- b", "expected a mapping"),
        ("models: {a: [", "not valid YAML"),
        ("models:\n  A b: {stream: s, schema: x, module: y}", "lower-case"),
        (
            "models:\n  a: {stream: s, schema: x, module: y}\n  b: {stream: s, schema: x, module: y}",
            "one model per stream",
        ),
        (
            "models:\n  a: {stream: s, schema: x, module: y, topic: t}\n"
            "  b: {stream: r, schema: x, module: y, topic: t}",
            "a topic of their own",
        ),
        ("models:\n  a: {stream: dlq, schema: x, module: y}", "one of ctrain's own"),
        ("models:\n  a: {stream: s, schema: x, module: y, task: ranking}", "task"),
    ],
)
def test_bad_files_are_refused_with_the_reason(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(SettingsError, match=error):
        C.parse_config(text, tmp_path, "c.yaml")


def test_missing_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        C.load_config(tmp_path / "absent.yaml")
    f = tmp_path / "c.yaml"
    f.write_text("models:\n  a: {stream: s, schema: nope.pbtxt, module: m.py}\n")
    with pytest.raises(SettingsError, match=r"schema file .*nope\.pbtxt does not exist"):
        C.load_config(f)


def test_every_section_key_is_a_setting_of_its_service() -> None:
    """A key the file accepts but no service reads would be a silent no-op."""
    for section, settings in (
        (C.Windows, IngestSettings),
        (C.Validation, ValidatorSettings),
        (C.TriggerPolicy, TriggerSettings),
    ):
        missing = set(section.model_fields) - set(settings.model_fields)
        assert not missing, (section.__name__, missing)


def test_the_file_sets_each_model_and_env_overrides_a_one_model_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = C.load_config(TAXI / "ctrain.yaml")
    per = C.model_settings(cfg, TriggerSettings(), lambda m: m.trigger.given())
    assert per["taxi"].cooldown_s == 60 and per["taxi"].min_eval_examples == 1000
    monkeypatch.setenv("CTRAIN_TRIGGER_COOLDOWN_S", "0")
    per = C.model_settings(cfg, TriggerSettings(), lambda m: m.trigger.given())
    assert per["taxi"].cooldown_s == 0 and per["taxi"].min_train_examples == 3000


def test_with_several_models_env_may_not_override_what_the_file_sets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = C.load_config(two_models(tmp_path))
    per = C.model_settings(cfg, TriggerSettings(), lambda m: m.trigger.given())
    assert per["taxi"].cooldown_s == 5 and per["fares"].cooldown_s == 600
    monkeypatch.setenv("CTRAIN_TRIGGER_EPOCHS", "1")  # unset in the file: a default for all
    per = C.model_settings(cfg, TriggerSettings(), lambda m: m.trigger.given())
    assert per["taxi"].epochs == per["fares"].epochs == 1
    monkeypatch.setenv("CTRAIN_TRIGGER_COOLDOWN_S", "0")
    with pytest.raises(SettingsError, match="CTRAIN_TRIGGER_COOLDOWN_S set in the environment"):
        C.model_settings(cfg, TriggerSettings(), lambda m: m.trigger.given())


def test_a_value_the_service_refuses_is_an_error() -> None:
    with pytest.raises(SettingsError, match="configuration values rejected"):
        C.apply(IngestSettings(), {"window_max_count": 0}, models=1)


def test_services_read_each_model_from_the_file(tmp_path: Path) -> None:
    common = CommonSettings(config_path=str(two_models(tmp_path)))
    streams = {s.stream: s for s in streams_from(common, IngestSettings())}
    assert streams["taxi"].topic == "ctrain.examples"
    assert streams["fares"].topic == "ctrain.examples.fares"
    assert streams["taxi"].settings.window_duration_s == 100
    assert streams["fares"].settings.window_duration_s is None
    models = {m.model: m for m in models_from(common, TriggerSettings())}
    assert models["fares"].stream == "fares" and models["taxi"].settings.cooldown_s == 5
    policies, two, approvers = gate_from(C.config_of(common), PromoterSettings())
    assert policies == {"taxi": "auto"} and two == {"fares"}
    assert approvers == {"taxi": frozenset({"alice"})}
    policies, _, _ = gate_from(C.config_of(common), PromoterSettings(policies={"taxi": "manual"}))
    assert policies == {"taxi": "manual"}  # the environment names the model: it wins


def test_without_a_file_one_model_comes_from_the_environment() -> None:
    common = CommonSettings(schema_path=str(TAXI / "data/schema.pbtxt"))
    [s] = streams_from(common, IngestSettings(stream="x"))
    assert (s.stream, s.topic) == ("x", "ctrain.examples")
    with pytest.raises(SettingsError, match="CTRAIN_CONFIG"):
        streams_from(CommonSettings(), IngestSettings())
    with pytest.raises(SettingsError, match="CTRAIN_CONFIG"):
        models_from(CommonSettings(), TriggerSettings())
    [m] = models_from(CommonSettings(), TriggerSettings(model="m", module_path="x.py"))
    assert m.stream == "m"


def test_a_command_names_its_model_or_the_file_has_one(tmp_path: Path) -> None:
    one = C.load_config(TAXI / "ctrain.yaml")
    two = C.load_config(two_models(tmp_path))
    assert C.pick_model(one, None) == "taxi" and C.pick_model(two, "fares") == "fares"
    assert C.pick_model(None, "x") == "x"
    with pytest.raises(SettingsError, match="declares 2 models"):
        C.pick_model(two, None)
    with pytest.raises(SettingsError, match="no model 'nope'"):
        C.pick_model(two, "nope")
    with pytest.raises(SettingsError, match="--model"):
        C.pick_model(None, None)


def test_each_section_is_derived_from_the_settings_it_sets() -> None:
    """One declaration per setting: a section's keys, constraints and descriptions are its
    service's (shared/model_fields.py), and a value the service refuses the file refuses."""
    pairs = [
        (C.Windows, IngestSettings),
        (C.Validation, ValidatorSettings),
        (C.TriggerPolicy, TriggerSettings),
        (C.Quality, MonitorSettings),
        (C.Rollback, PromoterSettings),
    ]
    for section, settings in pairs:
        assert section.model_fields, section
        for key, f in section.model_fields.items():
            declared = settings.model_fields[key]
            assert f.description == declared.description and f.default is None, key
            assert f.metadata == declared.metadata, key
    with pytest.raises(ValidationError, match="ascending"):
        C.Quality(coverage_steps=[0.9, 0.5])
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        C.TriggerPolicy(consecutive=0)
    assert set(C.Promotion.model_fields) >= set(C.Rollback.model_fields)
