"""What the trigger knows about one model: its code, schema, policy and training knobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.trigger import policy as pol
from services.trigger.settings import TriggerSettings
from shared.config import Labels
from shared.model_fields import PolicyFields, values_for
from shared.tasks import HEADLINE_METRIC

_D = PolicyFields()


@dataclass(frozen=True)
class TriggerConfig:
    model: str
    module_path: str
    schema_path: str
    policy: pol.Policy
    epochs: int = _D.epochs
    blocking: tuple[str, ...] = tuple(_D.blocking_anomalies)
    task: str = "binary"
    # Labels from their own stream: the label features and the default at maturity.
    label_features: tuple[str, ...] = ()
    label_default: dict[str, Any] | None = None
    # Options of the transform's and evaluation's Beam pipelines; empty: in-process.
    beam_args: tuple[str, ...] = ()


def policy_from(s: TriggerSettings, labels: Labels | None = None) -> pol.Policy:
    """The decision policy of one model, from its effective settings by name."""
    spec = labels or Labels()
    return pol.Policy(
        **values_for(
            pol.Policy,
            s,
            label_stream=spec.source == "stream",
            label_maturity_s=spec.label_maturity_s,
            label_default=spec.label_default is not None,
            quality_metric=quality_metric(s),
        )
    )


def quality_metric(s: TriggerSettings) -> str:
    """The quality policy's metric; "" (off) without a floor or a margin."""
    if s.quality_floor is None and not s.quality_margin:
        return ""
    if s.quality_metric != "auto":
        return s.quality_metric
    return HEADLINE_METRIC[s.task]
