"""``ctrain dev``: the embedded dev stack (up, down, status, reset, roll)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from ctrain import devstack
from ctrain.commands import common


def _dev(args: argparse.Namespace) -> int:

    if args.action == "up":
        devstack.up(
            echo=common.console.print,
            serving_replicas=args.serving_replicas,
            control_replicas=args.control_replicas,
        )
        common.console.print(
            f"[green]dev stack up[/green]; state in {devstack.state_dir() / 'dev.json'}"
        )
        return 0
    if args.action == "down":
        devstack.down(echo=common.console.print)
        return 0
    if args.action == "roll":
        if not args.name:
            common.console.print("[red]name the process to roll[/red]: `ctrain dev roll trigger`")
            return 2
        devstack.roll(args.name, echo=common.console.print)
        return 0
    if args.action == "reset":
        devstack.reset(echo=common.console.print)
        common.console.print(
            "[green]dev stack reset[/green]: every service, store and topic afresh"
        )
        return 0
    rows = devstack.status()
    if not rows:
        common.console.print("no dev stack recorded; start one with `ctrain dev up`")
        return 1
    t = Table("part", "address", "state")
    for name, addr, ok in rows:
        t.add_row(name, addr, "[green]up[/green]" if ok else "[red]down[/red]")
    common.console.print(t)
    return 0 if all(ok for _, _, ok in rows) else 1


def register(sub: Any) -> None:
    dev = sub.add_parser("dev", help="the embedded dev stack")
    dev.add_argument(
        "action",
        choices=["up", "down", "status", "reset", "roll"],
        help="reset: stop, clear Redis, artifacts and serving versions, start afresh; "
        "roll NAME: a rolling restart of one service process (its successor first)",
    )
    dev.add_argument("name", nargs="?", help="roll: the process (trigger, trigger-2, ...)")
    dev.add_argument(
        "--serving-replicas",
        type=int,
        default=1,
        help="up: embedded model servers the promoter manages (clients spread requests)",
    )
    dev.add_argument(
        "--control-replicas",
        type=int,
        default=1,
        help="up: processes each of the trigger, promoter and monitor (one leads per model)",
    )
    dev.set_defaults(func=_dev)
