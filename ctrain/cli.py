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


if __name__ == "__main__":
    sys.exit(main())
