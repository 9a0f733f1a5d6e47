"""promoter's Prometheus metrics, on a registry the app injects."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.consume import ConsumerMetrics
from shared.lease import LeaderGauge


class PromoterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # How its event consumers settle records: retries, dead letters, outages.
        self.consumer = ConsumerMetrics(registry, "promoter")
        self.leader = LeaderGauge(registry, "promoter")
        self.auto_rollbacks = Counter(
            "ctrain_promoter_auto_rollbacks_total",
            "Promotions rolled back by the promoter itself: the new stable was worse on live "
            "data than the version it replaced, on every watched window.",
            ["model"],
            registry=registry,
        )
        self.watches = Counter(
            "ctrain_promoter_rollback_watches_total",
            "Watched promotions that ended, by verdict (keep, rollback).",
            ["model", "verdict"],
            registry=registry,
        )
        self.promotions = Counter(
            "ctrain_promoter_promotions_total",
            "Promotion events, by decision (auto, approved, rejected, rolled_back, failed, ...).",
            ["decision"],
            registry=registry,
        )
        self.candidates = Gauge(
            "ctrain_promoter_candidates",
            "Candidates by model and state (refreshed every few seconds).",
            ["model", "state"],
            registry=registry,
        )
        self.pending_oldest = Gauge(
            "ctrain_promoter_pending_approval_oldest_timestamp_seconds",
            "Unix time the oldest candidate now pending approval entered that state "
            "(no series when none waits).",
            ["model"],
            registry=registry,
        )
        self.approval_wait = Histogram(
            "ctrain_promoter_approval_wait_seconds",
            "Time from pending_approval to approved or rejected.",
            ["model"],
            buckets=(60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400),
            registry=registry,
        )
        self.serving_version = Gauge(
            "ctrain_promoter_serving_version",
            "Version the promoter has put behind each label, per model.",
            ["model", "label"],
            registry=registry,
        )
        self.observed_version = Gauge(
            "ctrain_promoter_serving_observed_version",
            "Version TF Serving resolves each label to (GetModelStatus by label); 0 if none.",
            ["model", "label"],
            registry=registry,
        )
        self.serving_reachable = Gauge(
            "ctrain_promoter_serving_reachable",
            "1 when TF Serving answered the promoter's last call or probe, 0 while it is "
            "unreachable (an outage, not a missing label: observed versions keep their value).",
            registry=registry,
        )
        self.serving_reachable.set(1)
        self.promotion_outage = Gauge(
            "ctrain_promoter_promotion_outage",
            "1 while a promotion waits for serving or Redis to answer again.",
            registry=registry,
        )
        self.promotion_seconds = Histogram(
            "ctrain_promoter_promotion_seconds",
            "Approval to stable label on the new version.",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300),
            registry=registry,
        )
