"""Decoding and type-checking one example against the feature spec.

Pure functions: no Kafka, no I/O. The hot path is per record, so checks are
type-identity tests on a precomputed feature tuple rather than pydantic models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from services.ingest.fastpath import MAX_EPOCH_MS, MIN_EPOCH_MS, Clean, FastPath, epoch_ms
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
    BAD_WATERMARK = "bad_watermark"

    ALL = (
        EMPTY,
        TOO_LARGE,
        NOT_UTF8,
        NOT_JSON,
        NOT_OBJECT,
        DUPLICATE_KEY,
        UNKNOWN_FEATURE,
        MISSING_FEATURE,
        WRONG_TYPE,
        NON_FINITE,
        BAD_EVENT_TIME,
        FUTURE_EVENT_TIME,
        LATE,
        BAD_WATERMARK,
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
    # Batches of at least this many records first try Arrow's C++ JSON reader
    # (services.ingest.fastpath); 0 turns it off. Below it, Python is as fast.
    fast_min_rows: int = 64


# A batch the C++ reader refused is retried in pieces this size, so one bad record
# sends its piece, not the whole batch, down the Python path.
FAST_PIECE = 1024


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


@dataclass
class BatchResult:
    """Accepted rows as one Arrow batch (schema types), plus who was rejected and why."""

    batch: pa.RecordBatch
    # Arrays, not lists: a batch is 10,000 records and every per-record Python step
    # shows in ingest's rate (positions and times go on to the windowing as arrays).
    accepted: np.ndarray  # int64: input positions of the batch's rows, in order
    event_ms: np.ndarray  # int64: event time of each accepted row
    rejected: list[tuple[int, Rejected]]


_FLOAT32_MAX = 3.4028234663852886e38


class Decoder:
    """bytes -> rows coerced to the schema's types, or a reason per rejected record.

    Work is columnar: per-record Python touches only JSON parsing and the key set;
    type checks run per feature column through Arrow, and only a column that
    fails the fast conversion is walked value by value to find the culprits.
    """

    def __init__(self, spec: ExampleSpec, config: DecoderConfig | None = None) -> None:
        from shared.shard import arrow_schema

        self.spec = spec
        self.config = config or DecoderConfig()
        self.schema = arrow_schema(spec)
        allowed = set(spec.names)
        if self.config.event_time_field:
            allowed.add(self.config.event_time_field)
        self._allowed = frozenset(allowed)
        self._unit = _UNIT[self.config.event_time_unit]
        self._fast = FastPath(
            spec,
            self.schema,
            event_time_field=self.config.event_time_field,
            unit_ms=self._unit,
            max_bytes=self.config.max_bytes,
            max_future_ms=self.config.max_future_ms,
        )

    def decode(self, value: bytes | None, timestamp_ms: int, now_ms: int) -> Accepted | Rejected:
        """One record (the HTTP path and tests); same rules as :meth:`decode_batch`."""
        res = self.decode_batch([value], [timestamp_ms], now_ms)
        if res.rejected:
            return res.rejected[0][1]
        row = {k: v for k, v in res.batch.to_pylist()[0].items() if v is not None}
        return Accepted(row, int(res.event_ms[0]))

    def decode_batch(
        self, values: list[bytes | None], timestamps: list[int], now_ms: int
    ) -> BatchResult:
        """Verdicts for a batch: typed rows of the accepted, a reason for each rejected."""
        least = self.config.fast_min_rows
        if not least or len(values) < least:
            return self._decode_python(values, timestamps, now_ms)
        whole = self._fast_batch(values, timestamps, now_ms)
        if whole is not None:
            return whole
        if len(values) <= FAST_PIECE:
            return self._decode_python(values, timestamps, now_ms)
        pieces = [
            (
                start,
                self.decode_batch(
                    values[start : start + FAST_PIECE],
                    timestamps[start : start + FAST_PIECE],
                    now_ms,
                ),
            )
            for start in range(0, len(values), FAST_PIECE)
        ]
        return _concat(self.schema, pieces)

    def _fast_batch(
        self, values: list[bytes | None], timestamps: list[int], now_ms: int
    ) -> BatchResult | None:
        """The C++ reader's result with Python verdicts for its suspects; None if it
        refused the batch as a whole."""
        clean = self._fast.decode(values, timestamps, now_ms)
        if clean is None:
            return None
        if not clean.suspects:
            return BatchResult(clean.batch, np.arange(len(values)), clean.event_ms, [])
        return self._with_suspects(values, timestamps, now_ms, clean)

    def _with_suspects(
        self, values: list[bytes | None], timestamps: list[int], now_ms: int, clean: Clean
    ) -> BatchResult:
        """The fast rows plus the Python verdicts of the rows set aside, in input order."""
        sus = clean.suspects
        judged = self._decode_python([values[i] for i in sus], [timestamps[i] for i in sus], now_ms)
        rejected = [(sus[j], why) for j, why in judged.rejected]
        fast = np.delete(np.arange(len(values)), sus)
        if not len(judged.accepted):  # the usual case: the rows set aside are rejects
            return BatchResult(clean.batch, fast, clean.event_ms, rejected)
        positions = np.concatenate([fast, np.asarray(sus, np.int64)[judged.accepted]])
        order = np.argsort(positions, kind="stable")
        both = pa.Table.from_batches([clean.batch, judged.batch], schema=self.schema)
        rows = both.take(pa.array(order))
        return BatchResult(
            batch=pa.RecordBatch.from_arrays(
                [c.combine_chunks() for c in rows.columns], schema=self.schema
            ),
            accepted=positions[order],
            event_ms=np.concatenate([clean.event_ms, judged.event_ms])[order],
            rejected=rejected,
        )

    def _decode_python(
        self, values: list[bytes | None], timestamps: list[int], now_ms: int
    ) -> BatchResult:
        objs, bad = self._parse(values)
        ok = [i for i in range(len(values)) if i not in bad]
        rows = [objs[i] for i in ok]
        arrays = []
        # One C++ pass infers a struct over all rows; a feature whose inferred type
        # is not directly usable (or a batch that cannot be inferred) is handled
        # column by column in Python.
        # Arrow's inference reads a JSON boolean as a number in a numeric column, so a
        # batch holding a boolean literal is checked value by value, in Python.
        # One scan over the joined bytes; a string merely containing "true" only costs
        # the slower path, never a wrong verdict.
        joined = b"\x00".join(values[i] or b"" for i in ok)
        has_bool = b"true" in joined or b"false" in joined
        struct = None if has_bool else self._struct(rows)
        present = {struct.type[k].name for k in range(struct.type.num_fields)} if struct else set()
        for f in self.spec.features:
            if struct is not None and f.name in present:
                col: Any = struct.field(f.name)
            elif struct is not None:
                col = pa.nulls(len(rows))
            else:
                col = [r.get(f.name) for r in rows]
            arr, problems = _column(f.name, f.kind, col, f.required, not has_bool)
            if arr is None:
                col = [r.get(f.name) for r in rows]
                arr, problems = _column(f.name, f.kind, col, f.required, False)
            for j, why in problems:
                bad.setdefault(ok[j], why)
            arrays.append(arr)
        times, problems = self._event_times(rows, struct, [timestamps[i] for i in ok], now_ms)
        for j, why in problems:
            bad.setdefault(ok[j], why)
        batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
        keep = [j for j, i in enumerate(ok) if i not in bad]
        if len(keep) != len(ok):
            batch = batch.take(pa.array(keep, pa.int64()))
        return BatchResult(
            batch=batch,
            accepted=np.asarray([ok[j] for j in keep], np.int64),
            event_ms=np.asarray([times[j] for j in keep], np.int64),
            rejected=sorted(bad.items()),
        )

    def _parse(self, values: list[bytes | None]) -> tuple[list[Any], dict[int, Rejected]]:
        cfg = self.config
        objs: list[Any] = []
        bad: dict[int, Rejected] = {}
        loads = orjson.loads
        allowed = self._allowed
        for i, value in enumerate(values):
            objs.append(None)
            if not value:
                bad[i] = Rejected(Reason.EMPTY, "record has no value")
                continue
            if len(value) > cfg.max_bytes:
                bad[i] = Rejected(
                    Reason.TOO_LARGE, f"record is {len(value)} bytes; the limit is {cfg.max_bytes}"
                )
                continue
            try:
                obj = loads(value)
            except orjson.JSONDecodeError as e:
                msg = str(e)
                if "utf-8" in msg.lower() or "surrogate" in msg.lower():
                    # orjson's text names the wrong cause for invalid bytes; Python's
                    # codec gives the byte offset an operator can look up.
                    try:
                        value.decode("utf-8")
                    except UnicodeDecodeError as ue:
                        msg = f"byte {ue.start}: {ue.reason}"
                    bad[i] = Rejected(Reason.NOT_UTF8, f"record is not valid UTF-8: {msg}")
                else:
                    bad[i] = Rejected(Reason.NOT_JSON, f"record is not JSON: {msg}")
                continue
            if type(obj) is not dict:
                bad[i] = Rejected(
                    Reason.NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}"
                )
                continue
            # orjson keeps the last of repeated keys silently; a cheap byte count spots
            # the candidates and the exact check runs only for those.
            if len(obj) < value.count(b'":'):
                dup = _check_duplicate_keys(value)
                if dup is not None:
                    bad[i] = Rejected(Reason.DUPLICATE_KEY, f"key {dup!r} appears more than once")
                    continue
            if cfg.reject_unknown and not obj.keys() <= allowed:
                unknown = sorted(set(obj) - allowed)
                bad[i] = Rejected(
                    Reason.UNKNOWN_FEATURE, f"unknown feature(s): {', '.join(unknown)}"
                )
                continue
            objs[i] = obj
        return objs, bad

    def _struct(self, rows: list[dict[str, Any]]) -> pa.StructArray | None:
        """All rows as one Arrow struct, inferred in C++; None if types are mixed.

        Inference, not a typed conversion: pyarrow's typed path silently truncates
        19.5 to 19 for an int64 field and turns ``true`` into 1.0 for a float one.
        """
        if not rows:
            return None
        try:
            return pa.array(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            return None

    def _event_times(
        self,
        rows: list[dict[str, Any]],
        struct: pa.StructArray | None,
        kafka_ts: list[int],
        now_ms: int,
    ) -> tuple[list[int], list[tuple[int, Rejected]]]:
        cfg = self.config
        field = cfg.event_time_field
        problems: list[tuple[int, Rejected]] = []
        col = _child(struct, field) if field else None
        if not field:
            times = list(kafka_ts)
        elif col is not None and (columnar := epoch_ms(col, self._unit)) is not None:
            times = columnar
        else:
            times = []
            unit = self._unit
            for j, r in enumerate(rows):
                v: Any = r.get(field)
                t = type(v)
                ms: int | Rejected | None = None
                if t is int or t is float:
                    scaled = v * unit
                    if math.isfinite(scaled) and MIN_EPOCH_MS <= scaled <= MAX_EPOCH_MS:
                        times.append(int(scaled))
                        continue
                    ms = Rejected(
                        Reason.BAD_EVENT_TIME,
                        f"event time {v!r} {cfg.event_time_unit} is outside years 1 to 9999",
                    )
                elif t is str:
                    ms = _iso_ms(v)
                if isinstance(ms, int):
                    times.append(ms)
                    continue
                times.append(0)
                problems.append(
                    (
                        j,
                        ms
                        if isinstance(ms, Rejected)
                        else Rejected(
                            Reason.BAD_EVENT_TIME,
                            f"event-time field {field!r} must be epoch {cfg.event_time_unit} or "
                            f"ISO 8601 with zone, got {v!r}",
                        ),
                    )
                )
        limit = now_ms + cfg.max_future_ms
        for j, t_ms in enumerate(times):
            if t_ms > limit:
                problems.append(
                    (
                        j,
                        Rejected(
                            Reason.FUTURE_EVENT_TIME,
                            f"event time {_iso(t_ms)} is more than {cfg.max_future_ms // 1000}s "
                            "in the future",
                        ),
                    )
                )
        return times, problems


def _concat(schema: pa.Schema, pieces: list[tuple[int, BatchResult]]) -> BatchResult:
    """Pieces of one batch, each with its first input position, as one result."""
    table = pa.Table.from_batches([r.batch for _, r in pieces], schema=schema)
    batch = pa.RecordBatch.from_arrays([c.combine_chunks() for c in table.columns], schema=schema)
    return BatchResult(
        batch=batch,
        accepted=np.concatenate([start + r.accepted for start, r in pieces]),
        event_ms=np.concatenate([r.event_ms for _, r in pieces]),
        rejected=[(start + i, why) for start, r in pieces for i, why in r.rejected],
    )


def _iso_ms(v: str) -> int | Rejected | None:
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        return Rejected(Reason.BAD_EVENT_TIME, f"event time {v!r} has no time zone")
    return int(dt.timestamp() * 1000)


def _child(struct: pa.StructArray | None, name: str) -> pa.Array | None:
    if struct is None or struct.type.get_field_index(name) < 0:
        return None
    return struct.field(name)


_FAST_TYPES = {
    FeatureKind.FLOAT: (pa.int64(), pa.float64(), pa.null()),
    FeatureKind.INT: (pa.int64(), pa.null()),
    FeatureKind.BYTES: (pa.string(), pa.null()),
}
_TARGET = {
    FeatureKind.FLOAT: pa.float32(),
    FeatureKind.INT: pa.int64(),
    FeatureKind.BYTES: pa.string(),
}


def _column(
    name: str, kind: FeatureKind, col: Any, required: bool, infer: bool
) -> tuple[pa.Array | None, list[tuple[int, Rejected]]]:
    """One feature's values as an Arrow array of the schema type, and the bad rows.

    Returns ``(None, [])`` when given an Arrow column whose inferred type needs the
    value-by-value path, which must see the original Python values.
    """
    problems: list[tuple[int, Rejected]] = []
    arr = None
    if isinstance(col, pa.Array):
        inferred: pa.Array | None = col
    elif not infer:
        inferred = None
    else:
        try:
            inferred = pa.array(col)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            inferred = None
    if inferred is not None and inferred.type not in _FAST_TYPES[kind]:
        if isinstance(col, pa.Array):
            return None, []  # the caller retries with the original Python values
    if inferred is not None and inferred.type in _FAST_TYPES[kind]:
        # float32 is the schema's FLOAT: rounding an int64 or a double to it is the
        # intended conversion, not an error (overflow is checked just below).
        arr = inferred.cast(_TARGET[kind], safe=kind is not FeatureKind.FLOAT)
        if kind is FeatureKind.FLOAT and inferred.type == pa.float64():
            big = pc.greater(pc.abs(inferred), _FLOAT32_MAX)
            if pc.any(big).as_py():
                arr = None  # walk the column: those values overflow float32
    if arr is None and isinstance(col, pa.Array):
        return None, []  # the value-by-value path needs the original Python values
    if arr is None:
        fixed: list[Any] = []
        for j, v in enumerate(col):
            if v is None:
                fixed.append(None)
                continue
            c = _check_value(name, kind, v)
            if type(c) is Rejected:
                problems.append((j, c))
                fixed.append(None)
            else:
                fixed.append(c)
        arr = pa.array(fixed, _TARGET[kind])
    if required and arr.null_count:
        flagged = {j for j, _ in problems}
        missing = pc.indices_nonzero(arr.is_null()).to_pylist()
        problems.extend(
            (j, Rejected(Reason.MISSING_FEATURE, f"required feature {name!r} is missing"))
            for j in missing
            if j not in flagged
        )
    return arr, problems


def _check_value(name: str, kind: FeatureKind, v: Any) -> Any:
    t = type(v)
    if kind is FeatureKind.FLOAT:
        if t is float or t is int:
            f = float(v)
            if not math.isfinite(f) or abs(f) > _FLOAT32_MAX:
                return Rejected(
                    Reason.NON_FINITE, f"feature {name!r} is {v} (not a finite float32)"
                )
            return f
        return _coerce_float(name, v)
    if kind is FeatureKind.INT:
        if t is int:
            if not -(2**63) <= v < 2**63:
                return Rejected(Reason.WRONG_TYPE, f"feature {name!r} does not fit int64: {v}")
            return v
        return _coerce_int(name, v)
    if t is not str:
        return Rejected(Reason.WRONG_TYPE, f"feature {name!r} must be a string, got {t.__name__}")
    return v


def _coerce_float(name: str, v: Any) -> float | Rejected:
    if type(v) is str:
        try:
            f = float(v)
        except ValueError:
            return Rejected(Reason.WRONG_TYPE, f"feature {name!r} must be a number, got {v!r}")
        if not math.isfinite(f) or abs(f) > _FLOAT32_MAX:
            return Rejected(Reason.NON_FINITE, f"feature {name!r} is {v!r} (not a finite float32)")
        return f
    return Rejected(Reason.WRONG_TYPE, f"feature {name!r} must be a number, got {type(v).__name__}")


def _coerce_int(name: str, v: Any) -> int | Rejected:
    t = type(v)
    if t is float:
        if not math.isfinite(v):
            return Rejected(Reason.NON_FINITE, f"feature {name!r} is {v}")
        if v.is_integer() and -(2**63) <= v < 2**63:
            return int(v)
        return Rejected(Reason.WRONG_TYPE, f"feature {name!r} must be an integer, got {v!r}")
    if t is str:
        try:
            i = int(v.strip())
        except ValueError:
            try:
                f = float(v)
            except ValueError:
                f = math.nan
            if math.isfinite(f) and f.is_integer() and -(2**63) <= f < 2**63:
                return int(f)
            return Rejected(Reason.WRONG_TYPE, f"feature {name!r} must be an integer, got {v!r}")
        if not -(2**63) <= i < 2**63:
            return Rejected(Reason.WRONG_TYPE, f"feature {name!r} does not fit int64: {v!r}")
        return i
    return Rejected(Reason.WRONG_TYPE, f"feature {name!r} must be an integer, got {t.__name__}")


def _iso(ms: int) -> str:
    from datetime import UTC

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()
