"""``ctrain settings``: every variable of every service, from its one declaration; and,
for maintainers, the docs' settings tables written anew or checked."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ctrain.commands import common


def register(sub: Any) -> None:
    s = sub.add_parser(
        "settings", help="every service's variables: type, default, per-model key, meaning"
    )
    s.add_argument(
        "service",
        nargs="?",
        choices=["common", "ingest", "validator", "trigger", "promoter", "monitor"],
        help="one service's variables (common: the CTRAIN_* names every service reads)",
    )
    act = s.add_mutually_exclusive_group()
    act.add_argument(
        "--write-docs", action="store_true", help="rewrite the README's and docs' tables"
    )
    act.add_argument(
        "--check-docs",
        action="store_true",
        help="exit 1 when a doc's table differs from the declarations",
    )
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctrain import settings_doc

    if args.write_docs or args.check_docs:
        stale = settings_doc.sync(write=args.write_docs)
        for rel in stale:
            verb = "rewrote" if args.write_docs else "out of date:"
            common.console.print(f"{verb} {rel}")
        if args.check_docs and stale:
            print("run `ctrain settings --write-docs`", file=sys.stderr)
            return 1
        return 0
    tables = settings_doc.blocks()
    for name in [args.service] if args.service else ["common", *settings_doc.SERVICES]:
        common.console.print(f"\n{name}\n", markup=False)
        common.console.print(tables[name](), markup=False, soft_wrap=True)
    return 0
