"""The ``ctrain`` console script: the parser of every command group (ctrain/commands/)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ctrain.commands import common, register_all


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctrain", description="Event-driven continuous training.")
    register_all(p.add_subparsers(dest="command", required=True))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as e:  # one clear line for operators; details with CTRAIN_DEBUG=1
        if os.environ.get("CTRAIN_DEBUG"):
            raise
        common.console.print(f"[red]error:[/red] {type(e).__name__}: {e}")
        return 2


def entry() -> None:
    """The console script. A command that ran TensorFlow in this process (``model check
    --data``, ``backtest``) leaves at once after its output is flushed: TensorFlow's
    objects torn down with the interpreter print "Exception ignored in
    AtomicFunction.__del__" tracebacks, or crash, after the work succeeded (the trigger's
    step processes leave the same way, services/trigger/isolate.py)."""
    rc = main()
    if "tensorflow" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


if __name__ == "__main__":
    entry()
