"""``ctrain demo``: the whole loop, live, and its summary."""

from __future__ import annotations

import argparse
from typing import Any

from rich.live import Live
from rich.table import Table

from ctrain import where
from ctrain.commands import common
from ctrain.demo import Demo, DemoOptions
from ctrain.demo_support import run_in_thread
from ctrain.loop import LoopState
from ctrain.replay_labels import parse_duration
from ctrain.view import demo_screen, describe_scored


def demo(args: argparse.Namespace) -> int:

    config = args.config
    if config is None and (args.model or args.data):
        # A user's own model: the file `ctrain model new` wrote, unless one is named.
        config = where.models_file(None)
    opts = DemoOptions(
        data=args.data or DemoOptions.data,
        auto_approve=args.auto_approve,
        speedup=args.speedup,
        keep=not args.stop,
        model=args.model,
        never_labelled=args.never_labelled,
    )
    if args.label_delay is not None:
        opts.label_delay_s = parse_duration(args.label_delay)
        if not args.data:
            # The bundled story with 2013's newest quarter still waiting for its labels:
            # the first model trains on the three before it.
            opts.extra_env.update(
                CTRAIN_TRIGGER_MIN_TRAIN_EXAMPLES="2000", CTRAIN_TRIGGER_MIN_EVAL_EXAMPLES="800"
            )
    if config:
        opts.config = config
    d = Demo(opts)
    with Live(console=common.console, refresh_per_second=2, transient=False) as live:
        d.say = live.console.print
        worker, out = run_in_thread(d.run)
        try:
            ticks = 0
            while worker.is_alive():
                if ticks % 4 == 0:
                    d.refresh_decision()
                ticks += 1
                loop = d.tail.state if d.tail else LoopState()
                live.update(demo_screen(d.progress, loop))
                worker.join(timeout=0.5)
            live.update(demo_screen(d.progress, d.tail.state if d.tail else LoopState()))
        except KeyboardInterrupt:
            common.console.print("[yellow]interrupted[/yellow]; stopping the stack")
            d.opts.keep = False
            d.stop()
            return 130
    d.stop()
    if "error" in out:
        common.console.print(f"[red]the loop did not close:[/red] {out['error']}")
        common.console.print("logs: " + ", ".join(p["log"] for p in d.state.get("procs", [])))
        return 1
    summary(d)
    return 0


def summary(d: Any) -> None:
    p, loop = d.progress, d.tail.state
    t = Table(title="summary", show_header=False)
    crossed = sum(1 for v in loop.periods.values() if v.verdict in ("drift", "skew"))
    t.add_row(
        "periods",
        f"{len(loop.periods)} judged ({crossed} drifted or skewed), {len(loop.windows)} windows",
    )
    t.add_row("dead letters", str(len(loop.dlq)))
    t.add_row("training runs", ", ".join(f"{r} ({loop.run_state(r)})" for r in loop.runs))
    for c in loop.candidates.values():
        t.add_row("candidate", f"{c.candidate_id}: {'blessed' if c.blessed else 'not blessed'}")
    t.add_row("stable", f"v{loop.stable_version(p.model)}")
    latest: dict[tuple[str, str], Any] = {}
    for e in loop.scored:  # the last score of each window by each version
        latest[(e.window_id, e.role + (e.candidate_id or str(e.version)))] = e
    for e in sorted(latest.values(), key=lambda e: (str(e.window_start or ""), e.role)):
        t.add_row("live quality", describe_scored(e).removeprefix("[blue]quality[/blue] "))
    for pr in loop.promotions:
        if pr.decision == "rolled_back":
            t.add_row("rollback", f"by {pr.actor}: {pr.reason}")
    if p.drift_started and p.stable_moved:
        t.add_row(
            "drift → stable",
            f"{p.stable_moved - p.drift_started:.0f}s from the first later example to the new "
            "model serving (incl. the wait for approval)",
        )
    for name, url in p.urls.items():
        t.add_row(name, url)
    common.console.print(t)
    if d.opts.keep:
        common.console.print("the stack is still up: `ctrain status`, `ctrain dev down` to stop it")


def register(sub: Any) -> None:
    dm = sub.add_parser("demo", help="the whole loop, live: the bundled taxi trips, or your data")
    dm.add_argument("--auto-approve", action="store_true", help="no operator: the gate decides")
    dm.add_argument("--speedup", type=float, default=3.0e6, help="replay the data's clock faster")
    dm.add_argument("--data", help="CSV/Parquet/JSON lines (default: the bundled taxi trips)")
    dm.add_argument("--model", help="the model of the models file to run (ctrain model new)")
    dm.add_argument("--config", help="the models file (default: CTRAIN_CONFIG or ./ctrain.yaml "
                    "with --model/--data, else the taxi example's)")  # fmt: skip
    dm.add_argument("--stop", action="store_true", help="stop the stack at the end")
    dm.add_argument(
        "--label-delay",
        help="labels withheld from the examples and sent on ctrain.labels this much later "
        "(event time: 30d, 12h)",
    )
    dm.add_argument(
        "--never-labelled", type=float, default=0.0, help="fraction of examples never labelled"
    )
    dm.set_defaults(func=demo)
