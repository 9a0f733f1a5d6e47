"""The validator's config of one stream, from its effective settings by name."""

from __future__ import annotations

from services.validator import checks
from services.validator.core import ValidatorConfig
from services.validator.settings import ValidatorSettings
from shared.model_fields import values_for


def config_from(
    s: ValidatorSettings, model: str | None = None, optional: frozenset[str] = frozenset()
) -> ValidatorConfig:
    """``optional``: label features the stream's examples arrive without (labels joined
    from their own stream): neither required nor measured."""
    return ValidatorConfig(
        **values_for(
            ValidatorConfig,
            s,
            model=model or s.model,
            defaults=checks.Defaults(
                **values_for(checks.Defaults, s, ignore=frozenset(s.ignore_features) | optional)
            ),
            policy=checks.AnomalyPolicy(
                **values_for(
                    checks.AnomalyPolicy,
                    s,
                    blocking=frozenset(s.blocking_anomalies),
                    optional=optional,
                )
            ),
            beam_options=tuple(s.beam_options),
        )
    )
