"""One Beam introspection per DoFn instead of eight, while a step's pipeline runs.

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
"""

from __future__ import annotations

import contextlib
import weakref
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
