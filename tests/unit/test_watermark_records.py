"""Watermark records on an examples topic (docs/ingest.md, "Watermark records"): a
producer's end of input closes a partition's open windows at once, not after the idle
timeout; an event-time watermark closes the windows it passes; neither is an example,
and one that does not parse is dead-lettered with its reason."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from services.ingest.core import Ingestor
from services.ingest.decode import Decoder, DecoderConfig
from services.ingest.metrics import IngestMetrics
from services.ingest.windowing import WindowPolicy
from shared.artifacts import ArtifactStore
from shared.schema import ExampleSpec, FeatureKind, FeatureSpec
from shared.topics import END_OF_INPUT, WATERMARK_HEADER
from tests.unit.helpers import ListSink, Rec

pytestmark = pytest.mark.unit
SPEC = ExampleSpec((FeatureSpec("x", FeatureKind.FLOAT, True),))
TP = ("ctrain.examples", 0)
HOUR_MS = 3_600_000


def _ex(off: int, t_ms: int) -> Rec:
    return Rec(TP[0], TP[1], off, None, orjson.dumps({"x": off * 0.5, "t": t_ms}), 0)


def _mark(off: int, value: bytes) -> Rec:
    return Rec(TP[0], TP[1], off, None, b"", 0, ((WATERMARK_HEADER, value),))


def _ingestor(root: Path, sink: ListSink, clock: list[float]) -> Ingestor:
    return Ingestor(
        stream="s",
        decoder=Decoder(SPEC, DecoderConfig(event_time_field="t", event_time_unit="ms")),
        policy=WindowPolicy(max_count=None, duration_ms=HOUR_MS),
        store=ArtifactStore(str(root)),
        sink=sink,
        metrics=IngestMetrics(CollectorRegistry()),
        idle_timeout_s=30.0,
        clock=lambda: clock[0],
    )


async def _position(tp: tuple[str, int]) -> int:
    return 7


def _positions(*offsets: int) -> Callable[[tuple[str, int]], Awaitable[int]]:
    """The consumer's position of the partition at each call, in turn."""
    it = iter(offsets)

    async def position(tp: tuple[str, int]) -> int:
        return next(it)

    return position


async def _assigned(root: Path, now: float = 1_000.0) -> tuple[ListSink, list[float], Ingestor]:
    """A sink, a settable clock, and an ingestor that owns TP."""
    sink, clock = ListSink(), [now]
    ing = _ingestor(root, sink, clock)
    await ing.assign(TP)
    return sink, clock, ing


def test_end_of_input_closes_the_open_windows_at_once_and_announces_the_partition_idle(
    tmp_path: Path,
) -> None:
    recs = [_ex(0, 10), _ex(1, 20), _ex(2, HOUR_MS + 5), _mark(3, END_OF_INPUT)]

    async def go() -> tuple[ListSink, dict[tuple[str, int], int], int, Ingestor]:
        sink, _clock, ing = await _assigned(tmp_path)
        commits = dict(await ing.process_many({TP: recs}))
        # No wall time passed: without the record, the idle timeout would hold both.
        assert await ing.close_idle() == {}
        announced = await ing.announce_idle(_position)
        return sink, commits, announced, ing

    sink, commits, announced, ing = asyncio.run(go())
    assert [(w.example_count, w.close_reason) for w in sink.windows] == [
        (2, "watermark"),  # the third example's time passed it
        (1, "end_of_input"),  # no later example: the idle timeout would have held it
    ]
    assert commits == {TP: 4}  # past the watermark record: nothing left to replay
    assert announced == 1 and sink.idle[0].next_offset == 4  # after the record
    assert sink.letters == []  # not an example, not a rejection
    assert ing.metrics.watermarks._value.get() == 1
    assert ing.parts[TP].windows.watermark == HOUR_MS + 5  # end of input moves no time


def test_records_after_end_of_input_open_a_new_window_and_are_not_late(tmp_path: Path) -> None:
    recs = [_ex(0, 10), _mark(1, END_OF_INPUT), _ex(2, 30), _ex(3, 40)]

    async def go() -> ListSink:
        sink, clock, ing = await _assigned(tmp_path)
        await ing.process_many({TP: recs})
        clock[0] += 31  # the second window closes as idle, the usual way
        await ing.close_idle()
        return sink

    sink = asyncio.run(go())
    assert [(w.offsets[0].first, w.offsets[0].last, w.close_reason) for w in sink.windows] == [
        (0, 0, "end_of_input"),
        (2, 3, "idle"),
    ]
    assert sink.letters == []


def test_an_event_time_watermark_closes_the_windows_it_passes_and_makes_older_records_late(
    tmp_path: Path,
) -> None:
    wm = str(HOUR_MS).encode()  # the first hour is over
    recs = [_ex(0, 10), _ex(1, HOUR_MS + 1), _mark(2, wm), _ex(3, 20), _ex(4, HOUR_MS + 2)]

    async def go() -> ListSink:
        sink, _clock, ing = await _assigned(tmp_path)
        await ing.process_many({TP: recs})
        return sink

    sink = asyncio.run(go())
    assert [(w.example_count, w.close_reason) for w in sink.windows] == [(1, "watermark")]
    assert [(d.source.offset, d.reason) for d in sink.letters] == [(3, "late")]


