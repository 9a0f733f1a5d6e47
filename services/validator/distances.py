"""Drift and skew distances, measured for every feature (not only crossings).

TFDV writes a distance only when a comparator threshold is set and reports an
anomaly only above it; we publish every value, so we compute the same measures
from the statistics protos. The algorithms follow TFDV 1.16.1's C++ (L-infinity
over rank histograms, each side normalised by its own total; Jensen-Shannon
divergence, log base 2, capped at 1, over histograms rebucketed onto the union
of their boundaries with uniform density inside a bucket; NaN counts ignored).
``tests/unit/test_distances.py`` checks equality with ``tfdv.validate_statistics``.
"""

from __future__ import annotations

import math

import numpy as np
from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2
from tensorflow_metadata.proto.v0.statistics_pb2 import FeatureNameStatistics as FeatureStats
from tensorflow_metadata.proto.v0.statistics_pb2 import Histogram


def category_counts(f: FeatureStats) -> dict[str, float]:
    """Label -> count from the rank histogram (missing values excluded)."""
    out: dict[str, float] = {}
    if f.HasField("string_stats"):
        for b in f.string_stats.rank_histogram.buckets:
            out.setdefault(b.label, b.sample_count)
    return out


def linf(a: FeatureStats, b: FeatureStats) -> tuple[float, str]:
    """(distance, the value with the largest difference)."""
    pa_, pb = _normalise(category_counts(a)), _normalise(category_counts(b))
    best_value, best = "", 0.0
    # Byte order with >= so the last tie wins, as TFDV reports it.
    for k in sorted(set(pa_) | set(pb), key=lambda s: s.encode()):
        d = abs(pa_.get(k, 0.0) - pb.get(k, 0.0))
        if d >= best:
            best_value, best = k, d
    return best, best_value


def _normalise(counts: dict[str, float]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else dict(counts)


def histogram(f: FeatureStats, source: int) -> Histogram | None:
    if not f.HasField("num_stats"):
        return None
    want = (
        Histogram.QUANTILES
        if source == schema_pb2.HistogramSelection.QUANTILES
        else Histogram.STANDARD
    )
    for h in f.num_stats.histograms:
        if h.type == want:
            return h
    return None


def jensen_shannon(
    a: FeatureStats, b: FeatureStats, source: int = schema_pb2.HistogramSelection.QUANTILES
) -> float | None:
    """JSD of two features' distributions; None when either side has no data."""
    ca, cb = category_counts(a), category_counts(b)
    if ca and cb:
        keys = sorted(set(ca) | set(cb))
        p = np.array([ca.get(k, 0.0) for k in keys])
        q = np.array([cb.get(k, 0.0) for k in keys])
        return _jsd(p, q)
    ha, hb = histogram(a, source), histogram(b, source)
    if ha is None or hb is None:
        return None
    p, q = _aligned(ha, hb)
    if p.sum() == 0 or q.sum() == 0:
        return None
    return _jsd(p, q)


def _jsd(p: np.ndarray, q: np.ndarray) -> float:
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    return min((_kl(p, m) + _kl(q, m)) / 2, 1.0)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    nz = (p > 0) & (q > 0)
    return float(np.sum(p[nz] * np.log2(p[nz] / q[nz])))


def _split(h: Histogram) -> tuple[list[tuple[float, float, float]], dict[float, float], float]:
    """Regular buckets, zero-width (point) buckets by value, mass in infinite buckets."""
    regular: list[tuple[float, float, float]] = []
    points: dict[float, float] = {}
    infinite = 0.0
    for bk in h.buckets:
        lo, hi, c = bk.low_value, bk.high_value, bk.sample_count
        if not (math.isfinite(lo) and math.isfinite(hi)):
            infinite += c
        elif lo == hi:
            points[lo] = points.get(lo, 0.0) + c
        else:
            regular.append((lo, hi, c))
    return regular, points, infinite


def _rebucket(bounds: list[float], buckets: list[tuple[float, float, float]]) -> list[float]:
    """Spread each bucket's count over ``bounds`` assuming uniform density."""
    out: list[float] = []
    i = 0
    for lo, hi, c in buckets:
        while lo > bounds[i]:
            out.append(0.0)
            i += 1
        start = i
        while hi > bounds[i]:
            i += 1
        for j in range(start, i):
            out.append((bounds[j + 1] - bounds[j]) / (hi - lo) * c)
    out.extend(0.0 for _ in range(i, len(bounds) - 1))
    return out


def _aligned(a: Histogram, b: Histogram) -> tuple[np.ndarray, np.ndarray]:
    ra, pa_, ia = _split(a)
    rb, pb, ib = _split(b)
    edges_a = {x for lo, hi, _ in ra for x in (lo, hi)}
    edges_b = {x for lo, hi, _ in rb for x in (lo, hi)}
    if edges_a == edges_b:
        ca, cb = [c for *_, c in ra], [c for *_, c in rb]
    else:
        bounds = sorted(edges_a | edges_b)
        ca, cb = _rebucket(bounds, ra), _rebucket(bounds, rb)
    for v in sorted(set(pa_) | set(pb)):
        ca.append(pa_.get(v, 0.0))
        cb.append(pb.get(v, 0.0))
    # Mass at infinity never matches the other side.
    if ia:
        ca.append(ia)
        cb.append(0.0)
    if ib:
        ca.append(0.0)
        cb.append(ib)
    return np.asarray(ca, float), np.asarray(cb, float)


def is_categorical(f: FeatureStats) -> bool:
    return f.type == statistics_pb2.FeatureNameStatistics.STRING or f.HasField("string_stats")


def present_count(f: FeatureStats) -> int:
    common = f.string_stats.common_stats if f.HasField("string_stats") else f.num_stats.common_stats
    return int(common.num_non_missing)
