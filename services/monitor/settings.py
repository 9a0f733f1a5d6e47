"""monitor settings: ``CTRAIN_MONITOR_*`` plus the shared ``CTRAIN_*`` names.

Per-model values come from the configuration file's ``quality`` section (docs/config.md)
when ``CTRAIN_CONFIG`` names one; these are the defaults and the one-model setup.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.model_fields import QualityFields
from shared.settings import CommonSettings, StrictSettings
from shared.tasks import Task


class MonitorSettings(StrictSettings, QualityFields):
    model_config = SettingsConfigDict(extra="forbid", env_prefix="CTRAIN_MONITOR_")

    group_id: str = Field(
        default="ctrain-monitor",
        description="Kafka consumer group prefix: each topic is read in `<group_id>.<topic>`.",
    )
    model: str = Field(
        default="default", description="Model scored when no configuration file is given."
    )
    stream: str = Field(default="", description="Its stream (empty: the model's name).")
    module_path: str = Field(
        default="", description="Its model module (LABEL_KEY, RAW_LABEL_FEATURES, SLICES)."
    )
    task: Task = Field(default="binary", description="Its task: picks the metrics.")
    batch_rows: int = Field(default=2048, ge=1, description="Examples per Predict request.")
    in_flight: int = Field(default=2, ge=1, description="Predict requests in flight at once.")
    serving_timeout_s: float = Field(default=30.0, gt=0, description="Deadline of one Predict.")
    label_batch_records: int = Field(
        default=5000,
        ge=1,
        description="Label records joined per batch (one segment per window shard per batch).",
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Tries per record before it goes to ctrain.events.dlq."
    )
    http_host: str = Field(default="127.0.0.1", description="Bind address of the HTTP API.")
    http_port: int = Field(default=8085, ge=0, description="Port of the HTTP API.")


def load_settings() -> tuple[CommonSettings, MonitorSettings]:
    return CommonSettings(), MonitorSettings()
