"""``beam_memo.dofn_specs_memoized``: Beam introspects each DoFn once within the block,
gets the same answers (state and timer specs included), and gets its own function back
afterwards."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.unit


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    from apache_beam.transforms import userstate

    calls: list[Any] = []
    original = userstate.get_dofn_specs

    def counted(dofn: Any) -> Any:
        calls.append(dofn)
        return original(dofn)

    monkeypatch.setattr(userstate, "get_dofn_specs", counted)
    return calls


def _stateful_dofn() -> Any:
    import apache_beam as beam
    from apache_beam.coders import VarIntCoder
    from apache_beam.transforms.timeutil import TimeDomain
    from apache_beam.transforms.userstate import BagStateSpec, TimerSpec, on_timer

    class Stateful(beam.DoFn):
        BAG = BagStateSpec("bag", VarIntCoder())
        TIMER = TimerSpec("t", TimeDomain.WATERMARK)

        def process(
            self,
            kv: Any,
            bag: Any = beam.DoFn.StateParam(BAG),  # noqa: B008 (Beam's API)
            t: Any = beam.DoFn.TimerParam(TIMER),  # noqa: B008
        ) -> Any:
            yield kv

        @on_timer(TIMER)
        def fire(self) -> Any:
            return []

    return Stateful()


def test_each_dofn_is_introspected_once_with_the_same_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import apache_beam as beam
    from apache_beam.transforms import userstate

    from services.trigger.beam_memo import dofn_specs_memoized

    calls = _counting(monkeypatch)
    stateful, plain = _stateful_dofn(), beam.Map(lambda x: x).fn
    expected = {id(d): userstate.get_dofn_specs(d) for d in (stateful, plain)}
    calls.clear()
    with dofn_specs_memoized():
        for _ in range(3):
            for d in (stateful, plain):
                assert userstate.get_dofn_specs(d) == expected[id(d)]
            assert userstate.is_stateful_dofn(stateful)
            assert not userstate.is_stateful_dofn(plain)
            userstate.validate_stateful_dofn(stateful)
    assert len(calls) == 2  # once per DoFn, not 3 x 4 times
    state_specs, timer_specs = expected[id(stateful)]
    assert {s.name for s in state_specs} == {"bag"} and {t.name for t in timer_specs} == {
        "ts-t"
    }  # Beam prefixes timer names


def test_beams_function_is_back_after_the_block_even_on_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from apache_beam.transforms import userstate

    from services.trigger.beam_memo import dofn_specs_memoized

    _counting(monkeypatch)
    before = userstate.get_dofn_specs
    with pytest.raises(RuntimeError, match="boom"), dofn_specs_memoized():
        assert userstate.get_dofn_specs is not before
        with dofn_specs_memoized():  # nested: the outer block's memo stays in place
            inner = userstate.get_dofn_specs
        assert userstate.get_dofn_specs is inner
        raise RuntimeError("boom")
    assert userstate.get_dofn_specs is before


def test_a_dofn_without_weak_references_is_introspected_every_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from apache_beam.transforms import userstate

    from services.trigger.beam_memo import dofn_specs_memoized

    calls = _counting(monkeypatch)

    class Slotted:  # no __weakref__: the memo cannot hold it
        __slots__ = ()

    d = Slotted()
    with dofn_specs_memoized():
        assert userstate.get_dofn_specs(d) == (set(), set())
        assert userstate.get_dofn_specs(d) == (set(), set())
    assert len(calls) == 2


def test_a_pipeline_in_the_block_runs_stateful_and_plain_dofns() -> None:
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from services.trigger.beam_memo import in_process
    from services.trigger.steps import BEAM_ARGS

    class CountPerKey(beam.DoFn):
        from apache_beam.coders import VarIntCoder
        from apache_beam.transforms.userstate import BagStateSpec

        SEEN = BagStateSpec("seen", VarIntCoder())

        def process(self, kv: Any, seen: Any = beam.DoFn.StateParam(SEEN)) -> Any:  # noqa: B008
            seen.add(1)
            yield kv[0], sum(seen.read())

    from apache_beam.options.pipeline_options import PipelineOptions

    with in_process(), beam.Pipeline(options=PipelineOptions(list(BEAM_ARGS))) as p:
        out = (
            p
            | beam.Create([("a", 1), ("a", 2), ("b", 3)])
            | beam.ParDo(CountPerKey())
            | beam.Map(lambda kv: kv)
        )
        assert_that(out, equal_to([("a", 1), ("a", 2), ("b", 1)]))


def test_cheap_pickles_use_zlib_inside_read_both_and_restore_bz2_after() -> None:
    import base64
    import zlib

    from apache_beam.internal import pickler

    from services.trigger.beam_memo import cheap_pickles

    payload = {"graph": b"x" * 100_000, "n": 7}
    before = pickler.dumps(payload)  # Beam's own: bz2
    assert base64.b64decode(before)[:3] == b"BZh"
    with cheap_pickles(), cheap_pickles():  # re-entrant
        inside = pickler.dumps(payload)
        raw = base64.b64decode(inside)
        assert raw[:3] != b"BZh"
        zlib.decompress(raw)  # zlib, not bz2
        assert pickler.loads(inside) == payload
        assert pickler.loads(before) == payload  # a pickle made outside the block still reads
    assert base64.b64decode(pickler.dumps(payload))[:3] == b"BZh"  # Beam's codec is back
