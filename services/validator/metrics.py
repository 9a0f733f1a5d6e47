"""validator's Prometheus metrics, on a registry the app injects."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.consume import ConsumerMetrics


class ValidatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # How its event consumers settle records: retries, dead letters, outages.
        self.consumer = ConsumerMetrics(registry, "validator")
        self.distance = Gauge(
            "ctrain_validator_feature_distance",
            "Latest measured distance per feature (drift: previous window; skew: training data).",
            ["feature", "measure", "baseline"],
            registry=registry,
        )
        self.threshold = Gauge(
            "ctrain_validator_feature_threshold",
            "Threshold in force per feature.",
            ["feature", "measure", "baseline"],
            registry=registry,
        )
        self.crossed_streak = Gauge(
            "ctrain_validator_feature_crossed_streak",
            "Windows in a row, the latest included, whose distance crossed the threshold.",
            ["feature", "measure", "baseline"],
            registry=registry,
        )
        self.anomalies = Counter(
            "ctrain_validator_anomalies_total",
            "Anomalies found, by severity.",
            ["severity"],
            registry=registry,
        )
        self.windows = Counter(
            "ctrain_validator_windows_total",
            "Windows validated, by verdict.",
            ["verdict"],
            registry=registry,
        )
        self.duplicates = Counter(
            "ctrain_validator_redeliveries_total",
            "WindowClosed events already validated (republished, not recomputed).",
            registry=registry,
        )
        self.dead_letters = Counter(
            "ctrain_validator_dead_letters_total",
            "Windows given up on, by reason.",
            ["reason"],
            registry=registry,
        )
        self.seconds = Histogram(
            "ctrain_validator_processing_seconds",
            "WindowClosed to WindowValidated: read, statistics, anomalies, distances, artifacts.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=registry,
        )
        self.periods = Counter(
            "ctrain_validator_periods_total",
            "Judged periods (all partitions' windows of one event-time period) by verdict.",
            ["verdict"],
            registry=registry,
        )
        self.timer_failures = Counter(
            "ctrain_validator_timer_failures_total",
            "Failed rounds of the grace-time timer (an outage; the next round retries).",
            registry=registry,
        )
        self.late_windows = Counter(
            "ctrain_validator_late_windows_total",
            "Windows that arrived after their period was judged (grace time ran out).",
            registry=registry,
        )
        self.rows = Counter("ctrain_validator_rows_total", "Rows profiled.", registry=registry)
