"""Where the command line finds the models file and the artifact store: one place.

The environment wins (``CTRAIN_CONFIG``, ``CTRAIN_ARTIFACT_ROOT``), then the dev stack's
state (``ctrain dev up`` records both), then the working directory's defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DEFAULT_MODELS_FILE = "ctrain.yaml"


def dev_state() -> dict[str, Any] | None:
    from ctrain import devstack

    return devstack.load_state()


def models_file(state: dict[str, Any] | None = None) -> str | None:
    """The models file in force: ``CTRAIN_CONFIG``, else the dev stack's (``state``),
    else ./ctrain.yaml when there is one; None when there is none."""
    path = os.environ.get("CTRAIN_CONFIG") or (state or {}).get("config")
    if not path and Path(DEFAULT_MODELS_FILE).is_file():
        path = DEFAULT_MODELS_FILE
    return str(path) if path else None


def models_file_to_write(named: str | None) -> Path:
    """Where ``ctrain model new`` adds a model: the file named, else ``CTRAIN_CONFIG``,
    else ./ctrain.yaml."""
    return Path(named or os.environ.get("CTRAIN_CONFIG") or DEFAULT_MODELS_FILE)


def artifact_root(state: dict[str, Any] | None = None) -> str:
    """``CTRAIN_ARTIFACT_ROOT``, else the dev stack's, else ./artifacts."""
    if "CTRAIN_ARTIFACT_ROOT" in os.environ:
        return os.environ["CTRAIN_ARTIFACT_ROOT"]
    state = state if state is not None else dev_state()
    return str(state["artifact_root"]) if state else "./artifacts"
