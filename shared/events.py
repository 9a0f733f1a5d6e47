"""Every event on every ctrain topic, defined once (docs/architecture.md §3).

Each model has a literal ``event_type``, a ``schema_version``, a deterministic
id derived from its inputs and ``produced_at``. Fields listed in docs/architecture.md §3 are
a contract: add fields freely, rename none.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Base of every event: JSON on the wire, unknown fields kept for forward compat."""

    model_config = ConfigDict(extra="allow", frozen=True)

    schema_version: int = SCHEMA_VERSION
    produced_at: datetime = Field(default_factory=utcnow)

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    @property
    def key(self) -> bytes:
        """The Kafka key that keeps one entity's events ordered."""
        raise NotImplementedError


# --------------------------------------------------------------------- DLQ
class DlqSource(BaseModel):
    model_config = ConfigDict(frozen=True)
    topic: str
    partition: int
    offset: int


class DeadLetter(Event):
    """A rejected record on ``ctrain.examples.dlq``: the bytes, the reason, the source."""

    event_type: Literal["dead_letter"] = "dead_letter"
    id: str
    reason: str
    message: str
    source: DlqSource
    payload: str
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    source_key: str | None = None
    service: str = "ingest"

    @property
    def key(self) -> bytes:
        return self.source_key.encode() if self.source_key else self.id.encode()


class WindowDeadLetter(Event):
    """A window event the validator could not judge, on ``ctrain.windows.dlq``: the event
    as it arrived, why, and where it came from (so it can be sent back once fixed)."""

    event_type: Literal["window_dead_letter"] = "window_dead_letter"
    id: str
    reason: str
    message: str
    source: DlqSource
    payload: str
    window_id: str | None = None
    stream: str | None = None
    service: str = "validator"

    @property
    def key(self) -> bytes:
        return (self.stream or self.id).encode()


class EventDeadLetter(Event):
    """An event a service could not handle, on ``ctrain.events.dlq``: the record as it
    arrived, why, which service gave up on it, and where it came from (for redrive)."""

    event_type: Literal["event_dead_letter"] = "event_dead_letter"
    id: str
    reason: str
    message: str
    source: DlqSource
    payload: str
    service: str
    group_id: str

    @property
    def key(self) -> bytes:
        return self.id.encode()


# ----------------------------------------------------------------- windows
class OffsetRange(BaseModel):
    model_config = ConfigDict(frozen=True)
    topic: str
    partition: int
    first: int
    last: int


class WindowClosed(Event):
    """A closed window: its shard is durable before this is published."""

    event_type: Literal["window_closed"] = "window_closed"
    window_id: str
    stream: str
    start: datetime
    end: datetime
    example_count: int
    offsets: list[OffsetRange]
    data_uri: str
    sha256: str
    data_format: Literal["parquet"] = "parquet"
    close_reason: Literal["count", "watermark", "end_of_input", "idle", "shutdown"] = "count"
    min_event_time: datetime | None = None
    max_event_time: datetime | None = None
    # Length of the tumbling event-time period (None: cut by count alone). Windows of the
    # same period from different partitions share start and end; the validator judges them
    # together.
    period_ms: int | None = None

    @property
    def key(self) -> bytes:
        return self.stream.encode()


# -------------------------------------------------------------- validations
class Distance(BaseModel):
    model_config = ConfigDict(frozen=True)
    measure: Literal["linf", "jensen_shannon"]
    value: float | None
    threshold: float
    crossed: bool
    baseline: str
    baseline_count: int | None = None
    count: int | None = None


