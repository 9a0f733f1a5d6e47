"""Redis keys more than one service reads or writes: spelled here only (docs/architecture.md §2).

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


def challengers(model: str) -> str:
    """Hash candidate id -> JSON {model_uri, eval_window}: the candidates waiting for an
    approval. Written by the promoter; the monitor scores each on the windows newer than
    its evaluation window."""
    return f"ctrain:quality:{model}:challengers"


def challenger_scores(model: str, candidate_id: str) -> str:
    """Hash window id -> JSON {challenger, stable, stable_version, labelled, metric...}: a
    challenger's realized quality beside the stable version's on each window since its
    evaluation. Written by the monitor; the approval API shows it."""
    return f"ctrain:quality:{model}:challenger:{candidate_id}"


def rollback_watch(model: str) -> str:
    """JSON {stable, previous, windows}: after a promotion, the promoter watches the new
    stable version against the one it replaced; while this key exists the monitor scores
    the ``previous`` label too."""
    return f"ctrain:quality:{model}:watch"


def labels_count(model: str) -> str:
    """Hash window shard id -> labels joined to its examples: written by the monitor's
    label join; the trigger sizes training and evaluation data by it."""
    return f"ctrain:labels:{model}:count"


def labels_clock(model: str) -> str:
    """The newest label event time seen (ms): written by the label join; with the data's
    own clock it says which windows' labels have matured."""
    return f"ctrain:labels:{model}:clock"


def labels_inline(model: str) -> str:
    """Hash window shard -> its examples that carry their label in the window: written
    by the label join when it indexes the shard; the trigger counts them as labelled."""
    return f"ctrain:labels:{model}:inline"
