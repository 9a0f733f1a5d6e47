"""A window's TFDV statistics as a self-contained HTML page: no script, no CDN.

TFDV's own view (Facets) loads its scripts from a CDN and stays blank on a machine
without internet; this page is rendered here from the same ``DatasetFeatureStatisticsList``
(pure: proto in, text out), beside a baseline when one is given: per feature its counts
and missing share, numeric summaries with a histogram, the top categories with their
share, each drawn as inline SVG next to the baseline's.
"""

from __future__ import annotations

import html
from typing import Any

from tensorflow_metadata.proto.v0 import statistics_pb2

COLORS = ("#2f6db5", "#e07b39")  # the window, the baseline
TOP = 12
W, H = 320, 90

STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.3em 0 1.2em}
td,th{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:right}
th{text-align:left}.feature{margin-bottom:1.5em}.k{color:#666}
.legend span{display:inline-block;width:.9em;height:.9em;margin:0 .3em 0 1em}
"""


def _name(f: statistics_pb2.FeatureNameStatistics) -> str:
    return ".".join(f.path.step) if f.path.step else f.name


def _features(
    stats: statistics_pb2.DatasetFeatureStatisticsList | None,
) -> dict[str, statistics_pb2.FeatureNameStatistics]:
    if stats is None or not stats.datasets:
        return {}
    return {_name(f): f for f in stats.datasets[0].features}


def _common(f: statistics_pb2.FeatureNameStatistics) -> Any:
    if f.HasField("num_stats"):
        return f.num_stats.common_stats
    if f.HasField("string_stats"):
        return f.string_stats.common_stats
    return None


def _num(x: float) -> str:
    return f"{x:,.4g}"


def _missing(f: statistics_pb2.FeatureNameStatistics | None) -> str:
    c = _common(f) if f is not None else None
    if c is None:
        return "-"
    total = c.num_non_missing + c.num_missing
    return f"{100 * c.num_missing / total:.1f} %" if total else "-"


def _histogram(f: statistics_pb2.FeatureNameStatistics | None) -> list[tuple[float, float, float]]:
    if f is None or not f.HasField("num_stats"):
        return []
    for h in f.num_stats.histograms:
        if h.type == statistics_pb2.Histogram.STANDARD:
            return [(b.low_value, b.high_value, b.sample_count) for b in h.buckets]
    return []


def _svg_histograms(series: list[list[tuple[float, float, float]]]) -> str:
    """Each histogram as bars of its share of the data, on one shared value axis."""
    series = [s for s in series if s]
    if not series:
        return ""
    lo = min(b[0] for s in series for b in s)
    hi = max(b[1] for s in series for b in s)
    span = (hi - lo) or 1.0
    shares = [[(a, b, c / (sum(x[2] for x in s) or 1)) for a, b, c in s] for s in series]
    top = max(c for s in shares for _, _, c in s) or 1.0
    bars = []
    for i, s in enumerate(shares):
        for a, b, c in s:
            x = (a - lo) / span * W
            w = max(1.0, (b - a) / span * W / len(shares))
            h = c / top * (H - 12)
            bars.append(
                f'<rect x="{x + i * w:.1f}" y="{H - 12 - h:.1f}" width="{w:.1f}" '
                f'height="{h:.1f}" fill="{COLORS[i]}" fill-opacity="0.8"/>'
            )
    axis = (
        f'<text x="0" y="{H}" font-size="10">{html.escape(_num(lo))}</text>'
        f'<text x="{W}" y="{H}" font-size="10" text-anchor="end">{html.escape(_num(hi))}</text>'
    )
    return f'<svg width="{W}" height="{H}" role="img">{"".join(bars)}{axis}</svg>'


def _top_values(f: statistics_pb2.FeatureNameStatistics | None) -> dict[str, float]:
    """Category -> share of the non-missing values."""
    if f is None or not f.HasField("string_stats"):
        return {}
    s = f.string_stats
    counts: dict[str, float] = {}
    if s.rank_histogram.buckets:
        counts = {b.label: b.sample_count for b in s.rank_histogram.buckets}
    else:
        counts = {v.value: v.frequency for v in s.top_values}
    total = s.common_stats.num_non_missing or sum(counts.values()) or 1
    return {k: v / total for k, v in counts.items()}


def _svg_categories(window: dict[str, float], base: dict[str, float]) -> str:
    labels = sorted(window, key=lambda k: -window[k])[:TOP]
    labels += [k for k in sorted(base, key=lambda k: -base[k]) if k not in labels][
        : max(0, TOP - len(labels))
    ]
    if not labels:
        return ""
    row, width, bars_at, text_w = 16, 440, 160, 90
    top = max([*window.values(), *base.values(), 1e-9])
    parts = []
    for i, label in enumerate(labels):
        y = i * row
        shown = label if len(label) <= 22 else label[:21] + "…"
        parts.append(
            f'<text x="0" y="{y + 11}" font-size="11">{html.escape(shown or "(empty)")}</text>'
        )
        for j, shares in enumerate((window, base) if base else (window,)):
            v = shares.get(label, 0.0)
            w = v / top * (width - bars_at - text_w)
            parts.append(
                f'<rect x="{bars_at}" y="{y + 2 + j * 6}" width="{w:.1f}" height="6" '
                f'fill="{COLORS[j]}"/>'
            )
        v = window.get(label, 0.0)
        b = f" / {100 * base.get(label, 0.0):.1f}" if base else ""
        parts.append(
            f'<text x="{width}" y="{y + 11}" font-size="10" text-anchor="end">'
            f"{100 * v:.1f}{b} %</text>"
        )
    return f'<svg width="{width}" height="{len(labels) * row}" role="img">{"".join(parts)}</svg>'


def _summary(f: statistics_pb2.FeatureNameStatistics | None) -> list[tuple[str, str]]:
    if f is None:
        return []
    c = _common(f)
    rows = [
        ("present", _num(c.num_non_missing) if c is not None else "-"),
        ("missing", _missing(f)),
    ]
    if f.HasField("num_stats"):
        n = f.num_stats
        rows += [
            ("mean", _num(n.mean)),
            ("std dev", _num(n.std_dev)),
            ("min", _num(n.min)),
            ("median", _num(n.median)),
            ("max", _num(n.max)),
            ("zeros", _num(n.num_zeros)),
        ]
    elif f.HasField("string_stats"):
        rows += [("unique", _num(f.string_stats.unique))]
    return rows


def render(
    stats: statistics_pb2.DatasetFeatureStatisticsList,
    base: statistics_pb2.DatasetFeatureStatisticsList | None,
    lhs: str,
    rhs: str = "",
    title: str = "",
) -> str:
    """The whole page; ``base`` (named ``rhs``) drawn beside the window (``lhs``)."""
    mine, theirs = _features(stats), _features(base)
    n = stats.datasets[0].num_examples if stats.datasets else 0
    legend = f'<span style="background:{COLORS[0]}"></span>{html.escape(lhs)} ({n:,} examples)'
    if base is not None and base.datasets:
        legend += (
            f'<span style="background:{COLORS[1]}"></span>{html.escape(rhs)} '
            f"({base.datasets[0].num_examples:,} examples)"
        )
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title or lhs)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title or lhs)}</h1><p class='legend'>{legend}</p>",
    ]
    for name in sorted(mine):
        f, b = mine[name], theirs.get(name)
        mine_rows, base_rows = _summary(f), dict(_summary(b))
        head = "<tr><th></th><th>window</th>" + ("<th>baseline</th>" if base else "") + "</tr>"
        body = "".join(
            f"<tr><th class='k'>{html.escape(k)}</th><td>{html.escape(v)}</td>"
            + (f"<td>{html.escape(base_rows.get(k, '-'))}</td>" if base else "")
            + "</tr>"
            for k, v in mine_rows
        )
        if f.HasField("num_stats"):
            picture = _svg_histograms([_histogram(f), _histogram(b)])
        else:
            picture = _svg_categories(_top_values(f), _top_values(b))
        out.append(
            f"<section class='feature' id='{html.escape(name)}'><h2>{html.escape(name)}</h2>"
            f"<table>{head}{body}</table>{picture}</section>"
        )
    out.append("</body></html>")
    return "".join(out)


def feature_data(
    stats: statistics_pb2.DatasetFeatureStatisticsList,
    base: statistics_pb2.DatasetFeatureStatisticsList | None,
    name: str,
) -> dict[str, Any] | None:
    """One feature's distribution in a window and its baseline, as JSON for charts:
    histogram buckets (numeric) or category shares (categorical), with the summary rows.
    None when the window has no such feature."""
    mine = _features(stats).get(name)
    if mine is None:
        return None
    theirs = _features(base).get(name)

    def side(f: statistics_pb2.FeatureNameStatistics | None) -> dict[str, Any] | None:
        if f is None:
            return None
        return {
            "summary": dict(_summary(f)),
            "histogram": [{"low": a, "high": b, "count": c} for a, b, c in _histogram(f)],
            "categories": _top_values(f),
        }

    return {
        "feature": name,
        "kind": "numeric" if mine.HasField("num_stats") else "categorical",
        "window": side(mine),
        "baseline": side(theirs),
    }
