"""ingest settings: ``CTRAIN_INGEST_*`` plus the shared ``CTRAIN_*`` names."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from shared.model_fields import WindowFields
from shared.settings import CommonSettings, StrictSettings


class IngestSettings(StrictSettings, WindowFields):
    model_config = SettingsConfigDict(extra="forbid", env_prefix="CTRAIN_INGEST_")

    stream: str = Field(default="default", description="Logical stream name of the windows.")
    group_id: str = Field(default="ctrain-ingest", description="Kafka consumer group.")
    max_example_bytes: int = Field(
        default=1 << 20, ge=16, description="Reject records larger than this (reason too_large)."
    )
    batch_rows: int = Field(
        default=8192, ge=16, description="Rows buffered per window before a Parquet row group."
    )
    poll_max_records: int = Field(
        default=20_000,
        ge=1,
        description="Records per poll (what the core decodes in one call; bench/ingest.py"
        " ran faster at 20,000 than at 10,000).",
    )
    gc_young_threshold: int = Field(
        default=100_000,
        ge=0,
        description="Python's generation-0 collection threshold while ingest runs, with"
        " start-up objects frozen (services/ingest/gc_tuning.py): a poll's records then pass"
        " through no collection. 0 leaves the interpreter's default (700).",
    )
    http_host: str = Field(default="127.0.0.1", description="Bind address of the HTTP API.")
    http_port: int = Field(default=8081, ge=0, description="Port of the HTTP API (0: any).")
    http_max_body_bytes: int = Field(
        default=16 << 20, ge=1024, description="Largest accepted POST /v1/examples body."
    )

    @model_validator(mode="after")
    def _needs_a_bound(self) -> IngestSettings:
        if not self.window_max_count and not self.window_duration_s:
            raise ValueError("set CTRAIN_INGEST_WINDOW_MAX_COUNT and/or ..._WINDOW_DURATION_S")
        return self


def load_settings() -> tuple[CommonSettings, IngestSettings]:
    return CommonSettings(), IngestSettings()