class FeatureDistances(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    drift: Distance | None = None
    skew: Distance | None = None


class Anomaly(BaseModel):
    model_config = ConfigDict(frozen=True)
    feature: str
    code: str
    severity: Literal["blocking", "warning"]
    description: str


Verdict = Literal["ok", "drift", "skew", "anomalous", "insufficient_data"]


class PartitionIdle(Event):
    """A source partition has no open window and nothing new to read (published by ingest
    on ``ctrain.windows``, after that partition's windows, so it never overtakes them).

    The validator judges a period without waiting for a partition that announced it is
    idle, as long as nothing was written to that partition after ``next_offset``."""

    event_type: Literal["partition_idle"] = "partition_idle"
    id: str
    stream: str
    topic: str
    partition: int
    next_offset: int
    watermark_ms: int | None = None

    @property
    def key(self) -> bytes:
        return self.stream.encode()


class MemberWindow(BaseModel):
    """One window shard inside a judged period."""

    window_id: str
    data_uri: str
    example_count: int


class WindowValidated(Event):
    event_type: Literal["window_validated"] = "window_validated"
    id: str
    window_id: str
    stream: str
    stats_uri: str
    verdict: Verdict
    example_count: int
    features: list[FeatureDistances] = Field(default_factory=list)
    anomalies: list[Anomaly] = Field(default_factory=list)
    drift_baseline: str | None = None
    skew_baseline: str | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None
    data_uri: str | None = None
    # "window": one partition's window, profiled on its own (views, per-window metrics).
    # "period": the unit the trigger acts on: every window of one stream and one event-time
    # period (whatever partition it came from), or a run of small periods judged together.
    scope: Literal["window", "period"] = "window"
    members: list[MemberWindow] = Field(default_factory=list)
    # The validator's judgement covers all the period's partitions (False: judged after the
    # grace time with some partitions still silent).
    complete: bool = True

    @property
    def key(self) -> bytes:
        return self.stream.encode()


# ----------------------------------------------------------------- training
RunState = Literal["submitted", "running", "succeeded", "failed"]


class TrainingRun(Event):
    event_type: Literal["training_run"] = "training_run"
    run_id: str
    model: str
    reason: str
    windows: list[str]
    state: RunState
    backend: Literal["local", "kfp"]
    backend_run_id: str | None = None
    failed_component: str | None = None
    log_tail: str | None = None

    @property
    def key(self) -> bytes:
        return self.model.encode()


class SliceMetrics(BaseModel):
    model_config = ConfigDict(frozen=True)
    slice: str
    metrics: dict[str, float]


class CandidateMetrics(BaseModel):
    model_config = ConfigDict(frozen=True)
    overall: dict[str, float] = Field(default_factory=dict)
    slices: list[SliceMetrics] = Field(default_factory=list)


class ModelCandidate(Event):
    event_type: Literal["model_candidate"] = "model_candidate"
    candidate_id: str
    model: str
    run_id: str
    model_uri: str
    eval_uri: str
    blessed: bool
    failed_checks: list[str] = Field(default_factory=list)
    metrics: CandidateMetrics = Field(default_factory=CandidateMetrics)
    baseline_metrics: CandidateMetrics | None = None
    windows: list[str] = Field(default_factory=list)
    eval_window: str | None = None
    eval_data_uri: str | None = None
    reason: str | None = None
    # Every held-out window (eval_window is the newest) and the example counts of both sides.
    eval_windows: list[str] = Field(default_factory=list)
    train_examples: int | None = None
    # sha256 of the model module the run trained with (its copy is in the run's directory)
    module_sha256: str | None = None
    eval_examples: int | None = None
    # Per window, the distances that crossed their thresholds when the run was decided.
    trigger_evidence: dict[str, list[str]] = Field(default_factory=dict)
    # Labels from their own stream: {"train": counts, "eval": counts, "windows": {shard:
    # counts}}, counts being labelled / defaulted / unlabelled (left out) examples.
    labels: dict[str, Any] | None = None

    @property
    def key(self) -> bytes:
        return self.model.encode()


# --------------------------------------------------------------- promotions
Decision = Literal["auto", "approved", "rejected", "rolled_back", "failed", "superseded"]


class PromotionEvent(Event):
    event_type: Literal["promotion"] = "promotion"
    id: str
    candidate_id: str
    model: str
    decision: Decision
    actor: str
    reason: str
    version: int | None = None
    labels: dict[str, int] = Field(default_factory=dict)

    @property
    def key(self) -> bytes:
        return self.model.encode()


# ------------------------------------------------------------------ quality
class LabelRecord(BaseModel):
    """A label that travels on its own stream, ``ctrain.labels`` (written by clients).

    ``example_id`` names the example: the value of the model's ``labels.id_field`` (a
    business id, e.g. a transaction id) or ``<topic>:<partition>:<offset>`` of its write.
    The label is the model's raw label features (docs/models.md, "Labels"): ``features``
    maps each of them to its value; ``label`` is the short form when the model has one.
    The label's definition stays in the module's ``preprocessing_fn``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    example_id: str = Field(min_length=1, max_length=512)
    label: float | int | str | None = None
    features: dict[str, float | int | str] | None = None
    event_time: datetime | None = None
    # Which model's examples (needed only when one labels topic serves several streams).
    model: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> LabelRecord:
        if (self.label is None) == (self.features is None):
            raise ValueError("give the label as 'label' (one label feature) or 'features'")
        return self

    def values(self, names: tuple[str, ...]) -> dict[str, float | int | str]:
        """The label features, by name; ValueError naming what is missing."""
        if self.features is None:
            if len(names) != 1:
                raise ValueError(
                    f"the model's label has {len(names)} features ({', '.join(names)}): "
                    "send them as 'features'"
                )
            return {names[0]: self.label}  # type: ignore[dict-item]
        missing = [n for n in names if n not in self.features]
        extra = sorted(set(self.features) - set(names))
        if missing or extra:
            raise ValueError(
                f"label features {', '.join(names)} expected"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; not label features: {', '.join(extra)}" if extra else "")
            )
        return dict(self.features)


class QualityMetrics(BaseModel):
    model_config = ConfigDict(frozen=True)
    # Realized: computed on labelled examples (empty when none are labelled).
    realized: dict[str, float] = Field(default_factory=dict)
    # Estimated without labels (confidence-based, binary classifiers), over every example.
    estimated: dict[str, float] = Field(default_factory=dict)
    slices: list[SliceMetrics] = Field(default_factory=list)


Role = Literal["stable", "previous", "challenger"]


class WindowScored(Event):
    """A model version's quality on one judged window (period), on ``ctrain.quality``.

    Scored once when the window is validated, and again each time its label coverage
    crosses one of the configured steps (``coverage_step``)."""

    event_type: Literal["window_scored"] = "window_scored"
    id: str
    model: str
    version: int
    role: Role = "stable"
    window_id: str
    stream: str
    window_start: datetime | None = None
    window_end: datetime | None = None
    example_count: int
    labelled_count: int
    label_coverage: float
    coverage_step: float = 0.0
    metrics: QualityMetrics
    candidate_id: str | None = None

    @property
    def key(self) -> bytes:
        return self.model.encode()


AnyEvent = Annotated[
    DeadLetter
    | WindowDeadLetter
    | EventDeadLetter
    | WindowClosed
    | PartitionIdle
    | WindowValidated
    | TrainingRun
    | ModelCandidate
    | PromotionEvent
    | WindowScored,
    Field(discriminator="event_type"),
]


class _Envelope(BaseModel):
    event: AnyEvent


def parse_event(data: bytes | str | dict[str, Any]) -> Event:
    """Decode any ctrain event by its ``event_type``."""
    obj = orjson.loads(data) if isinstance(data, bytes | str) else data
    return _Envelope.model_validate({"event": obj}).event
