"""Settings a models file may set per model, declared once.

Each class here is one group of a service's settings that may differ per model. The
service's settings class inherits it (``CTRAIN_<SERVICE>_<NAME>`` from the environment);
the models file's section for it is derived from it (``shared/config.py``: the same keys,
types, constraints and descriptions, every key optional: "not set here"); the services
build their policy and validator configs from the settings by these names; and the docs'
tables are checked against it (tests/unit/test_doc_tables.py). A setting is added,
renamed or re-described here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field


def _ascending_fractions(steps: list[float]) -> list[float]:
    if any(not 0 < s <= 1 for s in steps) or steps != sorted(set(steps)):
        raise ValueError("coverage steps are distinct fractions in (0, 1], ascending")
    return steps


class WindowFields(BaseModel):
    """How ingest cuts a stream into windows: ``CTRAIN_INGEST_*``, the models file's ``windows``."""

    window_max_count: int | None = Field(
        default=10_000, ge=1, description="Close a window after this many accepted examples."
    )
    window_duration_s: float | None = Field(
        default=None, gt=0, description="Tumbling event-time window length in seconds."
    )
    allowed_lateness_s: float = Field(
        default=0.0,
        ge=0,
        description="How far behind the watermark a record may arrive and still join its window;"
        " later records go to the DLQ as `late`.",
    )
    idle_timeout_s: float = Field(
        default=30.0, gt=0, description="Close a partition's open windows after this quiet time."
    )
    event_time_field: str = Field(
        default="", description="Example field holding event time; empty: the Kafka timestamp."
    )
    event_time_unit: Literal["s", "ms"] = Field(
        default="s", description="Unit of a numeric event-time field."
    )
    max_future_s: float = Field(
        default=86_400.0, gt=0, description="Reject event times further than this in the future."
    )
    reject_unknown_features: bool = Field(
        default=True, description="Reject examples with keys the schema does not declare."
    )


class ValidationFields(BaseModel):
    """How the validator judges a stream's windows:
    ``CTRAIN_VALIDATOR_*``, the models file's ``validation``."""

    min_examples: int = Field(
        default=200,
        ge=1,
        description="Windows with fewer examples get statistics and verdict insufficient_data.",
    )
    drift_linf: float = Field(
        default=0.1, ge=0, description="Default L-infinity drift threshold (categorical)."
    )
    drift_jsd: float = Field(
        default=0.25, ge=0, description="Default Jensen-Shannon drift threshold (numeric)."
    )
    skew_linf: float = Field(
        default=0.1, ge=0, description="Default L-infinity skew threshold (categorical)."
    )
    skew_jsd: float = Field(
        default=0.25, ge=0, description="Default Jensen-Shannon skew threshold (numeric)."
    )
    jsd_histogram: Literal["quantiles", "standard"] = Field(
        default="quantiles",
        description="Histogram behind numeric JSD when the schema's comparator names none. "
        "Equi-depth (quantiles) is robust to the outliers that stretch equi-width buckets.",
    )
    ignore_features: list[str] = Field(
        default=[],
        description="Features left out of drift and skew (e.g. a timestamp, which always drifts).",
    )
    baseline_window: str = Field(
        default="",
        description="Skew baseline until a model serves; empty: the stream's first window.",
    )
    environment: str = Field(
        default="", description="Schema environment to validate in (e.g. SERVING); empty: none."
    )
    blocking_anomalies: list[str] = Field(
        default=[
            "SCHEMA_MISSING_COLUMN",
            "UNEXPECTED_DATA_TYPE",
            "FEATURE_TYPE_LOW_FRACTION_PRESENT",
            "FEATURE_TYPE_LOW_NUMBER_PRESENT",
            "FEATURE_TYPE_NOT_PRESENT",
            "INVALID_FEATURE_SHAPE",
            "DATA_MISSING",
        ],
        description="TFDV anomaly types that block training on the window; others warn.",
    )
    new_value_blocking_fraction: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Unexpected categorical values above this share of a feature block; "
        "rarer ones warn.",
    )
    period_grace_s: float = Field(
        default=120.0,
        ge=0,
        description="Judge a period this long after its first window arrived even if some "
        "partitions have not moved past it (a silent partition must not stall the loop).",
    )
    max_group_periods: int = Field(
        default=8,
        ge=1,
        description="At most this many consecutive small periods are measured together.",
    )
    stats_batch_rows: int = Field(
        default=131_072,
        ge=1024,
        description="Rows of a window TFDV takes at a time (stats_runner=inprocess): "
        "statistics are built batch by batch and merged, so the validator's memory follows "
        'this, not the window\'s size (docs/validator.md, "Memory").',
    )


class PolicyFields(BaseModel):
    """When the trigger trains a model and on what:
    ``CTRAIN_TRIGGER_*``, the models file's ``trigger``."""

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
    epochs: int = Field(default=3, ge=1, description="Trainer epochs (early stopping may cut).")
    blocking_anomalies: list[str] = Field(
        default=["SCHEMA_MISSING_COLUMN", "UNEXPECTED_DATA_TYPE"],
        description="Anomaly types that fail the pipeline's own TFDV validation step.",
    )


class QualityFields(BaseModel):
    """How the monitor scores a model on live data:
    ``CTRAIN_MONITOR_*``, the models file's ``quality``."""

    threshold: float = Field(
        default=0.5, gt=0, lt=1, description="Decision threshold of binary classifiers."
    )
    coverage_steps: Annotated[list[float], AfterValidator(_ascending_fractions)] = Field(
        default=[0.5, 0.9],
        description="Label coverages at which a window is scored again as delayed labels "
        "arrive (fractions of its examples, ascending).",
    )
    slice_min_examples: int = Field(
        default=30, ge=1, description="Smallest slice whose metrics are reported."
    )


class RollbackFields(BaseModel):
    """How a promotion is watched: ``CTRAIN_PROMOTER_*``, the models file's ``promotion``."""

    rollback_windows: int = Field(
        default=3,
        ge=1,
        description="Labelled windows a promotion is watched on (new stable beside the version "
        "it replaced) before it is kept or rolled back.",
    )
    rollback_margin: float = Field(
        default=0.02,
        ge=0,
        description="Rolled back when worse than the replaced version by more than this on all "
        "watched windows.",
    )


def values_for(config: Any, settings: BaseModel, **given: Any) -> dict[str, Any]:
    """The keyword arguments of the config dataclass ``config``: each of its fields from
    ``given``, else from the setting of the same name (fields no setting has keep their
    dataclass default). A config is built from the settings by name, never copied field
    by field."""
    names = {f.name for f in dataclasses.fields(config)}
    known = type(settings).model_fields
    return {
        k: given[k] if k in given else getattr(settings, k)
        for k in names
        if k in given or k in known
    }
