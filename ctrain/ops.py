"""Operator commands: ``ctrain demo``, ``status``, ``candidates``, ``rollback``.

``candidates`` and ``rollback`` are clients of the promoter's approval API and
nothing else: what they can do, any HTTP client with a token can do.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ctrain import client, where
from ctrain.view import trigger_line
from shared.config import CtrainConfig, load_config, pick_model

console = Console()


def demo(args: argparse.Namespace) -> int:

    from ctrain.demo import Demo, DemoOptions, run_in_thread
    from ctrain.loop import LoopState
    from ctrain.view import demo_screen

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
        from ctrain.replay_labels import parse_duration

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
    with Live(console=console, refresh_per_second=2, transient=False) as live:
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
            console.print("[yellow]interrupted[/yellow]; stopping the stack")
            d.opts.keep = False
            d.stop()
            return 130
    d.stop()
    if "error" in out:
        console.print(f"[red]the loop did not close:[/red] {out['error']}")
        console.print("logs: " + ", ".join(p["log"] for p in d.state.get("procs", [])))
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
        from ctrain.view import describe_scored

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
    console.print(t)
    if d.opts.keep:
        console.print("the stack is still up: `ctrain status`, `ctrain dev down` to stop it")


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


def _json(obj: Any) -> None:
    """Machine-readable output: one JSON document on stdout, nothing else."""
    import sys

    import orjson

    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def _ids(title: str, *columns: str) -> Table:
    """A table whose first column holds ids: never wrapped or cut, whatever the width
    (a cut id is an id that is then "not found")."""
    t = Table(title=title)
    t.add_column(columns[0], no_wrap=True, overflow="ignore", min_width=26)
    for c in columns[1:]:
        t.add_column(c, overflow="fold")
    return t


def gather_status(args: argparse.Namespace, state: dict[str, Any] | None) -> dict[str, Any]:
    """Everything ``ctrain status`` shows, as data."""
    from ctrain import devstack

    out: dict[str, Any] = {"model": args.model, "stream": args.stream}
    out["stack"] = [
        {"part": n, "address": a, "up": ok} for n, a, ok in (devstack.status() if state else [])
    ]
    v = client.validator(state)
    try:
        out["windows"] = v.windows(args.stream, limit=args.windows)
    finally:
        v.close()
    tc = client.trigger(state)
    try:
        out["runs"] = tc.runs(args.runs, model=args.model)
        out["decisions"] = tc.decisions(5, model=args.model)
        out["trigger"] = tc.state(model=args.model)
    finally:
        tc.close()
    pc = client.promoter("viewer", state)
    try:
        out["candidates"] = pc.candidates(model=args.model)
        out["serving"] = pc.model(args.model)
        out["rollbacks"] = [
            a
            for a in pc.audit(200)
            if a.get("model") == args.model and a.get("action") == "roll_back"
        ][:3]
    finally:
        pc.close()
    out["quality"] = _quality(args, state)
    return out


def _quality(args: argparse.Namespace, state: dict[str, Any] | None) -> list[Any] | None:
    """The monitor's view, or None where no monitor runs (a stack without it)."""
    try:
        mc = client.monitor(state)
    except RuntimeError:
        return None
    try:
        return mc.quality(args.model, limit=args.windows)
    finally:
        mc.close()


def _quality_table(rows: list[Any], model: str) -> None:
    t = Table(
        "window", "start", "version", "examples", "labelled", "realized", "estimated",
        title=f"live quality of {model} (monitor)",
    )  # fmt: skip
    for r in rows:
        main = "auc" if "auc" in r["realized"] or "auc" in r["estimated"] else None
        main = main or next(iter(r["realized"] or r["estimated"] or {"-": 0}))

        def fmt(m: dict[str, float], key: str | None = main) -> str:
            return f"{key} {m[key]:.3f}" if key in m else "-"

        t.add_row(
            r["window_id"],
            (r.get("start") or "")[:10],
            f"v{r['version']}",
            str(r["examples"]),
            f"{r['label_coverage']:.0%}",
            fmt(r["realized"]),
            fmt(r["estimated"]),
        )
    console.print(t)


