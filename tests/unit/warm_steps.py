"""A test-only pipeline step, preloaded into a warm worker under test: it blocks
until its FIFO is written, so a test can act while a step is in flight."""

from __future__ import annotations

from services.trigger import steps


def wait_on(fifo: str) -> dict[str, int]:
    print(f"waiting on {fifo}")  # no flush: the line must reach the log by itself
    with open(fifo, "rb") as f:  # blocks until a writer opens it
        data = f.read()
    if not data:
        raise steps.StepError("the FIFO was closed without data")
    return {"read": len(data)}


steps.wait_on = wait_on  # type: ignore[attr-defined]
