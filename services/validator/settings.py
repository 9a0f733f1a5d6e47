"""validator settings: ``CTRAIN_VALIDATOR_*`` plus the shared ``CTRAIN_*`` names."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import CommonSettings, StrictSettings


class ValidatorSettings(StrictSettings):
    model_config = SettingsConfigDict(extra="forbid", env_prefix="CTRAIN_VALIDATOR_")

    group_id: str = Field(default="ctrain-validator", description="Kafka consumer group.")
    model: str = Field(
        default="default",
        description="Model whose serving training windows are the skew baseline.",
    )
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
    stats_runner: Literal["inprocess", "beam"] = Field(
        default="inprocess",
        description="In-process TFDV, or the same computation as an Apache Beam pipeline.",
    )
    beam_runner: str = Field(
        default="DirectRunner", description="Beam runner for stats_runner=beam."
    )
    beam_options: list[str] = Field(
        default=[], description="Extra Beam pipeline options (e.g. --project=..., --region=...)."
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
    max_attempts: int = Field(
        default=3, ge=1, description="Tries per window before it goes to ctrain.windows.dlq."
    )
    http_host: str = Field(default="127.0.0.1", description="Bind address of the HTTP API.")
    http_port: int = Field(default=8082, ge=0, description="Port of the HTTP API.")


def load_settings() -> tuple[CommonSettings, ValidatorSettings]:
    return CommonSettings(), ValidatorSettings()