def test_a_watermark_record_that_does_not_parse_is_dead_lettered_with_its_reason(
    tmp_path: Path,
) -> None:
    recs = [_ex(0, 10), _mark(1, b"soon")]

    async def go() -> ListSink:
        sink, _clock, ing = await _assigned(tmp_path)
        await ing.process_many({TP: recs})
        await ing.drain()
        return sink

    sink = asyncio.run(go())
    assert sink.windows == []  # nothing closed
    [letter] = sink.letters
    assert (letter.source.offset, letter.reason) == (1, "bad_watermark")
    assert "ctrain-watermark=b'soon'" in letter.message


def test_a_watermark_record_closes_the_same_windows_whatever_the_poll_sizes(
    tmp_path: Path,
) -> None:
    recs = [_ex(i, 1_000 * i) for i in range(6)] + [_mark(6, END_OF_INPUT)]
    recs += [_ex(7 + i, HOUR_MS + i) for i in range(5)] + [_mark(12, str(2 * HOUR_MS).encode())]

    async def run(root: Path, polls: list[list[Rec]]) -> list[tuple[str, str, str]]:
        sink, _clock, ing = await _assigned(root)
        for poll in polls:
            await ing.process_many({TP: poll})
        return [(w.window_id, w.sha256, w.close_reason) for w in sink.windows]

    whole = asyncio.run(run(tmp_path / "a", [recs]))
    one_by_one = asyncio.run(run(tmp_path / "b", [[r] for r in recs]))
    assert whole == one_by_one
    assert [why for _, _, why in whole] == ["end_of_input", "watermark"]


def test_a_partition_announced_idle_is_announced_again_after_a_watermark_record(
    tmp_path: Path,
) -> None:
    # A partition that got no example, only the replay's end of input: the validator
    # holds its period open until ingest says the partition is idle past that record.
    async def go() -> ListSink:
        sink, clock, ing = await _assigned(tmp_path)
        clock[0] += 31
        position = _positions(0, 1)
        assert await ing.announce_idle(position) == 1  # quiet from the start: offset 0
        await ing.process_many({TP: [_mark(0, END_OF_INPUT)]})
        assert await ing.announce_idle(position) == 1  # at once, not after the timeout
        return sink

    sink = asyncio.run(go())
    assert [e.next_offset for e in sink.idle] == [0, 1]


def test_the_idle_announcement_after_end_of_input_names_what_was_handled_not_fetched(
    tmp_path: Path,
) -> None:
    async def go() -> ListSink:
        sink, _clock, ing = await _assigned(tmp_path)
        await ing.process_many({TP: [_ex(0, 10), _mark(1, END_OF_INPUT)]})

        async def fetched_ahead(tp: tuple[str, int]) -> int:
            return 9  # the next poll's records, after the marker, are in hand already

        assert await ing.announce_idle(fetched_ahead) == 1
        return sink

    sink = asyncio.run(go())
    assert [e.next_offset for e in sink.idle] == [2]


def test_a_time_watermark_that_leaves_nothing_open_announces_the_partition_idle_at_once(
    tmp_path: Path,
) -> None:
    # A producer's periodic watermark to a partition without examples: without this,
    # each one would restart the idle timer and the partition would never count as idle.
    async def go() -> ListSink:
        sink, _clock, ing = await _assigned(tmp_path)
        await ing.process_many({TP: [_ex(0, 10), _mark(1, str(HOUR_MS).encode())]})
        assert await ing.announce_idle(_position) == 1
        await ing.process_many({TP: [_ex(2, HOUR_MS + 5), _mark(3, str(HOUR_MS + 9).encode())]})
        assert await ing.announce_idle(_position) == 0  # a window is still open
        return sink

    sink = asyncio.run(go())
    assert [(w.example_count, w.close_reason) for w in sink.windows] == [(1, "watermark")]
    assert [e.next_offset for e in sink.idle] == [2]


def test_a_watermark_beyond_the_future_limit_is_dead_lettered_not_believed(
    tmp_path: Path,
) -> None:
    nanoseconds = str(1_420_000_000 * 10**9).encode()  # ns sent where ms belong

    async def go() -> tuple[ListSink, Ingestor]:
        sink, _clock, ing = await _assigned(tmp_path, 1_420_000_000.0)
        await ing.process_many({TP: [_ex(0, 10), _mark(1, nanoseconds), _ex(2, 20)]})
        await ing.drain()
        return sink, ing

    sink, ing = asyncio.run(go())
    [letter] = sink.letters
    assert (letter.source.offset, letter.reason) == (1, "bad_watermark")
    assert "beyond year 9999" in letter.message
    assert ing.parts == {} and sink.windows == []  # drained; the examples still open, not late


def test_a_bad_watermark_record_also_rearms_the_idle_announcement(tmp_path: Path) -> None:
    async def go() -> ListSink:
        sink, clock, ing = await _assigned(tmp_path)
        clock[0] += 31
        position = _positions(0, 1)
        assert await ing.announce_idle(position) == 1
        await ing.process_many({TP: [_mark(0, b"soon")]})
        assert await ing.announce_idle(position) == 0  # just read: quiet again first
        clock[0] += 31
        assert await ing.announce_idle(position) == 1
        return sink

    sink = asyncio.run(go())
    assert [e.next_offset for e in sink.idle] == [0, 1]
