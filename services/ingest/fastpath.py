"""A clean batch decoded in C++: Arrow's JSON reader, typed, proven clean or refused.

The Python decoder (:mod:`services.ingest.decode`) gives every record its verdict
but spends most of ingest's time building dicts and inferring types. Most batches
have nothing wrong with them. For those, Arrow's JSON reader turns the joined
records straight into typed columns, and the checks below prove that the Python
path would have accepted every record with exactly these values. If any check
fails, the function returns None and the caller decodes those records in Python.
So this path can only make a batch faster: it never gives a verdict of its own.

What the checks stand on (each is exercised in ``tests/unit/test_fastpath.py``):

- One record is one line: every record starts with ``{``, ends with ``}``, holds no
  newline, and the reader returns exactly one row per record. Blank or doubled
  objects change the row count.
- Unknown keys surface as extra columns. A repeated key, a non-object, a syntax
  error or a broken surrogate pair makes the reader raise.
- The reader is lenient where the Python path is not. It reads ``NaN`` and
  ``Infinity``, promotes an int64 column holding ``19.5`` to double, and keeps
  invalid UTF-8 in strings. Hence: exact column types, finite float32-range
  floats, no missing required values, valid UTF-8.
- Floats are read as double and rounded to float32 as the Python path does. A
  value beyond 2**53 takes the Python path, which rounds an integer that large
  to float32 directly rather than through double.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from shared.schema import ExampleSpec, FeatureKind

_READ = {
    FeatureKind.FLOAT: pa.float64(),
    FeatureKind.INT: pa.int64(),
    FeatureKind.BYTES: pa.string(),
}
_FLOAT32_MAX = 3.4028234663852886e38
_EXACT_DOUBLE = float(2**53)


@dataclass(frozen=True)
class Clean:
    """A batch every record of which the Python path accepts, with the same values."""

    batch: pa.RecordBatch
    event_ms: list[int]


class FastPath:
    def __init__(
        self,
        spec: ExampleSpec,
        target: pa.Schema,
        *,
        event_time_field: str,
        unit_ms: int,
        max_bytes: int,
        max_future_ms: int,
    ) -> None:
        self.spec = spec
        self.target = target
        self.event_time_field = event_time_field
        self.unit_ms = unit_ms
        self.max_bytes = max_bytes
        self.max_future_ms = max_future_ms
        self.read_schema = pa.schema([pa.field(f.name, _READ[f.kind]) for f in spec.features])
        names = set(spec.names)
        if event_time_field:
            names.add(event_time_field)
        self._allowed = frozenset(names)

    def decode(
        self, values: list[bytes | None], timestamps: list[int], now_ms: int
    ) -> Clean | None:
        """The batch, typed, if every record is clean; None if any record needs a verdict."""
        n = len(values)
        limit = self.max_bytes
        for v in values:
            if not v or len(v) > limit or v[0] != 0x7B or v[-1] != 0x7D:
                return None
        joined = b"\n".join(values)  # type: ignore[arg-type]  # None was refused above
        if joined.count(b"\n") != n - 1 or not _utf8(joined):
            return None
        try:
            table = pj.read_json(
                pa.BufferReader(joined),
                read_options=pj.ReadOptions(block_size=max(1 << 20, len(joined) // 2 + 1)),
                parse_options=pj.ParseOptions(
                    explicit_schema=self.read_schema, unexpected_field_behavior="infer"
                ),
            )
        except (pa.ArrowException, UnicodeDecodeError):
            return None
        if table.num_rows != n:
            return None
        # An unknown key is a reject, or (not rejecting) ignored by the Python path
        # whatever its value, including values only Arrow reads (NaN): refuse both.
        if not set(table.column_names) <= self._allowed:
            return None
        arrays = []
        for f in self.spec.features:
            col = table.column(f.name).combine_chunks()
            if col.type != _READ[f.kind] or (f.required and col.null_count):
                return None
            if f.kind is FeatureKind.FLOAT:
                col = _float32(col)
                if col is None:
                    return None
            elif f.kind is FeatureKind.BYTES:
                try:
                    col.validate(full=True)
                except pa.ArrowInvalid:
                    return None
            arrays.append(col)
        times = self._event_times(table, timestamps, now_ms)
        if times is None:
            return None
        return Clean(pa.RecordBatch.from_arrays(arrays, schema=self.target), times)

    def _event_times(self, table: pa.Table, kafka_ts: list[int], now_ms: int) -> list[int] | None:
        field = self.event_time_field
        if not field:
            times = list(kafka_ts)
        else:
            if field not in table.column_names:
                return None
            got = epoch_ms(table.column(field).combine_chunks(), self.unit_ms)
            if got is None:
                return None
            times = got
        if times and max(times) > now_ms + self.max_future_ms:
            return None
        return times


# Event times a window can carry: datetime's years 1 to 9999, in ms since the epoch.
MIN_EPOCH_MS = -62_135_596_800_000
MAX_EPOCH_MS = 253_402_300_799_999


def epoch_ms(col: pa.Array, unit_ms: int) -> list[int] | None:
    """Numeric event times as epoch ms, by the arithmetic both paths share; None if any
    is missing, not a number, or outside years 1 to 9999 (each needs its own verdict)."""
    if col.null_count or col.type not in (pa.int64(), pa.float64()):
        return None
    if not len(col):
        return []
    # Unsafe: an int beyond 2**53 is out of range anyway (checked below), not an error.
    scaled = pc.multiply(col.cast(pa.float64(), safe=False), float(unit_ms))
    if not pc.all(pc.is_finite(scaled)).as_py():
        return None
    bounds = pc.min_max(scaled)
    if bounds["min"].as_py() < MIN_EPOCH_MS or bounds["max"].as_py() > MAX_EPOCH_MS:
        return None
    return pc.cast(scaled, pa.int64(), safe=False).to_pylist()


def _float32(col: pa.Array) -> pa.Array | None:
    """Double to float32 as the Python path rounds it; None for a value it would refuse
    (non-finite, beyond float32) or round differently (an integer beyond 2**53)."""
    if col.null_count == len(col):
        return col.cast(pa.float32())
    if not pc.all(pc.is_finite(col)).as_py():
        return None
    biggest = pc.max(pc.abs(col)).as_py()
    if biggest > _FLOAT32_MAX or biggest >= _EXACT_DOUBLE:
        return None
    return col.cast(pa.float32(), safe=False)


def _utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
