"""Pure checks on statistics: anomalies against the schema, distances, the verdict.

Functions here take protos and return plain values; tests call them directly
on statistics computed from files (the TFX ``_Validate`` style).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from services.validator import distances as dist
from shared.events import Anomaly, Distance, FeatureDistances, Verdict
from shared.model_fields import ValidationFields
from shared.schema import without_comparators
from shared.stats import feature_stats

Kind = Literal["drift", "skew"]
_SOURCES = {
    "quantiles": schema_pb2.HistogramSelection.QUANTILES,
    "standard": schema_pb2.HistogramSelection.STANDARD,
}


_V = ValidationFields()


@dataclass(frozen=True)
class Defaults:
    """Thresholds for features whose schema entry has no comparator.

    Chosen above the sampling noise of windows of a few hundred rows: on the taxi
    data, two random halves of one month (about 220 rows each) reach L-infinity
    0.07 (company) and JSD 0.21 (a census tract) by chance alone.
    """

    drift_linf: float = _V.drift_linf  # the settings' defaults (shared/model_fields.py)
    drift_jsd: float = _V.drift_jsd
    skew_linf: float = _V.skew_linf
    skew_jsd: float = _V.skew_jsd
    jsd_histogram: str = _V.jsd_histogram
    ignore: frozenset[str] = frozenset()


@dataclass(frozen=True)
class AnomalyPolicy:
    blocking: frozenset[str]
    new_value_blocking_fraction: float = _V.new_value_blocking_fraction
    # Features a window may lack (label features whose labels arrive on their own stream):
    # their presence is not checked.
    optional: frozenset[str] = frozenset()


def find_anomalies(
    stats: statistics_pb2.DatasetFeatureStatisticsList,
    schema: schema_pb2.Schema,
    policy: AnomalyPolicy,
    environment: str = "",
) -> list[Anomaly]:
    import tensorflow_data_validation as tfdv

    checked = without_comparators(schema)
    for f in checked.feature:
        if f.name in policy.optional:
            f.presence.min_fraction = 0.0
            f.presence.min_count = 0
    result = tfdv.validate_statistics(stats, checked, environment=environment or None)
    return classify(result, policy)


_SHARE = re.compile(r"\((<|~)(\d+(?:\.\d+)?)%\)")


def classify(result: anomalies_pb2.Anomalies, policy: AnomalyPolicy) -> list[Anomaly]:
    out: list[Anomaly] = []
    if result.data_missing:
        out.append(
            Anomaly(
                feature="",
                code="DATA_MISSING",
                severity="blocking" if "DATA_MISSING" in policy.blocking else "warning",
                description="the window has no examples",
            )
        )
    for name, info in sorted(result.anomaly_info.items()):
        for reason in info.reason:
            code = anomalies_pb2.AnomalyInfo.Type.Name(reason.type)
            blocking = code in policy.blocking
            if code == "ENUM_TYPE_UNEXPECTED_STRING_VALUES":
                # TFDV words the share of each unexpected value as "(~33%)" or "(<1%)".
                shares = [
                    float(n) / 100 * (0.99 if op == "<" else 1.0)
                    for op, n in _SHARE.findall(reason.description)
                ]
                frac = max(shares) if shares else 1.0
                blocking = frac > policy.new_value_blocking_fraction
            out.append(
                Anomaly(
                    feature=name,
                    code=code,
                    severity="blocking" if blocking else "warning",
                    description=reason.description or reason.short_description,
                )
            )
    for reason in result.dataset_anomaly_info.reason:
        code = anomalies_pb2.AnomalyInfo.Type.Name(reason.type)
        out.append(
            Anomaly(
                feature="",
                code=code,
                severity="blocking" if code in policy.blocking else "warning",
                description=reason.description,
            )
        )
    return out


def _threshold(
    f: schema_pb2.Feature | None, kind: Kind, categorical: bool, d: Defaults
) -> tuple[float, int]:
    source = _SOURCES[d.jsd_histogram]
    default = (
        (d.drift_linf if categorical else d.drift_jsd)
        if kind == "drift"
        else (d.skew_linf if categorical else d.skew_jsd)
    )
    if f is None:
        return default, source
    comp = f.drift_comparator if kind == "drift" else f.skew_comparator
    if categorical and comp.HasField("infinity_norm"):
        return comp.infinity_norm.threshold, source
    if not categorical and comp.HasField("jensen_shannon_divergence"):
        jsd = comp.jensen_shannon_divergence
        if jsd.HasField("source") and jsd.source.type != schema_pb2.HistogramSelection.DEFAULT:
            source = jsd.source.type
        return jsd.threshold, source
    return default, source


def measure(
    current: statistics_pb2.DatasetFeatureStatistics,
    baseline: statistics_pb2.DatasetFeatureStatistics,
    schema: schema_pb2.Schema,
    kind: Kind,
    baseline_id: str,
    defaults: Defaults,
) -> dict[str, Distance]:
    """A distance for every feature present on both sides; value None if one side is empty."""
    cur, base = feature_stats(current), feature_stats(baseline)
    by_name = {f.name: f for f in schema.feature}
    out: dict[str, Distance] = {}
    for name in sorted((set(cur) & set(base)) - defaults.ignore):
        a, b = cur[name], base[name]
        categorical = dist.is_categorical(a) or dist.is_categorical(b)
        threshold, source = _threshold(by_name.get(name), kind, categorical, defaults)
        value: float | None
        if categorical:
            value = (
                dist.linf(a, b)[0] if dist.category_counts(a) and dist.category_counts(b) else None
            )
        else:
            value = dist.jensen_shannon(a, b, source)
        out[name] = Distance(
            measure="linf" if categorical else "jensen_shannon",
            value=value,
            threshold=threshold,
            crossed=value is not None and value > threshold,
            baseline=baseline_id,
            count=dist.present_count(a),
            baseline_count=dist.present_count(b),
        )
    return out


def merge_features(drift: dict[str, Distance], skew: dict[str, Distance]) -> list[FeatureDistances]:
    return [
        FeatureDistances(name=n, drift=drift.get(n), skew=skew.get(n))
        for n in sorted(set(drift) | set(skew))
    ]


def verdict(
    example_count: int,
    min_examples: int,
    anomalies: list[Anomaly],
    features: list[FeatureDistances],
) -> Verdict:
    if example_count < min_examples:
        return "insufficient_data"
    if any(a.severity == "blocking" for a in anomalies):
        return "anomalous"
    if any(f.drift is not None and f.drift.crossed for f in features):
        return "drift"
    if any(f.skew is not None and f.skew.crossed for f in features):
        return "skew"
    return "ok"
