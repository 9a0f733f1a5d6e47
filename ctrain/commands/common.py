"""What every command group shares: the console, the dev stack's settings, the models
file in force and the model a command means, JSON output and id tables."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from ctrain import devstack, where
from shared.config import CtrainConfig, load_config, pick_model
from shared.settings import CommonSettings

# The one console every command prints to (tests point it at a buffer).
console = Console()


def common_from_dev() -> object:
    """Shared settings, filled from the dev stack's state file where env is silent."""

    state = devstack.load_state()
    kwargs: dict[str, Any] = {}
    if state:
        if "CTRAIN_KAFKA_BOOTSTRAP" not in os.environ:
            kwargs["kafka_bootstrap"] = state["kafka"]
            kwargs["kafka_idempotent"] = not state.get("embedded_kafka", False)
        if "CTRAIN_REDIS_URL" not in os.environ:
            kwargs["redis_url"] = state["redis"]
    return CommonSettings(**kwargs)


def models_file(state: dict[str, Any] | None) -> CtrainConfig | None:
    """The models file in force (ctrain.where.models_file), loaded."""
    path = where.models_file(state)
    return load_config(path) if path else None


def resolve(args: argparse.Namespace, state: dict[str, Any] | None) -> tuple[str, str]:
    """(model, stream) a command means: ``--model``, else the file's only model."""
    cfg = models_file(state)
    model = pick_model(cfg, getattr(args, "model", None))
    stream = getattr(args, "stream", None)
    if not stream:
        stream = cfg.models[model].stream if cfg and model in cfg.models else model
    return model, stream


def print_json(obj: Any) -> None:
    """Machine-readable output: one JSON document on stdout, nothing else."""

    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def id_table(title: str, *columns: str) -> Table:
    """A table whose first column holds ids: never wrapped or cut, whatever the width
    (a cut id is an id that is then "not found")."""
    t = Table(title=title)
    t.add_column(columns[0], no_wrap=True, overflow="ignore", min_width=26)
    for c in columns[1:]:
        t.add_column(c, overflow="fold")
    return t


def model_option(p: argparse.ArgumentParser) -> None:
    """``--model``: the model a command means (resolve)."""
    p.add_argument("--model", help="default: the models file's only model")


def output_option(p: argparse.ArgumentParser) -> None:
    """``-o table|json``: JSON is one document on stdout, for scripts."""
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
