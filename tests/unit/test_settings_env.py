"""The command line's variables exported beside a service are not "unknown settings"."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.ingest.settings import IngestSettings
from services.promoter.settings import PromoterSettings
from services.trigger.settings import TriggerSettings
from services.validator.settings import ValidatorSettings
from shared.settings import CLIENT_VARIABLES, CommonSettings, SettingsError

pytestmark = pytest.mark.unit
CLASSES = (CommonSettings, IngestSettings, ValidatorSettings, TriggerSettings, PromoterSettings)


def test_cli_variables_in_the_same_shell_do_not_stop_a_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What the README and the CLI's own messages tell users to export.
    for name in CLIENT_VARIABLES:
        monkeypatch.setenv(name, "http://127.0.0.1:1" if name.endswith("_URL") else "x")
    built = [cls() for cls in CLASSES]  # no SettingsError
    assert [type(b) for b in built] == list(CLASSES)
    assert CommonSettings().kafka_bootstrap  # and the real settings still read as usual


def test_a_real_typo_beside_them_is_still_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTRAIN_TOKEN", "t")
    monkeypatch.setenv("CTRAIN_TRIGGER_COOLDOWN", "5")
    with pytest.raises(SettingsError, match="CTRAIN_TRIGGER_COOLDOWN"):
        TriggerSettings()


def test_schema_import_refuses_a_stream_validated_against_a_curated_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ctrain.cli import main
    from tests.conftest import TAXI_SCHEMA

    monkeypatch.chdir(tmp_path)  # no ./ctrain.yaml here
    monkeypatch.setenv("CTRAIN_ARTIFACT_ROOT", str(tmp_path / "art"))
    monkeypatch.setenv("CTRAIN_DEV_STATE_DIR", str(tmp_path / "dev"))
    monkeypatch.setenv("CTRAIN_SCHEMA", str(TAXI_SCHEMA))
    assert main(["schema", "import", str(TAXI_SCHEMA), "--stream", "taxi"]) == 2
    out = capsys.readouterr().out
    assert "curated schema" in out and "CTRAIN_SCHEMA" in out and "ignored" in out
    assert not (tmp_path / "art" / "schemas").exists()  # nothing stored
    monkeypatch.delenv("CTRAIN_SCHEMA")
    assert main(["schema", "import", str(TAXI_SCHEMA), "--stream", "taxi"]) == 0
    assert (tmp_path / "art" / "schemas" / "taxi" / "current").read_text() == "1"


def test_replay_says_what_to_set_when_the_broker_refuses_idempotence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    import pyarrow as pa
    from aiokafka.errors import UnknownError

    import ctrain.replay as rp

    class Refusing:
        async def start(self) -> None:
            raise UnknownError("InitProducerId")

        async def stop(self) -> None:
            return None

    monkeypatch.setattr(rp, "make_producer", lambda *a, **k: Refusing())
    table = pa.table({"x": [1, 2]})
    common = CommonSettings(kafka_bootstrap="127.0.0.1:1", kafka_idempotent=True)
    with pytest.raises(rp.ReplayError, match="CTRAIN_KAFKA_IDEMPOTENT=false"):
        asyncio.run(rp.replay(common, table))
    plain = CommonSettings(kafka_bootstrap="127.0.0.1:1", kafka_idempotent=False)
    with pytest.raises(UnknownError):  # not idempotence: the broker's own error stands
        asyncio.run(rp.replay(plain, table))


def test_approve_wait_ends_when_the_candidate_serves() -> None:
    """The state machine ends a promotion in `serving` (there is no `promoted` state)."""
    from ctrain.commands.decide import _wait_promoted

    class Promoter:
        def __init__(self, states: list[str]) -> None:
            self.states = states

        def candidate(self, cid: str) -> dict[str, object]:
            return {"state": self.states.pop(0) if len(self.states) > 1 else self.states[0]}

    assert _wait_promoted(Promoter(["promoting", "serving"]), "c1", 10) == 0  # type: ignore[arg-type]
    assert _wait_promoted(Promoter(["promoting", "failed"]), "c1", 10) == 1  # type: ignore[arg-type]


def test_beam_args_are_read_from_a_json_list_and_must_name_the_runner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic import ValidationError

    flink = ["--runner=PortableRunner", "--job_endpoint=flink-job-server:8099"]
    monkeypatch.setenv("CTRAIN_TRIGGER_BEAM_ARGS", '["' + '", "'.join(flink) + '"]')
    assert TriggerSettings().beam_args == flink
    monkeypatch.delenv("CTRAIN_TRIGGER_BEAM_ARGS")
    assert TriggerSettings().beam_args == []  # the in-process runner
    with pytest.raises(ValidationError, match="name the runner"):
        TriggerSettings(beam_args=["--project=p"])
    with pytest.raises(ValidationError, match="flags starting with '--'"):
        TriggerSettings(beam_args=["DataflowRunner"])
