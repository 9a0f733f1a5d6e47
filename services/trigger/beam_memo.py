"""Two fixed costs of Beam's in-process runner cut while a step's pipeline runs: one
introspection per DoFn instead of eight, and pickles compressed cheaply.

Beam asks ``userstate.get_dofn_specs`` for a DoFn's state and timer specs when a
ParDo is built, when the pipeline is turned into its runner proto, and again
for every bundle the in-process runner sets up, each time by calling
``inspect.signature`` on every method of the DoFn. The TFT pipeline of one run
has about 240 ParDos and made 1,912 such calls: ~3 s of a ~24 s transform step
on 2 cores, ~4 s of the evaluate step (TFMA), for answers that cannot change
(they come from the DoFn's methods, fixed once the instance exists).

``dofn_specs_memoized()`` remembers the answer per DoFn instance for the
duration of a ``with`` block and puts Beam's function back afterwards. The
cache holds DoFns weakly, so nothing outlives the pipeline; a DoFn that cannot
be weakly referenced or hashed is introspected as before.

``cheap_pickles()``: Beam pickles every transform of a pipeline and compresses each
pickle with bz2 at level 9 (for a remote runner's request size limits). The TFT
pipeline's 437 pickles carry TF graphs; on 30,000 rows bz2 took 7.2 s of a 44 s
transform step (profiled), and the in-process runner unpickles every one of them
again. Within the block, the pickler compresses with zlib at level 1 and decompresses
either format (a bz2 stream starts with ``BZh``). Only for the in-process runner,
where the pickles never leave the process (steps.BEAM_ARGS).

``in_process()``: both.
"""

from __future__ import annotations

import bz2
import contextlib
import weakref
import zlib
from collections.abc import Callable, Iterator
from typing import Any

_MARK = "_ctrain_memoized"


def _memoized(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    memo: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def get_dofn_specs(dofn: Any) -> Any:
        try:
            return memo[dofn]
        except KeyError:
            specs = memo[dofn] = original(dofn)
            return specs
        except TypeError:  # unhashable, or no weak references: Beam's own answer
            return original(dofn)

    setattr(get_dofn_specs, _MARK, True)
    return get_dofn_specs


@contextlib.contextmanager
def dofn_specs_memoized() -> Iterator[None]:
    """Within the block, each DoFn's state/timer specs are computed once (re-entrant)."""
    from apache_beam.transforms import userstate

    original = userstate.get_dofn_specs
    if getattr(original, _MARK, False):  # an enclosing block already did it
        yield
        return
    setattr(userstate, "get_dofn_specs", _memoized(original))  # noqa: B010 (typed as Beam's)
    try:
        yield
    finally:
        userstate.get_dofn_specs = original


class _CheapCodec:
    """bz2's two functions as Beam's pickler calls them, with zlib level 1 underneath."""

    @staticmethod
    def compress(data: bytes, compresslevel: int = 9) -> bytes:
        return zlib.compress(data, 1)

    @staticmethod
    def decompress(data: bytes) -> bytes:
        return bz2.decompress(data) if data[:3] == b"BZh" else zlib.decompress(data)


@contextlib.contextmanager
def cheap_pickles() -> Iterator[None]:
    """Within the block, Beam's pickles are compressed with zlib at level 1 (re-entrant)."""
    from apache_beam.internal import cloudpickle_pickler

    original = cloudpickle_pickler.bz2
    if original is _CheapCodec:
        yield
        return
    setattr(cloudpickle_pickler, "bz2", _CheapCodec)  # noqa: B010 (a module, typed as bz2)
    try:
        yield
    finally:
        cloudpickle_pickler.bz2 = original


@contextlib.contextmanager
def in_process() -> Iterator[None]:
    """The in-process runner's fixed costs cut: DoFn specs memoized, pickles cheap."""
    with dofn_specs_memoized(), cheap_pickles():
        yield
