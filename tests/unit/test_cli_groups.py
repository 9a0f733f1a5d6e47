"""The command line is one package of command groups, registered one way, without an
import circle: each group imports on its own, and every group module is registered."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ctrain import cli, commands
from tests.conftest import ROOT

pytestmark = pytest.mark.unit
MODULES = sorted(
    p.stem
    for p in (ROOT / "ctrain" / "commands").glob("*.py")
    if p.stem not in ("__init__", "common")
)


def test_every_group_module_is_registered_through_register() -> None:
    assert sorted(g.__name__.rsplit(".", 1)[1] for g in commands.GROUPS) == MODULES
    assert all(callable(getattr(g, "register", None)) for g in commands.GROUPS)
    # Each command the parser knows came from one group's register().
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert {"dev", "replay", "demo", "status", "candidates", "backtest", "dlq"} <= set(
        sub.choices  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("module", MODULES)
def test_each_group_imports_first_without_a_circle(module: str) -> None:
    """Imported first in a fresh interpreter: a circle through ctrain.cli would fail."""
    out = subprocess.run(
        [sys.executable, "-c", f"import ctrain.commands.{module}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
