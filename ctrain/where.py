"""Where the command line finds the dev stack's state, the models file and the artifact
store: one place.

The environment wins (``CTRAIN_DEV_STATE_DIR``, ``CTRAIN_CONFIG``,
``CTRAIN_ARTIFACT_ROOT``), then the dev stack's state (``ctrain dev up`` records the
models file and the artifact root), then the working directory's defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

DEFAULT_MODELS_FILE = "ctrain.yaml"


def state_dir() -> Path:
    """The dev stack's state: ``CTRAIN_DEV_STATE_DIR``, else ./.ctrain."""
    return Path(os.environ.get("CTRAIN_DEV_STATE_DIR", ".ctrain")).resolve()


def load_state() -> dict[str, Any] | None:
    """The running dev stack's state (``dev.json``), None when no stack was started here."""
    f = state_dir() / "dev.json"
    return orjson.loads(f.read_bytes()) if f.is_file() else None


def bundled_models_file() -> str:
    """The bundled example's models file: what the dev stack runs when none is named."""
    return str(Path(__file__).resolve().parent.parent / "examples" / "taxi" / "ctrain.yaml")


def stack_models_file(named: str | None) -> str:
    """The models file a dev stack starts with: the one named, else ``CTRAIN_CONFIG``,
    else the bundled example's; absolute, since the services run elsewhere."""
    return str(Path(named or os.environ.get("CTRAIN_CONFIG") or bundled_models_file()).resolve())


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
    state = state if state is not None else load_state()
    return str(state["artifact_root"]) if state else "./artifacts"
