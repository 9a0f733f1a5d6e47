"""The C++ JSON path gives no verdict of its own: whatever it takes, the Python path
would have taken with the same values; whatever it refuses goes to the Python path."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest import decode as decode_mod
from services.ingest.decode import BatchResult, Decoder, DecoderConfig
from shared.schema import example_spec, load_schema
from shared.shard import ShardWriter
from tests.conftest import TAXI_SCHEMA
from tests.unit.test_decode import good

pytestmark = pytest.mark.unit
NOW = 1_700_000_000_000


def decoders(**cfg: object) -> tuple[Decoder, Decoder]:
    """(C++ path on every batch, Python path only)."""
    spec = example_spec(load_schema(TAXI_SCHEMA))
    base = {"event_time_field": "trip_start_timestamp", **cfg}
    return (
        Decoder(spec, DecoderConfig(fast_min_rows=1, **base)),  # type: ignore[arg-type]
        Decoder(spec, DecoderConfig(fast_min_rows=0, **base)),  # type: ignore[arg-type]
    )


def rows(n: int) -> list[bytes]:
    return [
        orjson.dumps(good(fare=1.25 + i, trip_start_timestamp=1_400_000_000 + 60 * i))
        for i in range(n)
    ]


def same(a: BatchResult, b: BatchResult) -> None:
    assert a.batch.schema == b.batch.schema
    assert a.batch.equals(b.batch)
    assert a.accepted.tolist() == b.accepted.tolist()
    assert a.event_ms.tolist() == b.event_ms.tolist()
    assert a.rejected == b.rejected


def test_clean_batch_is_taken_whole_with_the_python_values(tmp_path: Path) -> None:
    fast, slow = decoders()
    values: list[bytes | None] = list(rows(200))
    assert fast._fast.decode(values, [0] * 200, NOW) is not None
    a = fast.decode_batch(values, [0] * 200, NOW)
    b = slow.decode_batch(values, [0] * 200, NOW)
    same(a, b)
    # Byte-identical shards, whichever path decoded the rows.
    shas = []
    for name, res in (("fast", a), ("slow", b)):
        w = ShardWriter(fast.schema, str(tmp_path / f"{name}.parquet"), 64)
        w.add(res.batch)
        shas.append(w.finish())
    assert shas[0] == shas[1]


def _dumps(obj: dict[str, object]) -> bytes:
    return orjson.dumps(obj)


# Each: one record the C++ reader would misread or cannot judge alone.
REFUSED = {
    "nan": b'{"fare": NaN}',
    "infinity": b'{"fare": Infinity}',
    "huge_number": b'{"fare": 1e999}',
    "float_in_int": _dumps(good(trip_start_hour=19.5)),
    "int_beyond_int64": _dumps(good())[:-1] + b',"trip_start_day":99999999999999999999}',
    "int_beyond_2_53_in_float": _dumps(good(fare=2**60 + 1)),
    "beyond_float32": _dumps(good(fare=1e300)),
    "bool_in_float": _dumps(good(fare=True)),
    "string_in_float": _dumps(good(fare="12.5")),
    "number_in_string": _dumps(good(payment_type=5)),
    "invalid_utf8": _dumps(good(payment_type="Cash")).replace(b"Cash", b"Ca\xffh"),
    "lone_high_surrogate": _dumps(good()).replace(b'"Cash"', b'"\\ud800"'),
    "lone_low_surrogate": _dumps(good()).replace(b'"Cash"', b'"\\udc00"'),
    "surrogate_key": b'{"\\udc00": 1,' + _dumps(good())[1:],
    "missing_required": _dumps(good(fare=...)),
    "null_required": _dumps(good(fare=None)),
    "unknown_key": _dumps(good(driver="Ann")),
    "unknown_null_key": _dumps(good(driver=None)),
    "duplicate_key": b'{"fare": 1.0,' + _dumps(good())[1:],
    "escaped_duplicate_key": b'{"f\\u0061re": 1.0,' + _dumps(good())[1:],
    "two_objects": _dumps(good()) + b" " + _dumps(good()),
    "newline_inside": _dumps(good()).replace(b",", b",\n", 1),
    "blank": b"   ",
    "empty": b"",
    "not_an_object": b"[1, 2]",
    "trailing_garbage": _dumps(good())[:-1] + b"} x}",
    "bad_syntax": b'{"fare": 1.}',
    "iso_event_time": _dumps(good(trip_start_timestamp="2014-05-16T19:45:00Z")),
    "future_event_time": _dumps(good(trip_start_timestamp=4_000_000_000)),
    "too_large": _dumps(good(payment_type="x" * 4096)),
}


# A row the reader reads but whose verdict is the Python path's alone.
SET_ASIDE = {
    "nan",
    "infinity",
    "int_beyond_2_53_in_float",
    "beyond_float32",
    "missing_required",
    "null_required",
    "future_event_time",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_record_gets_the_python_verdict(name: str) -> None:
    fast, slow = decoders(max_bytes=2048)
    values: list[bytes | None] = list(rows(70))
    values[33] = REFUSED[name]
    ts = [0] * len(values)
    got = fast._fast.decode(values, ts, NOW)
    if name in SET_ASIDE:
        # Only that row goes to Python; the other 69 stay on the fast path.
        assert got is not None and got.suspects == [33] and got.batch.num_rows == 69
    else:
        assert got is None
    same(fast.decode_batch(values, ts, NOW), slow.decode_batch(values, ts, NOW))


def test_a_refused_record_sends_only_its_piece_to_python(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast, slow = decoders()
    n = 2 * decode_mod.FAST_PIECE + 100
    values: list[bytes | None] = list(rows(n))
    bad = decode_mod.FAST_PIECE + 7
    values[bad] = REFUSED["bad_syntax"]
    sizes: list[int] = []
    python = Decoder._decode_python

    def spy(self: Decoder, v: list[bytes | None], t: list[int], now: int) -> BatchResult:
        sizes.append(len(v))
        return python(self, v, t, now)

    monkeypatch.setattr(Decoder, "_decode_python", spy)
    got = fast.decode_batch(values, [0] * n, NOW)
    assert sizes == [decode_mod.FAST_PIECE]
    sizes.clear()
    same(got, slow.decode_batch(values, [0] * n, NOW))
    assert [i for i, _ in got.rejected] == [bad]


def test_kafka_timestamps_without_an_event_time_field() -> None:
    fast, slow = decoders(event_time_field="")
    values: list[bytes | None] = list(rows(80))
    ts = [NOW - 1000 + i for i in range(80)]
    assert fast._fast.decode(values, ts, NOW) is not None
    same(fast.decode_batch(values, ts, NOW), slow.decode_batch(values, ts, NOW))
    ts[5] = NOW + 2 * 24 * 3600 * 1000  # in the future: the Python path says so
    got = fast._fast.decode(values, ts, NOW)
    assert got is not None and got.suspects == [5]
    same(fast.decode_batch(values, ts, NOW), slow.decode_batch(values, ts, NOW))


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.sampled_from(["12.5", "7", "1e300", "NaN", "Cash"]),
)
feature_names = st.sampled_from(
    ["fare", "payment_type", "trip_start_hour", "trip_start_timestamp", "company", "driver"]
)


def _raw(o: dict[str, object]) -> bytes:
    try:
        return orjson.dumps(o)
    except orjson.JSONEncodeError:
        return b"{bad"


records = st.one_of(
    st.one_of(st.just({}), st.dictionaries(feature_names, values, max_size=2))
    .map(lambda d: {**good(), **d})
    .map(_raw),
    st.sampled_from(sorted(REFUSED.values())),
)


@given(st.lists(records, min_size=1, max_size=20))
@settings(max_examples=300, deadline=None)
def test_any_batch_decodes_as_the_python_path_does(raws: list[bytes]) -> None:
    fast, slow = decoders(max_bytes=2048)
    batch: list[bytes | None] = list(raws)
    ts = [0] * len(batch)
    a, b = fast.decode_batch(batch, ts, NOW), slow.decode_batch(batch, ts, NOW)
    assert a.batch.schema == b.batch.schema and a.batch.equals(b.batch)
    assert (a.accepted.tolist(), a.event_ms.tolist(), a.rejected) == (
        b.accepted.tolist(),
        b.event_ms.tolist(),
        b.rejected,
    )
