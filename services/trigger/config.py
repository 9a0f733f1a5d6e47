"""What the trigger knows about one model: its code, schema, policy and training knobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.trigger import policy as pol


@dataclass(frozen=True)
class TriggerConfig:
    model: str
    module_path: str
    schema_path: str
    policy: pol.Policy
    epochs: int = 3
    blocking: tuple[str, ...] = ("SCHEMA_MISSING_COLUMN", "UNEXPECTED_DATA_TYPE")
    task: str = "binary"
    # Labels from their own stream: the label features and the default at maturity.
    label_features: tuple[str, ...] = ()
    label_default: dict[str, Any] | None = None
