"""The closed loop seen from outside: every ctrain topic tailed into one picture.

``ctrain demo``, the end-to-end and chaos tests and ``bench/loop.py`` all watch
the loop the same way an operator would: through the events the services
publish (docs/architecture.md §3), the services' HTTP APIs and the model server's gRPC API.
Nothing here reaches into a service's internals.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared import topics
from shared.events import (
    CandidateMetrics,
    DeadLetter,
    Event,
    ModelCandidate,
    PromotionEvent,
    TrainingRun,
    WindowClosed,
    WindowScored,
    WindowValidated,
    parse_event,
)

WATCHED = (
    topics.EXAMPLES_DLQ,
    topics.WINDOWS,
    topics.WINDOWS_DLQ,
    topics.VALIDATIONS,
    topics.TRAINING,
    topics.CANDIDATES,
    topics.PROMOTIONS,
    topics.QUALITY,
)


@dataclass
class LoopState:
    """What the loop has published so far; each event kept with when it arrived."""

    windows: dict[str, WindowClosed] = field(default_factory=dict)
    validations: dict[str, WindowValidated] = field(default_factory=dict)
    # Judged periods (every partition's window of one period, or a group of small ones).
    periods: dict[str, WindowValidated] = field(default_factory=dict)
    runs: dict[str, list[TrainingRun]] = field(default_factory=dict)
    candidates: dict[str, ModelCandidate] = field(default_factory=dict)
    promotions: list[PromotionEvent] = field(default_factory=list)
    # The monitor's scores (a window is scored again as its labels arrive).
    scored: list[WindowScored] = field(default_factory=list)
    dlq: list[DeadLetter] = field(default_factory=list)
    window_dlq: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    # How often each id was published: redelivery may repeat an identical event,
    # but a second *different* window/validation/run/promotion is a defect.
    published: Counter[tuple[str, str]] = field(default_factory=Counter)
    arrived: dict[tuple[str, str], float] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    _bodies: dict[tuple[str, str], str] = field(default_factory=dict)

    def add(self, ev: Event, at: float) -> None:
        key = _identity(ev)
        if key is not None:
            self.published[key] += 1
            self.arrived.setdefault(key, at)
            body = _content(ev)
            prev = self._bodies.setdefault(key, body)
            if prev != body:
                self.conflicts.append(f"{key[0]} {key[1]} published with different contents")
        if isinstance(ev, WindowClosed):
            self.windows.setdefault(ev.window_id, ev)
        elif isinstance(ev, WindowValidated) and ev.scope == "period":
            self.periods.setdefault(ev.window_id, ev)
        elif isinstance(ev, WindowValidated):
            self.validations.setdefault(ev.window_id, ev)
        elif isinstance(ev, TrainingRun):
            self.runs.setdefault(ev.run_id, []).append(ev)
        elif isinstance(ev, ModelCandidate):
            self.candidates.setdefault(ev.candidate_id, ev)
        elif isinstance(ev, PromotionEvent):
            if not any(p.id == ev.id for p in self.promotions):
                self.promotions.append(ev)
        elif isinstance(ev, WindowScored):
            if not any(x.id == ev.id for x in self.scored):
                self.scored.append(ev)
        elif isinstance(ev, DeadLetter):
            if not any(d.id == ev.id for d in self.dlq):
                self.dlq.append(ev)

    def run_state(self, run_id: str) -> str:
        order = {"submitted": 0, "running": 1, "succeeded": 2, "failed": 2}
        evs = self.runs.get(run_id, [])
        return max((e.state for e in evs), key=lambda s: order[s], default="")

    def judged_windows(self) -> set[str]:
        """Windows whose period has been judged."""
        return {m.window_id for p in self.periods.values() for m in p.members}

    def examples_accounted(self) -> int:
        return sum(w.example_count for w in self.windows.values()) + len(self.dlq)

    def stable_version(self, model: str) -> int | None:
        for p in reversed(self.promotions):
            if p.model == model and "stable" in p.labels:
                return p.labels["stable"]
        return None


HEADLINE = ("auc", "sparse_categorical_accuracy", "mean_absolute_error")


def headline(metrics: CandidateMetrics | None) -> tuple[str, float] | None:
    """The task's headline metric among TFMA's overall ones: AUC (binary), accuracy
    (multi-class) or mean absolute error (regression)."""
    if metrics is None:
        return None
    for name in HEADLINE:
        if name in metrics.overall:
            return name, metrics.overall[name]
    return None


def _identity(ev: Event) -> tuple[str, str] | None:
    if isinstance(ev, WindowClosed):
        return ("window", ev.window_id)
    if isinstance(ev, WindowValidated):
        return ("validation", ev.window_id)
    if isinstance(ev, TrainingRun):
        return ("run", f"{ev.run_id}:{ev.state}")
    if isinstance(ev, ModelCandidate):
        return ("candidate", ev.candidate_id)
    if isinstance(ev, PromotionEvent):
        return ("promotion", ev.id)
    return None


def _content(ev: Event) -> str:
    # produced_at differs between an original and its redelivered copy; the rest must not.
    if isinstance(ev, WindowClosed):
        return f"{ev.sha256}:{ev.example_count}:{[o.model_dump() for o in ev.offsets]}"
    if isinstance(ev, WindowValidated):
        return f"{ev.id}:{ev.verdict}"
    if isinstance(ev, TrainingRun):
        return ",".join(ev.windows)
    if isinstance(ev, ModelCandidate):
        return f"{ev.run_id}:{ev.model_uri}:{ev.blessed}"
    if isinstance(ev, PromotionEvent):
        return f"{ev.candidate_id}:{ev.decision}:{ev.version}"
    return ""


class EventTail:
    """Consumes every ctrain topic from the beginning in a background thread.

    No consumer group: watching must never steal partitions from a service.
    ``on_event(topic, event)`` is called for each event as it arrives.
    """

    def __init__(
        self,
        bootstrap: str,
        on_event: Callable[[str, Event], None] | None = None,
        watched: tuple[str, ...] = WATCHED,
    ) -> None:
        self.bootstrap = bootstrap
        self.watched = watched
        self.on_event = on_event
        self.state = LoopState()
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="ctrain-tail", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> EventTail:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _main(self) -> None:
        try:
            asyncio.run(self._consume())
        except Exception as e:  # noqa: BLE001 - wait_for re-raises: a dead tail must not hang
            self.error = e
            with self.changed:
                self.changed.notify_all()

    async def _consume(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            tps: list[TopicPartition] = []
            for topic in self.watched:
                parts = consumer.partitions_for_topic(topic)
                while not parts and not self._stop.is_set():
                    await consumer._client.force_metadata_update()
                    parts = consumer.partitions_for_topic(topic)
                tps.extend(TopicPartition(topic, p) for p in parts or ())
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=200)
                now = time.time()
                for tp, recs in batch.items():
                    for r in recs:
                        if r.value is not None:
                            self._take(tp.topic, r.value, now)
        finally:
            await consumer.stop()

    def _take(self, topic: str, value: bytes, now: float) -> None:
        ev: Event | None = None
        with self.changed:
            if topic == topics.WINDOWS_DLQ:
                self.state.window_dlq.append(orjson.loads(value))
            else:
                try:
                    ev = parse_event(value)
                except ValueError as e:
                    self.state.unreadable.append(f"{topic}: {e}")
                else:
                    self.state.add(ev, now)
            self.changed.notify_all()
        if ev is not None and self.on_event is not None:
            self.on_event(topic, ev)

    def wait_for(
        self,
        predicate: Callable[[LoopState], Any],
        timeout: float,
        what: str,
        alive: Callable[[], str | None] | None = None,
    ) -> Any:
        """Block until ``predicate(state)`` is truthy; its value is returned.

        ``alive()`` may name a reason to give up early (a service died, say).
        """
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                got = predicate(self.state)
                if got:
                    return got
                if self.error is not None:
                    raise RuntimeError(f"event tail failed: {self.error!r}") from self.error
                if alive is not None:
                    problem = alive()
                    if problem:
                        raise LoopError(f"{what}: {problem}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LoopError(f"timed out after {timeout:.0f}s waiting for {what}")
                # Woken by each event; the timeout re-checks alive() and the deadline.
                self.changed.wait(timeout=min(left, 1.0))


class LoopError(RuntimeError):
    """The loop did not reach a step in time; the message names the step."""


def predict_stable(
    grpc_address: str, model: str, examples: list[bytes], label: str = "stable"
) -> tuple[int, list[float]]:
    """(version that answered, scores) for serialized tf.Examples, through TF Serving's gRPC API."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from shared import contract

    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    req.model_spec.signature_name = contract.SERVING_SIGNATURE
    req.model_spec.version_label = label
    req.inputs[contract.SERVING_INPUT].CopyFrom(tf.make_tensor_proto(examples, dtype=tf.string))
    from shared.tfserving import channel_target

    options = [("grpc.lb_policy_name", "round_robin")]
    with grpc.insecure_channel(channel_target(grpc_address), options=options) as ch:
        resp = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(req, timeout=30)
    scores = [float(x) for v in resp.outputs.values() for x in tf.make_ndarray(v).reshape(-1)]
    return int(resp.model_spec.version.value), scores
