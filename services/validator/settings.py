"""validator settings: ``CTRAIN_VALIDATOR_*`` plus the shared ``CTRAIN_*`` names."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.model_fields import ValidationFields
from shared.settings import CommonSettings, StrictSettings


class ValidatorSettings(StrictSettings, ValidationFields):
    model_config = SettingsConfigDict(extra="forbid", env_prefix="CTRAIN_VALIDATOR_")

    group_id: str = Field(
        default="ctrain-validator",
        description="Kafka consumer group prefix: each topic is read in `<group_id>.<topic>`.",
    )
    model: str = Field(
        default="default",
        description="Model whose serving training windows are the skew baseline.",
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
    max_attempts: int = Field(
        default=3, ge=1, description="Tries per window before it goes to ctrain.windows.dlq."
    )
    http_host: str = Field(default="127.0.0.1", description="Bind address of the HTTP API.")
    http_port: int = Field(default=8082, ge=0, description="Port of the HTTP API.")


def load_settings() -> tuple[CommonSettings, ValidatorSettings]:
    return CommonSettings(), ValidatorSettings()
