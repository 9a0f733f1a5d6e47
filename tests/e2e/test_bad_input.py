"""Malformed records on ``ctrain.examples`` are dead-lettered, never fatal, never lossy.

The whole dev stack runs (Tansu, Redis, the model server and the four services as
their own processes) while the real taxi replay is mixed with ten kinds of bad
records, written as raw Kafka values the way a buggy producer would write them.
The test holds ingest to three promises:

* each bad record reaches ``ctrain.examples.dlq`` with a precise reason code and a
  message an operator can read, matched to the exact partition and offset it was
  written at (so a reason can never be credited to the wrong record);
* nothing is lost or invented: per partition, the examples in closed windows plus
  the dead letters equal what was produced, the only dead letters besides the
  injected ones are the real rows the schema rejects, and the shards hold exactly
  the good rows;
* bad input is handled, not survived: every process still has the pid it started
  with, every service answers ``/healthz``, and ingest logged no traceback.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from ctrain import devstack
from ctrain.replay import encode_rows, order_by_time, read_table
from services.ingest.decode import Reason
from services.ingest.settings import IngestSettings
from shared import topics
from shared.events import DeadLetter, WindowClosed
from shared.kafka import MAX_MESSAGE_BYTES
from shared.schema import example_spec, load_schema
from shared.shard import read_shard
from tests.conftest import TAXI_CSV, TAXI_SCHEMA
from tests.integration.support import read_topic

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SEED = 20240611
COPIES = 3  # of every variant, so bad records land in several batches and partitions
EVENT_TIME = "trip_start_timestamp"
# Stable ingest setting: the dev stack does not override it, so the default applies.
MAX_BYTES = IngestSettings.model_fields["max_example_bytes"].default
YEAR_2100 = 4_102_444_800  # 2100-01-01T00:00:00Z in epoch seconds
_SPEC = example_spec(load_schema(TAXI_SCHEMA))


@dataclass(frozen=True)
class Variant:
    """One malformed record and the reason ingest must give for it."""

    kind: str
    label: str
    value: bytes | None
    reason: str


@dataclass(frozen=True)
class Sent:
    """Where one produced record landed; the DLQ's ``source`` must point back here."""

    partition: int
    offset: int
    value: bytes | None
    variant: Variant | None  # None: a row of the real taxi data


def _mutate(row: dict[str, Any], **changes: Any) -> bytes:
    """The template row with fields replaced (a value of ``...`` deletes the field)."""
    out = {k: v for k, v in row.items() if changes.get(k) is not ...}
    out.update({k: v for k, v in changes.items() if v is not ...})
    return orjson.dumps(out)


def _raw_value(row: dict[str, Any], field: str, raw: bytes) -> bytes:
    """The template row with one value replaced by raw bytes orjson would never emit."""
    marker = "\u0000raw\u0000"
    text = orjson.dumps({**row, field: marker})
    return text.replace(orjson.dumps(marker), raw)


def _splice(row: dict[str, Any], raw_fields: bytes) -> bytes:
    """The template row with raw JSON text prepended (to repeat a key)."""
    return b"{" + raw_fields + b"," + orjson.dumps(row)[1:]


