"""monitor's Prometheus metrics, on a registry the app injects."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.consume import ConsumerMetrics
from shared.events import WindowScored
from shared.lease import LeaderGauge

LABEL_OUTCOMES = (
    "joined",
    "held",
    "redelivered",
    "duplicate",
    "in_window",
    "late_label",
    "conflicting_label",
    "unknown_example",
    "unknown_model",
    "invalid_label",
)


class MonitorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.consumer = ConsumerMetrics(registry, "monitor")
        self.leader = LeaderGauge(registry, "monitor")
        self.quality = Gauge(
            "ctrain_monitor_quality",
            "Latest window's quality of a model version: realized (on labels) or estimated "
            "(without labels, binary classifiers).",
            ["model", "version", "role", "metric", "kind"],
            registry=registry,
        )
        self.coverage = Gauge(
            "ctrain_monitor_label_coverage",
            "Fraction of the latest scored window's examples that have a label.",
            ["model"],
            registry=registry,
        )
        self.scored = Counter(
            "ctrain_monitor_windows_scored_total",
            "WindowScored events published (first scoring and each coverage step).",
            ["model", "role"],
            registry=registry,
        )
        self.unscored = Counter(
            "ctrain_monitor_windows_unscored_total",
            "Judged windows not scored, by why (no stable version yet, empty).",
            ["model", "reason"],
            registry=registry,
        )
        self.rows = Counter(
            "ctrain_monitor_rows_scored_total",
            "Examples scored through serving.",
            ["model"],
            registry=registry,
        )
        self.scoring_seconds = Histogram(
            "ctrain_monitor_scoring_seconds",
            "Time to score one window (read, encode, Predict, store).",
            ["model"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self.labels = Counter(
            "ctrain_monitor_labels_total",
            "Label records by outcome: joined, held (its example not judged yet), "
            "redelivered, duplicate (the same label again), in_window (the example carries "
            "its label), and the dead-lettered: "
            "late_label, conflicting_label, unknown_example, unknown_model, invalid_label.",
            ["model", "outcome"],
            registry=registry,
        )
        self.pending = Gauge(
            "ctrain_monitor_labels_held",
            "Labels held until their example's window is judged.",
            ["model"],
            registry=registry,
        )

        self.timer_failures = Counter(
            "ctrain_monitor_timer_failures_total",
            "Upkeep steps (expiring held labels, closing windows) that failed and will run again.",
            registry=registry,
        )

    def touch(self, models: list[str]) -> None:
        for m in models:
            for o in LABEL_OUTCOMES:
                self.labels.labels(m, o)
            self.pending.labels(m).set(0)

    def observe(self, e: WindowScored) -> None:
        v = str(e.version)
        for kind, values in (("realized", e.metrics.realized), ("estimated", e.metrics.estimated)):
            for name, value in values.items():
                self.quality.labels(e.model, v, e.role, name, kind).set(value)
        self.coverage.labels(e.model).set(e.label_coverage)
