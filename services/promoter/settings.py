"""promoter settings: ``CTRAIN_PROMOTER_*`` plus the shared ``CTRAIN_*`` names."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.model_fields import RollbackFields
from shared.settings import CommonSettings, StrictSettings


class PromoterSettings(StrictSettings, RollbackFields):
    model_config = SettingsConfigDict(extra="forbid", env_prefix="CTRAIN_PROMOTER_")

    group_id: str = Field(
        default="ctrain-promoter",
        description="Kafka consumer group prefix: each topic is read in `<group_id>.<topic>`.",
    )
    default_policy: Literal["auto", "manual"] = Field(
        default="manual", description="Gate policy for models not named in POLICIES."
    )
    policies: dict[str, Literal["auto", "manual"]] = Field(
        default={},
        description='Per-model gate policy, JSON `{"<model>": "auto"}`; overrides the models '
        "file's `promotion.policy` of the models it names.",
    )
    two_approvers: list[str] = Field(
        default=[],
        description="Models whose promotion needs two distinct approvers (with the file's "
        "`promotion.approvers`, only those identities or an admin may decide).",
    )
    tokens_file: str = Field(
        default="",
        description='JSON file `{"<token>": {"identity": "alice", "role": "approver", '
        '"expires": "2027-06-30T00:00:00Z"}}`; roles viewer < approver < admin; `expires` '
        "optional.",
    )
    tokens: str = Field(default="", description="The same JSON inline (when no file is given).")
    available_timeout_s: float = Field(
        default=120.0, gt=0, description="How long a new version may take to become AVAILABLE."
    )
    smoke_examples: int = Field(
        default=4, ge=1, description="Examples from the eval window sent as the smoke prediction."
    )
    rollback_min_coverage: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Label coverage from which a window counts in the rollback watch (a "
        "promotion is rolled back by itself when worse than the version it replaced on every "
        "watched window; per model `promotion.auto_rollback`, default on for auto, off for "
        "manual).",
    )
    validator_url: str = Field(
        default="",
        description="Base URL of the validator's API (http://host:port), read by the console "
        "through the promoter; empty: the console shows no windows.",
    )
    trigger_url: str = Field(
        default="", description="Base URL of the trigger's API, for the console's runs view."
    )
    monitor_url: str = Field(
        default="", description="Base URL of the monitor's API, for the console's quality view."
    )
    upstream_timeout_s: float = Field(
        default=10.0, gt=0, description="How long the console's reads of other services may take."
    )
    serving_config_file: str = Field(
        default="",
        description="Where every config applied to the model servers is also written (the "
        "file their --model_config_file reads at start, so a restarted replica serves the "
        "current layout); empty: none.",
    )
    http_host: str = Field(default="127.0.0.1", description="Bind address of the approval API.")
    http_port: int = Field(default=8084, ge=0, description="Port of the approval API.")


def load_settings() -> tuple[CommonSettings, PromoterSettings]:
    return CommonSettings(), PromoterSettings()