def _variants(row: dict[str, Any]) -> list[Variant]:
    """The ten kinds of bad input, each built from an otherwise valid row.

    Starting from a complete real row means the injected defect is the only thing
    wrong with the record, so the reason code is unambiguous.
    """
    pad = MAX_BYTES - len(_mutate(row, company=""))  # room left for the company string

    def v(kind: str, label: str, value: bytes | None, reason: str) -> Variant:
        return Variant(kind, label, value, reason)

    return [
        v("not_json", "plain text", b"this is not json", Reason.NOT_JSON),
        v("not_json", "truncated object", orjson.dumps(row)[:-7], Reason.NOT_JSON),
        v("wrong_type", "fare is a word", _mutate(row, fare="cheap"), Reason.WRONG_TYPE),
        v("wrong_type", "hour is a word", _mutate(row, trip_start_hour="noon"), Reason.WRONG_TYPE),
        v("wrong_type", "payment_type is an int", _mutate(row, payment_type=5), Reason.WRONG_TYPE),
        v("wrong_type", "trip_miles is a list", _mutate(row, trip_miles=[1.0]), Reason.WRONG_TYPE),
        v(
            "wrong_type",
            "fractional int",
            _mutate(row, trip_start_day=2.5),
            Reason.WRONG_TYPE,
        ),
        v("missing_feature", "no fare", _mutate(row, fare=...), Reason.MISSING_FEATURE),
        v(
            "missing_feature",
            "no pickup_community_area",
            _mutate(row, pickup_community_area=...),
            Reason.MISSING_FEATURE,
        ),
        v(
            "missing_feature",
            "payment_type is null",
            _mutate(row, payment_type=None),
            Reason.MISSING_FEATURE,
        ),
        # NaN, Infinity and out-of-range literals are not JSON (RFC 8259), so the
        # parser refuses them before any feature is looked at: not_json is the
        # precise answer. Non-finite values that *are* valid JSON (numeric strings,
        # doubles beyond float32) reach the feature check and are non_finite.
        v("non_finite", "NaN token", _raw_value(row, "tips", b"NaN"), Reason.NOT_JSON),
        v("non_finite", "Infinity token", _raw_value(row, "tips", b"Infinity"), Reason.NOT_JSON),
        v("non_finite", "1e400 literal", _raw_value(row, "tips", b"1e400"), Reason.NOT_JSON),
        v("non_finite", '"NaN" string', _mutate(row, fare="NaN"), Reason.NON_FINITE),
        v("non_finite", '"-Infinity" string', _mutate(row, tips="-Infinity"), Reason.NON_FINITE),
        v("non_finite", "beyond float32", _mutate(row, trip_miles=1e39), Reason.NON_FINITE),
        v(
            "too_large",
            "one byte over",
            _mutate(row, company="x" * (pad + 1)),
            Reason.TOO_LARGE,
        ),
        v(
            "too_large",
            "twice the limit",
            _mutate(row, company="x" * (2 * MAX_BYTES)),
            Reason.TOO_LARGE,
        ),
        v(
            "unknown_feature",
            "extra key",
            _mutate(row, tip_percent=0.1),
            Reason.UNKNOWN_FEATURE,
        ),
        v("unknown_feature", "wrong case", _mutate(row, Fare=1.0), Reason.UNKNOWN_FEATURE),
        v(
            "not_utf8",
            "0xff 0xfe in a string",
            _raw_value(row, "company", b'"\xff\xfe"'),
            Reason.NOT_UTF8,
        ),
        v(
            "not_utf8",
            "encoded surrogate",
            _raw_value(row, "company", b'"\xed\xa0\x80"'),
            Reason.NOT_UTF8,
        ),
        v("empty", "empty bytes", b"", Reason.EMPTY),
        v("empty", "null value (tombstone)", None, Reason.EMPTY),
        v(
            "duplicate_key",
            "fare twice, different values",
            _splice(row, b'"fare": 999.0'),
            Reason.DUPLICATE_KEY,
        ),
        v(
            "duplicate_key",
            "payment_type twice, same value",
            _splice(row, b'"payment_type": ' + orjson.dumps(row["payment_type"])),
            Reason.DUPLICATE_KEY,
        ),
        v(
            "future_event_time",
            "year 2100",
            _mutate(row, trip_start_timestamp=YEAR_2100),
            Reason.FUTURE_EVENT_TIME,
        ),
        v(
            "future_event_time",
            "30 days ahead",
            _mutate(row, trip_start_timestamp=int(time.time()) + 30 * 86400),
            Reason.FUTURE_EVENT_TIME,
        ),
    ]


def _mixed(good: list[bytes], bad: list[Variant]) -> list[tuple[bytes | None, Variant | None]]:
    """The replay with every bad variant inserted COPIES times at seeded positions."""
    rng = random.Random(SEED)
    seq: list[tuple[bytes | None, Variant | None]] = [(g, None) for g in good]
    for var in bad:
        for _ in range(COPIES):
            seq.insert(rng.randrange(len(seq) + 1), (var.value, var))
    return seq