def status(args: argparse.Namespace) -> int:
    """Windows, latest drift, runs, candidates and serving versions in one view."""
    from ctrain import devstack

    state = devstack.load_state()
    args.model, args.stream = resolve(args, state)
    data = gather_status(args, state)
    if args.output == "json":
        _json(data)
        return 0
    if data["stack"]:
        t = Table("part", "address", "state", title="stack")
        for row in data["stack"]:
            up = "[green]up[/green]" if row["up"] else "[red]down[/red]"
            t.add_row(row["part"], row["address"], up)
        console.print(t)
    _windows_table(data["windows"], args.stream)
    trig = data["trigger"]
    console.print(f"trigger of {trig['model']}: {trigger_line(trig)}")
    _runs_table(data["runs"])
    if data["decisions"]:
        d = data["decisions"][0]
        console.print(f"latest decision: taken={d['taken']} reason={d['reason']!r} ({d['source']})")
    _candidates_table(data["candidates"])
    model = data["serving"]
    if model is None:
        console.print(f"serving: {args.model!r} has never been promoted")
    else:
        labels = ", ".join(f"{k}=v{v}" for k, v in model["labels"].items())
        states = ", ".join(f"v{k} {s}" for k, s in model["serving_reports"].items())
        console.print(f"serving {args.model}: versions {model['versions']}; {labels}; {states}")
        watch = model.get("watch")
        if watch:
            console.print(
                f"watching v{watch['stable']} against v{watch['previous']} on live data: "
                f"{len(watch.get('windows', {}))} window(s) so far"
            )
    if data.get("quality"):
        _quality_table(data["quality"], args.model)
    for a in data.get("rollbacks") or []:
        console.print(f"[yellow]rolled back[/yellow] by {a['actor']}: {a['reason']}")
    return 0


def _windows_table(wins: list[Any], stream: str) -> None:
    t = _ids(f"windows of {stream}", "window", "period", "examples", "verdict", "largest distances")
    for w in wins:
        dist = ", ".join(
            f"{'[red]' if d['crossed'] else ''}{d['feature']} {d['kind']} {d['value']:.3f}"
            f"{'[/red]' if d['crossed'] else ''}"
            for d in w["distances"][:3]
        )
        t.add_row(
            w["window_id"],
            f"{w['start'][:10]}..{w['end'][:10]}",
            f"{w['example_count']:,}",
            w["verdict"],
            dist,
        )
    console.print(t)


def _runs_table(runs: list[Any]) -> None:
    t = _ids("training runs", "run", "reason", "train/eval examples", "state", "components",
             "candidate")  # fmt: skip
    for r in runs:
        comps = " ".join(f"{c['name']}:{c['state'][:4]}" for c in r["components"])
        sizes = f"{r.get('train_examples') or '?'}/{r.get('eval_examples') or '?'}"
        t.add_row(r["run_id"], r["reason"], sizes, r["state"], comps, r["candidate_id"])
    console.print(t)


def windows(args: argparse.Namespace) -> int:
    from ctrain import devstack

    state = devstack.load_state()
    args.model, args.stream = resolve(args, state)
    v = client.validator(state)
    try:
        wins = v.windows(args.stream, limit=args.limit)
    finally:
        v.close()
    if args.output == "json":
        _json(wins)
    else:
        _windows_table(wins, args.stream)
    return 0


def runs(args: argparse.Namespace) -> int:
    from ctrain import devstack

    state = devstack.load_state()
    if args.run_id:
        tc = client.trigger(state)
        try:
            run = tc.run(args.run_id)
        finally:
            tc.close()
        if args.output == "json":
            _json(run)
        else:
            _runs_table([run])
            console.print(f"why: {run.get('why')}; module sha256 {run.get('module_sha256')}")
        return 0
    args.model, _ = resolve(args, state)
    tc = client.trigger(state)
    try:
        listed = tc.runs(args.count, model=args.model)
    finally:
        tc.close()
    if args.output == "json":
        _json(listed)
    else:
        _runs_table(listed)
    return 0


def _candidates_table(cands: list[Any]) -> None:
    t = _ids("candidates", "candidate", "model", "state", "blessed", "version", "reason")
    for c in cands:
        t.add_row(
            c["candidate_id"],
            c["model"],
            c["state"],
            "yes" if c["blessed"] else "no",
            str(c.get("version") or ""),
            c.get("reason") or "",
        )
    console.print(t)


def candidates(args: argparse.Namespace) -> int:
    role = "approver" if args.action in ("approve", "reject") else "viewer"
    pc = client.promoter(role)
    try:
        if args.action == "list":
            listed = pc.candidates(state=args.state, model=args.model)
            _json(listed) if args.output == "json" else _candidates_table(listed)
            return 0
        if not args.candidate_id:
            console.print(f"candidates {args.action} needs a CANDIDATE_ID")
            return 2
        if args.action == "show":
            one = pc.candidate(args.candidate_id)
            _json(one) if args.output == "json" else _show(one)
            return 0
        if args.action == "approve":
            rec = pc.approve(args.candidate_id, args.reason or "approved from the CLI")
            console.print(f"[green]approved[/green] {rec['candidate_id']}: state {rec['state']}")
            if args.wait:
                return _wait_promoted(pc, args.candidate_id, args.wait)
            return 0
        rec = pc.reject(args.candidate_id, args.reason or "rejected from the CLI")
        console.print(f"[yellow]rejected[/yellow] {rec['candidate_id']}: {rec['reason']}")
        return 0
    finally:
        pc.close()


