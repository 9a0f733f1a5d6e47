"""Decoding and type-checking one example against the feature spec.

Pure functions: no Kafka, no I/O. The hot path is per record, so checks are
type-identity tests on a precomputed feature tuple rather than pydantic models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from shared.schema import ExampleSpec, FeatureKind


class Reason:
    """Reject reason codes (DLQ ``reason``); stable, machine-readable."""

    EMPTY = "empty"
    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    DUPLICATE_KEY = "duplicate_key"
    UNKNOWN_FEATURE = "unknown_feature"
    MISSING_FEATURE = "missing_feature"
    WRONG_TYPE = "wrong_type"
    NON_FINITE = "non_finite"
    BAD_EVENT_TIME = "bad_event_time"
    FUTURE_EVENT_TIME = "future_event_time"
    LATE = "late"

    ALL = (
        EMPTY, TOO_LARGE, NOT_UTF8, NOT_JSON, NOT_OBJECT, DUPLICATE_KEY, UNKNOWN_FEATURE,
        MISSING_FEATURE, WRONG_TYPE, NON_FINITE, BAD_EVENT_TIME, FUTURE_EVENT_TIME, LATE,
    )


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Accepted:
    row: dict[str, Any]
    event_time_ms: int


@dataclass(frozen=True)
class DecoderConfig:
    max_bytes: int = 1 << 20
    reject_unknown: bool = True
    event_time_field: str = ""
    event_time_unit: str = "s"  # for numeric event-time fields: "s" or "ms"
    max_future_ms: int = 24 * 3600 * 1000


_UNIT = {"s": 1000, "ms": 1}


def _check_duplicate_keys(text: bytes) -> str | None:
    """Find a key repeated within one object (JSON allows it; we do not: which wins?)."""
    dup: list[str] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen and not dup:
                dup.append(k)
            seen.add(k)
        return dict(pairs)

    import json

    json.loads(text, object_pairs_hook=hook)
    return dup[0] if dup else None


class Decoder:
    """bytes -> :class:`Accepted` row (values coerced to the schema's types) or :class:`Rejected`."""

    def __init__(self, spec: ExampleSpec, config: DecoderConfig | None = None) -> None:
        self.spec = spec
        self.config = config or DecoderConfig()
        self._features = tuple((f.name, f.kind, f.required) for f in spec.features)
        allowed = set(spec.names)
        if self.config.event_time_field:
            allowed.add(self.config.event_time_field)
        self._allowed = frozenset(allowed)
        self._unit = _UNIT[self.config.event_time_unit]

    def decode(self, value: bytes | None, timestamp_ms: int, now_ms: int) -> Accepted | Rejected:
        cfg = self.config
        if not value:
            return Rejected(Reason.EMPTY, "record has no value")
        if len(value) > cfg.max_bytes:
            return Rejected(
                Reason.TOO_LARGE, f"record is {len(value)} bytes; the limit is {cfg.max_bytes}"
            )
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as e:
            msg = str(e)
            if "utf-8" in msg.lower() or "surrogate" in msg.lower():
                return Rejected(Reason.NOT_UTF8, f"record is not valid UTF-8: {msg}")
            return Rejected(Reason.NOT_JSON, f"record is not JSON: {msg}")
        if type(obj) is not dict:
            return Rejected(Reason.NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
        # orjson keeps the last of repeated keys silently; a cheap byte count spots
        # the candidates and the slow exact check runs only for those.
        if len(obj) < value.count(b'":'):
            dup = _check_duplicate_keys(value)
            if dup is not None:
                return Rejected(Reason.DUPLICATE_KEY, f"key {dup!r} appears more than once")
        if cfg.reject_unknown and not obj.keys() <= self._allowed:
            unknown = sorted(set(obj) - self._allowed)
            return Rejected(Reason.UNKNOWN_FEATURE, f"unknown feature(s): {', '.join(unknown)}")
        row = self._check_features(obj)
        if type(row) is Rejected:
            return row
        t = self._event_time(obj, timestamp_ms)
        if type(t) is Rejected:
            return t
        assert isinstance(t, int)
        if t > now_ms + cfg.max_future_ms:
            return Rejected(
                Reason.FUTURE_EVENT_TIME,
                f"event time {_iso(t)} is more than {cfg.max_future_ms // 1000}s in the future",
            )
        assert isinstance(row, dict)
        return Accepted(row, t)

    def _check_features(self, obj: dict[str, Any]) -> dict[str, Any] | Rejected:
        row: dict[str, Any] = {}
        for name, kind, required in self._features:
            v = obj.get(name)
            if v is None:
                if required:
                    return Rejected(Reason.MISSING_FEATURE, f"required feature {name!r} is missing")
                continue
            t = type(v)
            if kind is FeatureKind.FLOAT:
                if t is float:
                    if not math.isfinite(v):
                        return Rejected(Reason.NON_FINITE, f"feature {name!r} is {v}")
                elif t is int:
                    v = float(v)
                else:
                    v = _coerce_float(name, v)
                    if type(v) is Rejected:
                        return v
            elif kind is FeatureKind.INT:
                if t is not int:
                    v = _coerce_int(name, v)
                    if type(v) is Rejected:
                        return v
            elif t is not str:
                return Rejected(
                    Reason.WRONG_TYPE, f"feature {name!r} must be a string, got {t.__name__}"
                )
            row[name] = v
        return row

    def _event_time(self, obj: dict[str, Any], timestamp_ms: int) -> int | Rejected:
        field = self.config.event_time_field
        if not field:
            return timestamp_ms
        v = obj.get(field)
        t = type(v)
        if (t is int or t is float) and math.isfinite(v):
            return int(v * self._unit)
        if t is str:
            try:
                dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                pass
            else:
                if dt.tzinfo is None:
                    return Rejected(Reason.BAD_EVENT_TIME, f"event time {v!r} has no time zone")
                return int(dt.timestamp() * 1000)
        return Rejected(
            Reason.BAD_EVENT_TIME,
            f"event-time field {field!r} must be epoch {self.config.event_time_unit} or "
            f"ISO 8601 with zone, got {v!r}",
        )


def _coerce_float(name: str, v: Any) -> float | Rejected:
    if type(v) is str:
        try:
            f = float(v)
        except ValueError:
            return Rejected(Reason.WRONG_TYPE, f"feature {name!r} must be a number, got {v!r}")
        if not math.isfinite(f):
            return Rejected(Reason.NON_FINITE, f"feature {name!r} is {v!r}")
        return f
    return Rejected(
        Reason.WRONG_TYPE, f"feature {name!r} must be a number, got {type(v).__name__}"
    )


def _coerce_int(name: str, v: Any) -> int | Rejected:
    t = type(v)
    if t is float:
        if not math.isfinite(v):
            return Rejected(Reason.NON_FINITE, f"feature {name!r} is {v}")
        if v.is_integer():
            return int(v)
        return Rejected(Reason.WRONG_TYPE, f"feature {name!r} must be an integer, got {v!r}")
    if t is str:
        try:
            return int(v.strip())
        except ValueError:
            try:
                f = float(v)
            except ValueError:
                f = math.nan
            if math.isfinite(f) and f.is_integer():
                return int(f)
            return Rejected(Reason.WRONG_TYPE, f"feature {name!r} must be an integer, got {v!r}")
    return Rejected(
        Reason.WRONG_TYPE, f"feature {name!r} must be an integer, got {t.__name__}"
    )


def _iso(ms: int) -> str:
    from datetime import UTC

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()
