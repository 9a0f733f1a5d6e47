"""The garbage collector while ingest polls.

A poll hands the core about 10,000 consumer records at once, all alive until the
poll is handled. At Python's default generation-0 threshold (700 allocations) the
collector runs some fifteen times per poll, each time walking the records still
alive and promoting them, and the older generations then walk them again: about a
tenth of ingest's time, measured (``bench/ingest.py``). The records hold no
cycles (reference counting frees them), so the collector only needs to run far
less often. Freezing what start-up allocated (modules, settings, schemas) keeps a
full collection from walking that too.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_tuned(young_threshold: int) -> Iterator[None]:
    """Run the body with generation 0 collected every ``young_threshold`` allocations and
    the objects alive at entry frozen; restore both on exit. 0 changes nothing."""
    if not young_threshold:
        yield
        return
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(young_threshold, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
