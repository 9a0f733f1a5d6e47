"""Deterministic ids: the same inputs always give the same id (docs/architecture.md §3)."""

from __future__ import annotations

import hashlib

import orjson


def stable_id(kind: str, *parts: object, length: int = 20) -> str:
    """``kind-<hex>`` from a canonical JSON encoding of ``parts``.

    Canonical JSON (sorted keys) keeps the id independent of dict ordering, so a
    replayed event or a rebuilt window yields the same id.
    """
    payload = orjson.dumps(list(parts), option=orjson.OPT_SORT_KEYS)
    return f"{kind}-{hashlib.sha256(payload).hexdigest()[:length]}"


def example_id(topic: str, partition: int, offset: int) -> str:
    """The id of an accepted example: where it was written (``<topic>:<partition>:<offset>``).

    A producer learns it from the broker's acknowledgement of its write; delayed labels
    name their example by it (unless the model names a key field of its own)."""
    return f"{topic}:{partition}:{offset}"