def _wait_promoted(pc: client.PromoterClient, cid: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = pc.candidate(cid)
        # A promotion ends in `serving`; the others are ends where it did not get there.
        if rec["state"] in ("serving", "failed", "rejected", "superseded", "rolled_back"):
            console.print(f"{cid}: {rec['state']} (version {rec.get('version')})")
            return 0 if rec["state"] == "serving" else 1
        time.sleep(0.5)  # poll interval
    console.print(f"{cid}: not promoted after {timeout:.0f}s")
    return 1


def _show(c: dict[str, Any]) -> None:
    console.print(
        f"[bold]{c['candidate_id']}[/bold] model {c['model']} · state {c['state']} · "
        f"blessed {c['blessed']} · version {c.get('version')}"
    )
    if c.get("failed_checks"):
        console.print("[red]failed checks:[/red] " + "; ".join(c["failed_checks"]))
    console.print(f"why it was trained: {c.get('trigger_reason')}")
    for window, crossed in (c.get("trigger_evidence") or {}).items():
        console.print(f"  {window}: {'; '.join(crossed)}")
    t = Table(
        "slice", "metric", "candidate", "serving", "change", title="TFMA vs the serving model"
    )
    rows = [("overall", c["metrics"]["overall"])] + [
        (s["slice"], s["metrics"]) for s in c["metrics"]["slices"]
    ]
    for slice_name, metrics in rows:
        for k, v in metrics.items():
            cand, base = v["candidate"], v["baseline"]
            change = f"{cand - base:+.4f}" if base is not None else "-"
            t.add_row(slice_name, k, f"{cand:.4f}", "-" if base is None else f"{base:.4f}", change)
    console.print(t)
    live = c.get("live")
    if live:
        console.print(f"live data: {live['summary']}")
    lin = c.get("lineage", {})
    evals = lin.get("eval_windows") or [lin.get("eval_window")]
    console.print(
        f"trained on {lin.get('train_examples') or '?'} examples of windows {lin.get('windows')}; "
        f"evaluated on {lin.get('eval_examples') or '?'} examples of windows {evals}"
    )
    labels = lin.get("labels")
    if labels:
        tr, ev = labels.get("train", {}), labels.get("eval", {})
        console.print(
            f"labels (joined from their stream): training {tr.get('labelled', 0):,} labelled, "
            f"{tr.get('defaulted', 0):,} defaulted, {tr.get('unlabelled', 0):,} left out; "
            f"evaluation {ev.get('labelled', 0):,} labelled, {ev.get('defaulted', 0):,} "
            f"defaulted, {ev.get('unlabelled', 0):,} left out"
        )
    console.print(
        f"run {lin.get('run_id')}; model {lin.get('model_uri')}; "
        f"module sha256 {lin.get('module_sha256') or '?'}"
    )


def rollback(args: argparse.Namespace) -> int:
    from ctrain import devstack

    args.model, _ = resolve(args, devstack.load_state())
    pc = client.promoter("approver")
    try:
        out = pc.rollback(args.model, args.reason, args.version)
    finally:
        pc.close()
    console.print(f"[yellow]rolled back[/yellow] {args.model}: {out}")
    return 0


def add_parsers(sub: Any) -> None:
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
    st = sub.add_parser("status", help="windows, drift, runs, candidates, serving in one view")
    st.add_argument("--model", help="default: the models file's only model")
    st.add_argument("--stream", help="default: the model's stream")
    st.add_argument("--windows", type=int, default=8)
    st.add_argument("--runs", type=int, default=5)
    st.add_argument("-o", "--output", choices=["table", "json"], default="table")
    st.set_defaults(func=status)
    wi = sub.add_parser("windows", help="a stream's latest windows with their largest distances")
    wi.add_argument("--model", help="default: the models file's only model")
    wi.add_argument("--stream", help="default: the model's stream")
    wi.add_argument("--limit", type=int, default=20)
    wi.add_argument("-o", "--output", choices=["table", "json"], default="table")
    wi.set_defaults(func=windows)
    ru = sub.add_parser("runs", help="a model's training runs, or one run by id (or prefix)")
    ru.add_argument("run_id", nargs="?")
    ru.add_argument("--model", help="default: the models file's only model")
    ru.add_argument("--count", type=int, default=20)
    ru.add_argument("-o", "--output", choices=["table", "json"], default="table")
    ru.set_defaults(func=runs)
    ca = sub.add_parser("candidates", help="list, show, approve or reject model candidates")
    ca.add_argument("action", choices=["list", "show", "approve", "reject"])
    ca.add_argument("candidate_id", nargs="?")
    ca.add_argument("--reason", help="recorded in the audit trail")
    ca.add_argument("--state", help="list only candidates in this state")
    ca.add_argument("--model", help="list only this model's candidates")
    ca.add_argument("-o", "--output", choices=["table", "json"], default="table")
    ca.add_argument("--wait", type=float, default=0, help="approve: wait N s for the promotion")
    ca.set_defaults(func=candidates)
    rb = sub.add_parser("rollback", help="move `stable` back to the previous (or a given) version")
    rb.add_argument("--model", help="default: the models file's only model")
    rb.add_argument("--version", type=int)
    rb.add_argument("--reason", required=True, help="recorded in the audit trail")
    rb.set_defaults(func=rollback)
