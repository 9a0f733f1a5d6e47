"""trigger settings: ``CTRAIN_TRIGGER_*`` plus the shared ``CTRAIN_*`` names."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import CommonSettings, StrictSettings
from shared.tasks import Task


class TriggerSettings(StrictSettings):
    model_config = SettingsConfigDict(extra="forbid", env_prefix="CTRAIN_TRIGGER_")

    group_id: str = Field(default="ctrain-trigger", description="Kafka consumer group.")
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
    consecutive: int = Field(
        default=2, ge=1, description="Drift/skew windows in a row before a run starts."
    )
    min_new_examples: int = Field(
        default=0, ge=0, description="Train after this many new clean examples (0: off)."
    )
    max_model_age_s: float = Field(
        default=0, ge=0, description="Train when the last good model is older (0: off)."
    )
    cooldown_s: float = Field(
        default=600, ge=0, description="Minimum time between runs (on the policy's clock)."
    )
    backoff: float = Field(
        default=2.0,
        ge=1.0,
        description="Each run of an episode that did not resolve it multiplies the wait.",
    )
    max_wait_s: float = Field(
        default=7 * 86400, ge=0, description="Upper bound of the back-off wait between runs."
    )
    daily_budget: int = Field(
        default=4, ge=1, description="At most this many runs in any 24 h of the policy's clock."
    )
    min_train_examples: int = Field(
        default=5000,
        ge=1,
        description="Train on the newest clean periods (before the held-out ones) holding "
        "at least this many examples.",
    )
    max_train_examples: int = Field(
        default=200_000, ge=1, description="Never train on more examples than this."
    )
    min_eval_examples: int = Field(
        default=2000,
        ge=1,
        description="Evaluate on the newest clean periods holding at least this many examples "
        "(2,000 keeps an AUC's standard error near 0.01; docs/trigger.md).",
    )
    post_change_share: float = Field(
        default=0.75,
        ge=0,
        le=1,
        description="A drift or skew run waits until this share of its training examples "
        "comes from the periods since the change the trigger detected (the streak that "
        "fired), so one change costs one run; 0: train on the newest periods before "
        "evaluation, whatever their side of the change (docs/trigger.md).",
    )
    clock: Literal["wall", "event"] = Field(
        default="wall",
        description="Clock of cooldowns, budgets and model age: wall time, or the data's event "
        "time (a replay of two years then behaves as the two years would live).",
    )
    quality_metric: str = Field(
        default="auto",
        description="Metric of the quality policy, on the monitor's WindowScored events (auto: "
        "auc for binary, accuracy for multiclass, rmse for regression).",
    )
    quality_floor: float | None = Field(
        default=None,
        description="A scored window whose metric is worse than this is poor (for rmse, mae, "
        "log_loss, brier, ece: above it). Unset: no floor.",
    )
    quality_margin: float = Field(
        default=0.0,
        ge=0,
        description="A scored window worse than the serving model's own TFMA evaluation by "
        "more than this is poor (0: off). With no floor and no margin the policy is off.",
    )
    quality_consecutive: int = Field(
        default=0, ge=0, description="Poor windows in a row that start a run (0: CONSECUTIVE)."
    )
    quality_source: Literal["realized", "estimated"] = Field(
        default="realized",
        description="Judge on metrics realized on labels, or estimated without them (binary).",
    )
    quality_min_coverage: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Realized metrics count once this fraction of a window's examples has labels.",
    )
    tick_s: float = Field(
        default=5.0,
        gt=0,
        description="How often the trigger decides again without new data (a retry whose "
        "cooldown ran out starts without waiting for the next period).",
    )
    epochs: int = Field(default=3, ge=1, description="Trainer epochs (early stopping may cut).")
    blocking_anomalies: list[str] = Field(
        default=["SCHEMA_MISSING_COLUMN", "UNEXPECTED_DATA_TYPE"],
        description="Anomaly types that fail the pipeline's own TFDV validation step.",
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
    http_host: str = Field(default="127.0.0.1", description="Bind address of the HTTP API.")
    http_port: int = Field(default=8083, ge=0, description="Port of the HTTP API.")


def load_settings() -> tuple[CommonSettings, TriggerSettings]:
    return CommonSettings(), TriggerSettings()
