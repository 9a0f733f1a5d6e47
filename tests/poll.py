"""The one way tests wait for something another process does: poll until it holds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def until(
    fn: Callable[[], T],
    timeout: float = 120,
    what: str = "the condition",
    interval: float = 0.2,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """``fn()`` every ``interval`` until it returns something true, which is returned;
    AssertionError naming ``what`` after ``timeout``. An exception in ``ignore`` (a
    service restarting) counts as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = fn()
        except ignore:
            got = None  # type: ignore[assignment]
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)  # the poll interval
