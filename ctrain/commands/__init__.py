"""The command groups of ``ctrain``: each module registers its commands one way,
``register(sub)``, and imports nothing of the command line but ``common``."""

from __future__ import annotations

from typing import Any

from ctrain.commands import (
    backtest,
    console,
    data,
    decide,
    demo,
    dev,
    dlq,
    model,
    observe,
    settings,
    training,
)

# In the order `ctrain --help` lists them.
GROUPS = (dev, data, training, model, demo, observe, decide, backtest, dlq, console, settings)


def register_all(sub: Any) -> None:
    for group in GROUPS:
        group.register(sub)
