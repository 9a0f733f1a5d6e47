"""Redis keys more than one service reads or writes: spelled here only (DESIGN §2).

Keys a single service keeps to itself stay in that service.
"""

from __future__ import annotations


def serving_model_uri(model: str) -> str:
    """The model directory serving as ``stable``: written by the promoter on a promotion
    or rollback; the trigger starts a new episode when it changes."""
    return f"ctrain:serving:{model}:model_uri"


def serving_windows(model: str) -> str:
    """JSON list of the windows the serving model trained on: written by the promoter; the
    validator measures skew against them."""
    return f"ctrain:serving:{model}:windows"
