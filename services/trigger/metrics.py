"""trigger's Prometheus metrics, on a registry the app injects."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class TriggerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "ctrain_trigger_decisions_total",
            "Decisions, by policy that fired (or none) and whether a run started.",
            ["trigger", "taken"],
            registry=registry,
        )
        self.triggers = Counter(
            "ctrain_trigger_triggers_total",
            "Runs started, by reason.",
            ["reason"],
            registry=registry,
        )
        self.runs = Counter(
            "ctrain_trigger_runs_total", "Runs finished, by state.", ["state"], registry=registry
        )
        for state in ("succeeded", "failed"):
            self.runs.labels(state)  # so increase() sees the first event after a restart
        self.in_flight = Gauge(
            "ctrain_trigger_runs_in_flight", "Runs in flight.", registry=registry
        )
        self.duration = Histogram(
            "ctrain_trigger_run_duration_seconds",
            "Submit to finish of a pipeline run.",
            buckets=(30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
            registry=registry,
        )
        self.submit_latency = Histogram(
            "ctrain_trigger_decision_to_submit_seconds",
            "WindowValidated received to run submitted.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
            registry=registry,
        )
        self.armed = Gauge(
            "ctrain_trigger_armed",
            "1 while a condition that holds would start a run (no run in flight or awaited).",
            registry=registry,
        )
        self.streak = Gauge(
            "ctrain_trigger_streak",
            "Judged periods in a row over threshold, by kind (drift, skew).",
            ["kind"],
            registry=registry,
        )
        self.attempts = Gauge(
            "ctrain_trigger_episode_attempts",
            "Runs started in this episode (since the serving model last changed).",
            registry=registry,
        )
        self.tick_failures = Counter(
            "ctrain_trigger_tick_failures_total",
            "Failed rounds of the retry tick (an outage; the next round retries).",
            registry=registry,
        )
        self.blocked = Counter(
            "ctrain_trigger_held_but_stopped_total",
            "Decisions where a policy held and a guard stopped it, by guard.",
            ["guard"],
            registry=registry,
        )
