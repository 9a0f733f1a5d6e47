"""trigger settings: ``CTRAIN_TRIGGER_*`` plus the shared ``CTRAIN_*`` names."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from shared.model_fields import PolicyFields
from shared.settings import CommonSettings, StrictSettings
from shared.tasks import Task


class TriggerSettings(StrictSettings, PolicyFields):
    model_config = SettingsConfigDict(extra="forbid", env_prefix="CTRAIN_TRIGGER_")

    group_id: str = Field(
        default="ctrain-trigger",
        description="Kafka consumer group prefix: each topic is read in `<group_id>.<topic>`.",
    )
    model: str = Field(default="default", description="Name of the model this trigger trains.")
    stream: str = Field(
        default="",
        description="Stream whose validations this model follows (empty: the model's name). "
        "Without a models file only; the file names each model's stream.",
    )
    module_path: str = Field(
        default="", description="Model module file (preprocessing_fn, build_model, eval_config)."
    )
    task: Task = Field(
        default="binary",
        description="Without a models file only: the model's task (the file names each one's).",
    )
    tick_s: float = Field(
        default=5.0,
        gt=0,
        description="How often the trigger decides again without new data (a retry whose "
        "cooldown ran out starts without waiting for the next period).",
    )
    backend: Literal["local", "kfp"] = Field(
        default="local", description="kfp.local in a worker process, or a KFP API server."
    )
    warm_worker: bool = Field(
        default=True,
        description="backend=local: pipeline steps fork from one worker process that has "
        "imported TensorFlow, TFT, TFMA and Beam once, started with the trigger; false: "
        "each step starts a fresh interpreter (5-8 s of imports per step).",
    )
    local_fault_file: str = Field(
        default="",
        description="Testing only (backend=local): while this file holds a Unix time in the "
        "future, submits fail as an unreachable KFP API would. Empty: off.",
    )
    kfp_host: str = Field(default="", description="KFP API server URL (backend=kfp).")
    kfp_namespace: str = Field(default="", description="KFP namespace (multi-user installs).")
    kfp_token: str = Field(default="", description="Bearer token for the KFP API server.")
    pipeline_package: str = Field(
        default="", description="Compiled pipeline YAML (backend=kfp; compiled at start if empty)."
    )
    base_image: str = Field(default="ctrain:latest", description="Image of pipeline components.")
    trainer_gpus: int = Field(default=0, ge=0, description="GPUs requested by the trainer.")
    beam_args: list[str] = Field(
        default=[],
        description="Beam pipeline options of a run's TF Transform and TFMA steps, as Beam's "
        'flags in a JSON list, e.g. `["--runner=DataflowRunner", "--project=P", '
        '"--region=R", "--temp_location=gs://B/tmp", "--sdk_container_image=IMAGE"]` '
        "(docs/trigger.md, \"Beam runners\"); the steps' workers then read the run's data "
        "from the artifact root. Empty: Beam's in-process runner inside the step.",
    )
    http_host: str = Field(default="127.0.0.1", description="Bind address of the HTTP API.")
    http_port: int = Field(default=8083, ge=0, description="Port of the HTTP API.")

    @field_validator("beam_args")
    @classmethod
    def _runner_named(cls, v: list[str]) -> list[str]:
        if not v:
            return v
        loose = [a for a in v if not a.startswith("--")]
        if loose:
            raise ValueError(f"Beam options are flags starting with '--', not {loose}")
        if not any(a.startswith("--runner=") for a in v):
            # Beam's default (DirectRunner) would quietly run on the step's machine,
            # and first tries to download a runner binary.
            raise ValueError("name the runner: '--runner=DataflowRunner' (or FlinkRunner, ...)")
        return v


def load_settings() -> tuple[CommonSettings, TriggerSettings]:
    return CommonSettings(), TriggerSettings()