async def _produce(bootstrap: str, seq: list[tuple[bytes | None, Variant | None]]) -> list[Sent]:
    """Write every record and keep its (partition, offset) from the broker's answer.

    Partitions are assigned round-robin so each partition still sees the taxi rows
    in event-time order: no good row can be dead-lettered as late, and every extra
    dead letter points at a defect rather than at ordering.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,  # Tansu rejects InitProducerId (see shared/settings.py)
        linger_ms=20,
        max_request_size=MAX_MESSAGE_BYTES + 65536,  # the oversize records must reach ingest
    )
    await producer.start()
    try:
        parts = sorted(await producer.partitions_for(topics.EXAMPLES))
        futures = [
            await producer.send(
                topics.EXAMPLES,
                value,
                # Kafka allows a null value only with a key (a compaction tombstone).
                key=b"tombstone" if value is None else None,
                partition=parts[i % len(parts)],
            )
            for i, (value, _) in enumerate(seq)
        ]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [
        Sent(m.partition, m.offset, value, var) for m, (value, var) in zip(metas, seq, strict=True)
    ]


def _read_until(
    bootstrap: str, done: Callable[[list[WindowClosed], list[DeadLetter]], bool], timeout: float
) -> tuple[list[WindowClosed], list[DeadLetter]]:
    """Re-read windows and DLQ until ``done`` holds; events deduplicated by their id."""

    async def once() -> tuple[list[WindowClosed], list[DeadLetter]]:
        win = await read_topic(bootstrap, topics.WINDOWS)
        dlq = await read_topic(bootstrap, topics.EXAMPLES_DLQ)
        windows = {e.window_id: e for e in win if isinstance(e, WindowClosed)}
        letters = {e.id: e for e in dlq if isinstance(e, DeadLetter)}
        return list(windows.values()), list(letters.values())

    deadline = time.monotonic() + timeout
    while True:
        windows, dlq = asyncio.run(once())
        if done(windows, dlq) or time.monotonic() > deadline:
            return windows, dlq
        time.sleep(1.0)  # poll interval between full re-reads, not a readiness wait


def _raw(letter: DeadLetter) -> bytes:
    if letter.payload_encoding == "base64":
        return base64.b64decode(letter.payload)
    return letter.payload.encode("utf-8")


def _rejected_by_schema(value: bytes) -> bool:
    """Whether a real taxi row lacks a feature the schema requires (min_fraction 1)."""
    row = orjson.loads(value)
    return any(row.get(f.name) is None for f in _SPEC.features if f.required)


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("CTRAIN_DEV_STATE_DIR", str(tmp_path / "dev"))
    monkeypatch.setenv(
        "CTRAIN_VALIDATOR_IGNORE_FEATURES", '["trip_start_timestamp","trip_start_month"]'
    )
    try:
        yield devstack.up(echo=lambda *a: None)
    finally:
        # Also ends the trigger's pipeline workers (they lead no group of their own).
        devstack.down(echo=lambda *a: None)


@pytest.mark.timeout(600)
def test_malformed_records_are_dead_lettered_without_loss_or_restart(
    stack: dict[str, Any],
) -> None:
    table = order_by_time(read_table(TAXI_CSV), EVENT_TIME)
    good = encode_rows(table)
    # The fullest real row (every optional feature the data ever carries), so each
    # variant below changes exactly one thing about an otherwise accepted record.
    template = max(map(orjson.loads, good), key=len)
    assert not _rejected_by_schema(orjson.dumps(template)) and "company" in template
    variants = _variants(template)
    assert len({v.kind for v in variants}) == 10
    # The boundary case really is one byte over the limit, not merely large.
    assert any(v.value is not None and len(v.value) == MAX_BYTES + 1 for v in variants)

    sent = asyncio.run(_produce(stack["kafka"], _mixed(good, variants)))
    total = len(sent)
    assert total == len(good) + COPIES * len(variants)

    def conserved(windows: list[WindowClosed], dlq: list[DeadLetter]) -> bool:
        return sum(w.example_count for w in windows) + len(dlq) >= total

    # Windows close by watermark or after the 5 s idle timeout, so all of them close.
    windows, dlq = _read_until(stack["kafka"], conserved, timeout=360)
    in_windows = sum(w.example_count for w in windows)
    assert in_windows + len(dlq) == total, (
        f"{in_windows} in windows + {len(dlq)} dead letters != {total} produced; "
        f"DLQ reasons {Counter(d.reason for d in dlq)}"
    )

    # ---- every injected record, at its exact source offset, with its reason
    by_source = {(d.source.partition, d.source.offset): d for d in dlq}
    assert all(d.source.topic == topics.EXAMPLES for d in dlq)
    wrong: list[str] = []
    observed: dict[str, Counter[str]] = {}
    for s in sent:
        if s.variant is None:
            continue
        letter = by_source.get((s.partition, s.offset))
        got = letter.reason if letter else "(not in DLQ)"
        observed.setdefault(f"{s.variant.kind}: {s.variant.label}", Counter())[got] += 1
        if letter is None or letter.reason != s.variant.reason:
            wrong.append(f"{s.variant.kind}/{s.variant.label} @{s.partition}:{s.offset} -> {got}")
            continue
        assert _raw(letter) == (s.value or b""), f"payload of {s.variant.label} altered"
        # Readable: one printable line, short enough for a log, never the payload.
        msg = letter.message
        assert msg.strip() and msg.isprintable() and len(msg) <= 500, (s.variant.label, msg)
    print("\nreasons by injected variant:")
    for label, counts in sorted(observed.items()):
        print(f"  {label:<55} {dict(counts)}")
    assert not wrong, "bad records not dead-lettered as expected:\n" + "\n".join(wrong)

    # ---- the only other dead letters are real rows the schema rejects
    injected = {(s.partition, s.offset) for s in sent if s.variant is not None}
    real_rejects = {
        (s.partition, s.offset): s
        for s in sent
        if s.variant is None and s.value is not None and _rejected_by_schema(s.value)
    }
    assert len(real_rejects) == 2  # README: two taxi rows lack pickup_community_area
    extra = {k: d for k, d in by_source.items() if k not in injected}
    assert extra.keys() == real_rejects.keys(), {k: d.reason for k, d in extra.items()}
    for k, d in extra.items():
        assert d.reason == Reason.MISSING_FEATURE and d.message.strip()
        assert _raw(d) == real_rejects[k].value

    # ---- per partition, windows + DLQ account for every offset produced
    produced = Counter(s.partition for s in sent)
    accounted = Counter(d.source.partition for d in dlq)
    for w in windows:
        assert len(w.offsets) == 1 and w.offsets[0].topic == topics.EXAMPLES
        accounted[w.offsets[0].partition] += w.example_count
    assert accounted == produced

    # ---- the shards hold exactly the good rows: none of a bad record leaked in
    stamps: list[int] = []
    for w in windows:
        shard = read_shard(w.data_uri)
        assert shard.num_rows == w.example_count
        assert set(shard.column_names) == {f.name for f in _SPEC.features}
        stamps.extend(shard.column(EVENT_TIME).to_pylist())
    expected = [
        orjson.loads(s.value)[EVENT_TIME]
        for s in sent
        if s.variant is None and s.value is not None and (s.partition, s.offset) not in extra
    ]
    assert sorted(stamps) == sorted(expected)

    # ---- no process died or was replaced; the services are healthy and said so
    procs = {p["name"]: p for p in stack["procs"]}
    assert set(devstack.SERVICES) <= procs.keys()
    for p in procs.values():
        try:
            os.kill(p["pid"], 0)
        except OSError:
            pytest.fail(f"{p['name']} (pid {p['pid']}) is gone; log {p['log']}")
    for name in devstack.SERVICES:
        r = httpx.get(f"{procs[name]['address']}/healthz", timeout=10)
        assert r.status_code == 200, (name, r.text)
    ingest_log = Path(procs["ingest"]["log"]).read_text(errors="replace")
    assert "Traceback" not in ingest_log, ingest_log[-4000:]

    # ---- ingest's own counters agree with the DLQ, reason by reason
    metrics = httpx.get(f"{procs['ingest']['address']}/metrics", timeout=10).text
    counted = Counter[str]()
    for family in text_string_to_metric_families(metrics):
        if family.name == "ctrain_ingest_examples_rejected":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counted[sample.labels["reason"]] += int(sample.value)
    assert counted == Counter(d.reason for d in dlq)
