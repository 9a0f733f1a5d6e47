"""A clean batch decoded in C++: Arrow's JSON reader, typed, proven clean or refused.

The Python decoder (:mod:`services.ingest.decode`) gives every record its verdict
but spends most of ingest's time building dicts and inferring types. Most batches
have nothing wrong with them. For those, Arrow's JSON reader turns the joined
records straight into typed columns, and the checks below prove that the Python
path would have accepted each row it keeps with exactly these values. A row a
check cannot clear (a missing required value, a NaN) is set aside, and the caller
gives it its verdict in Python; a batch the reader cannot read as a whole is
refused (None) and decoded in Python. So this path only makes a batch faster:
it never gives a verdict of its own.

What the checks stand on (each is exercised in ``tests/unit/test_fastpath.py``):

- One record is one line: every record starts with ``{``, ends with ``}``, holds no
  newline, and the reader returns exactly one row per record. Blank or doubled
  objects change the row count.
- Unknown keys surface as extra columns. A repeated key, a non-object, a syntax
  error or a broken surrogate pair makes the reader raise.
- The reader is lenient where the Python path is not. It reads ``NaN`` and
  ``Infinity``, promotes an int64 column holding ``19.5`` to double, and keeps
  invalid UTF-8 in strings. Hence: exact column types and valid UTF-8 for the
  batch; finite floats, required values present and event times in range (years
  1 to 9999, not too far ahead) for each row kept.
- Floats are read as double and rounded to float32 as the Python path does. A
  value beyond 2**53 takes the Python path, which rounds an integer that large
  to float32 directly rather than through double.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from shared.schema import ExampleSpec, FeatureKind

_READ = {
    FeatureKind.FLOAT: pa.float64(),
    FeatureKind.INT: pa.int64(),
    FeatureKind.BYTES: pa.string(),
}
_EXACT_DOUBLE = float(2**53)


@dataclass(frozen=True)
class Clean:
    """The rows the Python path would accept with these values, in input order, and
    the input positions of the rows it must judge itself."""

    batch: pa.RecordBatch
    event_ms: np.ndarray  # int64
    suspects: list[int]


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
        """The batch, typed, with the rows that need a verdict of their own set aside
        (``suspects``); None if the batch as a whole cannot be read this way."""
        n = len(values)
        if not n or None in values:
            return None
        lens = np.fromiter(map(len, values), np.int64, n)  # type: ignore[arg-type]
        if lens.min() < 2 or lens.max() > self.max_bytes:
            return None
        joined = b"\n".join(values)  # type: ignore[arg-type]  # None was refused above
        # One line per record: the n-1 newlines are exactly the n-1 joins, and every
        # record starts with "{" and ends with "}".
        ends = np.cumsum(lens + 1) - 1  # one past each record: its join, or the end
        buf = np.frombuffer(joined, np.uint8)
        if (
            joined.count(b"\n") != n - 1
            or not (buf[ends - lens] == 0x7B).all()
            or not (buf[ends - 1] == 0x7D).all()
            or not _utf8(joined)
        ):
            return None
        try:
            table = pj.read_json(
                pa.BufferReader(joined),
                read_options=pj.ReadOptions(block_size=max(1 << 18, len(joined) // 2 + 1)),
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
        flags: list[pa.Array] = []  # per row: True if it needs the Python path
        for f in self.spec.features:
            col = table.column(f.name).combine_chunks()
            if col.type != _READ[f.kind]:
                return None  # e.g. an int64 column promoted by a 19.5: whole columns
            if f.required and col.null_count:
                flags.append(col.is_null())
            if f.kind is FeatureKind.FLOAT:
                odd = _unusual_float(col)
                if odd is not None:
                    flags.append(odd)
                col = col.cast(pa.float32(), safe=False)
            elif f.kind is FeatureKind.BYTES:
                try:
                    col.validate(full=True)
                except pa.ArrowInvalid:
                    return None
            arrays.append(col)
        times = self._event_times(table, timestamps, now_ms, flags)
        if times is None:
            return None
        batch = pa.RecordBatch.from_arrays(arrays, schema=self.target)
        ms = times.to_numpy()  # no nulls: a view, not a copy
        if not flags:
            return Clean(batch, ms, [])
        suspect = flags[0]
        for more in flags[1:]:
            suspect = pc.or_(suspect, more)
        if not pc.any(suspect).as_py():
            return Clean(batch, ms, [])
        keep = pc.invert(suspect)
        return Clean(
            batch.filter(keep),
            ms[keep.to_numpy(zero_copy_only=False)],
            pc.indices_nonzero(suspect).to_pylist(),
        )

    def _event_times(
        self, table: pa.Table, kafka_ts: list[int], now_ms: int, flags: list[pa.Array]
    ) -> pa.Array | None:
        field = self.event_time_field
        if not field:
            times = pa.array(kafka_ts, pa.int64())
        else:
            if field not in table.column_names:
                return None
            col = table.column(field).combine_chunks()
            if col.type not in (pa.int64(), pa.float64()):
                return None
            scaled, bad = _scaled(col, self.unit_ms)
            if pc.any(bad).as_py():
                flags.append(bad)
                scaled = pc.if_else(bad, 0.0, scaled)
            times = pc.cast(scaled, pa.int64(), safe=False)
        future = pc.greater(times, now_ms + self.max_future_ms)
        if pc.any(future).as_py():
            flags.append(future)
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
    scaled, bad = _scaled(col, unit_ms)
    if pc.any(bad).as_py():
        return None
    return pc.cast(scaled, pa.int64(), safe=False).to_pylist()


def _scaled(col: pa.Array, unit_ms: int) -> tuple[pa.Array, pa.Array]:
    """Numeric event times scaled to ms (as doubles), and per row whether it is missing,
    not finite, or outside years 1 to 9999: the arithmetic both paths share."""
    # Unsafe: an int beyond 2**53 is out of range anyway (flagged here), not an error.
    scaled = pc.multiply(col.cast(pa.float64(), safe=False), float(unit_ms))
    ok = pc.and_(
        pc.is_finite(scaled),
        pc.and_(
            pc.greater_equal(scaled, float(MIN_EPOCH_MS)),
            pc.less_equal(scaled, float(MAX_EPOCH_MS)),
        ),
    )
    return scaled, pc.fill_null(pc.invert(ok), True)


def _unusual_float(col: pa.Array) -> pa.Array | None:
    """Rows whose double the Python path must judge (non-finite, beyond float32) or
    round itself (beyond 2**53, where it rounds an integer straight to float32)."""
    if col.null_count == len(col):
        return None
    # One comparison covers all three: NaN and infinities are never below 2**53.
    ok = pc.less(pc.abs(col), _EXACT_DOUBLE)
    if pc.all(ok).as_py():  # nulls are skipped: a missing value is not unusual
        return None
    return pc.fill_null(pc.invert(ok), False)


def _utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
