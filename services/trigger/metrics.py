"""trigger's Prometheus metrics, on a registry the app injects."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from shared.consume import ConsumerMetrics
from shared.lease import LeaderGauge

M = TypeVar("M", bound=MetricWrapperBase)


class _Bound(Generic[M]):
    """A metric with its ``model`` label filled in; ``labels`` takes the rest."""

    def __init__(self, metric: M, model: str) -> None:
        self.metric = metric
        self.model = model

    def labels(self, *rest: str) -> Any:
        return self.metric.labels(self.model, *rest)


class ModelMetrics:
    """One model's view of the trigger's metrics: the core never spells the label."""

    def __init__(self, m: TriggerMetrics, model: str) -> None:
        self.decisions = _Bound(m.decisions, model)
        self.triggers = _Bound(m.triggers, model)
        self.runs = _Bound(m.runs, model)
        for state in ("succeeded", "failed"):
            self.runs.labels(state)  # so increase() sees the first event after a restart
        self.streak = _Bound(m.streak, model)
        self.blocked = _Bound(m.blocked, model)
        self.in_flight = m.in_flight.labels(model)
        self.duration = m.duration.labels(model)
        self.submit_latency = m.submit_latency.labels(model)
        self.armed = m.armed.labels(model)
        self.attempts = m.attempts.labels(model)
        self.retried = _Bound(m.retried, model)
        self.backend_outage = m.backend_outage.labels(model)


class TriggerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # How its event consumers settle records: retries, dead letters, outages.
        self.consumer = ConsumerMetrics(registry, "trigger")
        self.decisions = Counter(
            "ctrain_trigger_decisions_total",
            "Decisions, by policy that fired (or none) and whether a run started.",
            ["model", "trigger", "taken"],
            registry=registry,
        )
        self.triggers = Counter(
            "ctrain_trigger_triggers_total",
            "Runs started, by model and reason.",
            ["model", "reason"],
            registry=registry,
        )
        self.runs = Counter(
            "ctrain_trigger_runs_total",
            "Runs finished, by model and state.",
            ["model", "state"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "ctrain_trigger_runs_in_flight", "Runs in flight.", ["model"], registry=registry
        )
        self.duration = Histogram(
            "ctrain_trigger_run_duration_seconds",
            "Submit to finish of a pipeline run.",
            ["model"],
            buckets=(30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
            registry=registry,
        )
        self.submit_latency = Histogram(
            "ctrain_trigger_decision_to_submit_seconds",
            "WindowValidated received to run submitted.",
            ["model"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
            registry=registry,
        )
        self.armed = Gauge(
            "ctrain_trigger_armed",
            "1 while a condition that holds would start a run (no run in flight or awaited).",
            ["model"],
            registry=registry,
        )
        self.streak = Gauge(
            "ctrain_trigger_streak",
            "Judged periods in a row over threshold, by kind (drift, skew).",
            ["model", "kind"],
            registry=registry,
        )
        self.attempts = Gauge(
            "ctrain_trigger_episode_attempts",
            "Runs started in this episode (since the serving model last changed).",
            ["model"],
            registry=registry,
        )
        self.retried = Counter(
            "ctrain_trigger_decisions_retried_total",
            "Decisions taken again from the saved state, by why: StateConflict (another "
            "replica saved the model's state first) or Fenced (the lease moved).",
            ["model", "reason"],
            registry=registry,
        )
        self.leader = LeaderGauge(registry, "trigger")
        self.backend_outage = Gauge(
            "ctrain_trigger_backend_outage",
            "1 while the pipeline backend (KFP, or the local worker) refuses this model's "
            "submits: the decision is held and taken again, by the event or the tick.",
            ["model"],
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
            ["model", "guard"],
            registry=registry,
        )

        self.foreign = Counter(
            "ctrain_trigger_foreign_validations_total",
            "Validations of streams no model of this trigger follows (skipped).",
            registry=registry,
        )

    def for_model(self, model: str) -> ModelMetrics:
        return ModelMetrics(self, model)
