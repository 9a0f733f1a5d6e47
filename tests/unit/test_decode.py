from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.decode import Accepted, Decoder, DecoderConfig, Reason, Rejected
from shared.schema import example_spec, load_schema
from tests.conftest import TAXI_SCHEMA

pytestmark = pytest.mark.unit
NOW = 1_700_000_000_000


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    spec = example_spec(load_schema(TAXI_SCHEMA))
    return Decoder(spec, DecoderConfig(event_time_field="trip_start_timestamp"))


def good(**over: object) -> dict[str, object]:
    row: dict[str, object] = {
        "fare": 12.5,
        "payment_type": "Cash",
        "trip_start_month": 5,
        "trip_start_hour": 19,
        "trip_start_day": 6,
        "trip_start_timestamp": 1400269500,
        "pickup_latitude": 41.9,
        "pickup_longitude": -87.6,
        "trip_miles": 2.0,
        "tips": 0.0,
        "pickup_community_area": 8,
    }
    row.update(over)
    return {k: v for k, v in row.items() if v is not ...}


def dec(d: Decoder, obj: object) -> Accepted | Rejected:
    raw = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return d.decode(raw, NOW, NOW)


def test_valid_example_is_accepted_with_event_time(decoder: Decoder) -> None:
    res = dec(decoder, good())
    assert isinstance(res, Accepted)
    assert res.event_time_ms == 1400269500 * 1000
    assert res.row["fare"] == 12.5 and res.row["payment_type"] == "Cash"


@pytest.mark.parametrize(
    ("field", "given", "expected"),
    [
        ("fare", "12.5", 12.5),  # numeric string for FLOAT
        ("fare", 12, 12.0),  # int for FLOAT
        ("trip_start_hour", 19.0, 19),  # integral float for INT
        ("trip_start_hour", "19", 19),  # numeric string for INT
    ],
)
def test_safe_coercions(decoder: Decoder, field: str, given: object, expected: object) -> None:
    res = dec(decoder, good(**{field: given}))
    assert isinstance(res, Accepted)
    assert res.row[field] == expected and type(res.row[field]) is type(expected)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", Reason.EMPTY),
        (b"not json", Reason.NOT_JSON),
        (b"\xff\xfe{}", Reason.NOT_UTF8),
        (b"[1, 2]", Reason.NOT_OBJECT),
        (b'"text"', Reason.NOT_OBJECT),
    ],
)
def test_structural_rejects(decoder: Decoder, raw: bytes, reason: str) -> None:
    res = decoder.decode(raw, NOW, NOW)
    assert isinstance(res, Rejected) and res.reason == reason, res


def test_invalid_utf8_names_the_byte(decoder: Decoder) -> None:
    res = decoder.decode(b'{"company": "\xff\xfe"}', NOW, NOW)
    assert isinstance(res, Rejected) and res.reason == Reason.NOT_UTF8
    assert "byte 13: invalid start byte" in res.message, res.message


