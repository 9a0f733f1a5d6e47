"""ingest's Prometheus metrics, on a registry the app injects."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.accepted = Counter(
            "ctrain_ingest_examples_accepted_total",
            "Examples written to a window.",
            registry=registry,
        )
        self.rejected = Counter(
            "ctrain_ingest_examples_rejected_total",
            "Records sent to the DLQ, by reason.",
            ["reason"],
            registry=registry,
        )
        self.replayed = Counter(
            "ctrain_ingest_examples_replay_skipped_total",
            "Records skipped after a restart because a closed window already holds them.",
            registry=registry,
        )
        self.watermarks = Counter(
            "ctrain_ingest_watermark_records_total",
            "Watermark records read (a producer's event time or end of input; not examples)",
            registry=registry,
        )
        self.windows = Counter(
            "ctrain_ingest_windows_closed_total",
            "Windows closed, by what closed them.",
            ["reason"],
            registry=registry,
        )
        self.window_size = Histogram(
            "ctrain_ingest_window_examples",
            "Examples per closed window.",
            buckets=(10, 100, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000),
            registry=registry,
        )
        self.close_lag = Histogram(
            "ctrain_ingest_window_close_lag_seconds",
            "Wall time from a window's last record read to its WindowClosed published.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=registry,
        )
        self.open_windows = Gauge(
            "ctrain_ingest_open_windows", "Windows currently open.", registry=registry
        )
        self.watermark = Gauge(
            "ctrain_ingest_watermark_seconds",
            "Largest event time seen, per partition.",
            ["partition"],
            registry=registry,
        )
        self.http_lines = Counter(
            "ctrain_ingest_http_lines_total",
            "Lines received on POST /v1/examples, by outcome.",
            ["outcome"],
            registry=registry,
        )