@pytest.mark.parametrize(
    ("over", "reason", "needle"),
    [
        ({"payment_type": ...}, Reason.MISSING_FEATURE, "payment_type"),
        ({"payment_type": None}, Reason.MISSING_FEATURE, "payment_type"),
        ({"fare": "twelve"}, Reason.WRONG_TYPE, "fare"),
        ({"fare": True}, Reason.WRONG_TYPE, "fare"),
        ({"trip_start_hour": 19.5}, Reason.WRONG_TYPE, "trip_start_hour"),
        ({"trip_start_hour": [19]}, Reason.WRONG_TYPE, "trip_start_hour"),
        ({"payment_type": 3}, Reason.WRONG_TYPE, "payment_type"),
        ({"fare": "NaN"}, Reason.NON_FINITE, "fare"),
        ({"fare": "inf"}, Reason.NON_FINITE, "fare"),
        ({"colour": "red"}, Reason.UNKNOWN_FEATURE, "colour"),
        ({"trip_start_timestamp": NOW // 1000 + 10 * 86400}, Reason.FUTURE_EVENT_TIME, "future"),
    ],
)
def test_feature_rejects(
    decoder: Decoder, over: dict[str, object], reason: str, needle: str
) -> None:
    res = dec(decoder, good(**over))
    assert isinstance(res, Rejected), res
    assert res.reason == reason
    assert needle in res.message


def test_too_large(decoder: Decoder) -> None:
    small = Decoder(decoder.spec, DecoderConfig(max_bytes=64))
    res = small.decode(orjson.dumps(good()), NOW, NOW)
    assert isinstance(res, Rejected) and res.reason == Reason.TOO_LARGE
    assert "64" in res.message


def test_duplicate_key(decoder: Decoder) -> None:
    raw = orjson.dumps(good())[:-1] + b',"fare":99.0}'
    res = decoder.decode(raw, NOW, NOW)
    assert isinstance(res, Rejected) and res.reason == Reason.DUPLICATE_KEY
    assert "fare" in res.message


def test_kafka_timestamp_is_default_event_time() -> None:
    spec = example_spec(load_schema(TAXI_SCHEMA))
    res = Decoder(spec).decode(orjson.dumps(good()), 1234, NOW)
    assert isinstance(res, Accepted) and res.event_time_ms == 1234


def test_iso_event_time() -> None:
    spec = example_spec(load_schema(TAXI_SCHEMA))
    d = Decoder(spec, DecoderConfig(event_time_field="ts", reject_unknown=True))
    res = d.decode(orjson.dumps({**good(), "ts": "2014-01-01T00:00:00Z"}), 0, NOW)
    assert isinstance(res, Accepted) and res.event_time_ms == 1388534400000
    naive = d.decode(orjson.dumps({**good(), "ts": "2014-01-01T00:00:00"}), 0, NOW)
    assert isinstance(naive, Rejected) and naive.reason == Reason.BAD_EVENT_TIME
    words = d.decode(orjson.dumps({**good(), "ts": "yesterday"}), 0, NOW)
    assert isinstance(words, Rejected) and words.reason == Reason.BAD_EVENT_TIME
    missing = d.decode(orjson.dumps(good()), 0, NOW)
    assert isinstance(missing, Rejected) and "'ts'" in missing.message


@pytest.mark.parametrize("t", [253402300800, -62135596801, 1e300, -(2**62)])
def test_event_time_outside_years_1_to_9999_is_rejected_not_a_crash(t: float) -> None:
    """Found by a property test: such a time raised in the decoder (a poison pill:
    datetime cannot name it, int() cannot hold 1e300 ms)."""
    spec = example_spec(load_schema(TAXI_SCHEMA))
    d = Decoder(spec, DecoderConfig(event_time_field="ts"))
    res = dec(d, {**good(), "ts": t})
    assert isinstance(res, Rejected) and res.reason == Reason.BAD_EVENT_TIME
    assert "outside years 1 to 9999" in res.message
    ok = dec(d, {**good(), "ts": -62135596800})  # 0001-01-01: in range
    assert isinstance(ok, Accepted)


def test_optional_feature_may_be_absent(decoder: Decoder) -> None:
    res = dec(decoder, good(company=...))
    assert isinstance(res, Accepted) and "company" not in res.row
    assert not math.isnan(res.row["fare"])


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.sampled_from(["12.5", "7", "1e300", "NaN", "Cash"]),
    st.lists(st.integers(), max_size=2),
)
feature_names = st.sampled_from(["fare", "payment_type", "trip_start_hour", "company", "tips"])


@given(
    st.lists(
        st.dictionaries(feature_names, values, max_size=4).map(lambda d: {**good(), **d}),
        min_size=1,
        max_size=12,
    )
)
@settings(max_examples=200, deadline=None)
def test_batch_decode_equals_one_by_one(rows: list[dict[str, object]]) -> None:
    """A record's verdict never depends on its neighbours in the batch."""
    spec = example_spec(load_schema(TAXI_SCHEMA))
    d = Decoder(spec, DecoderConfig(event_time_field="trip_start_timestamp"))
    raws: list[bytes | None] = []
    for r in rows:
        try:
            raws.append(orjson.dumps(r))
        except orjson.JSONEncodeError:
            raws.append(b"{bad")
    batch = d.decode_batch(raws, [0] * len(raws), NOW)
    rejected = dict(batch.rejected)
    got_rows = iter(batch.batch.to_pylist())
    for i, raw in enumerate(raws):
        single = d.decode(raw, 0, NOW)
        if isinstance(single, Rejected):
            assert rejected[i] == single
        else:
            row = {k: v for k, v in next(got_rows).items() if v is not None}
            assert i not in rejected and row == single.row
