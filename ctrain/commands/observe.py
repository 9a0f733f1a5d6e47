"""``ctrain status``, ``windows``, ``runs``: what the loop did, read from the services' APIs."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from ctrain import client, devstack
from ctrain.commands import common
from ctrain.view import trigger_line


def gather_status(args: argparse.Namespace, state: dict[str, Any] | None) -> dict[str, Any]:
    """Everything ``ctrain status`` shows, as data."""

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
    common.console.print(t)


def status(args: argparse.Namespace) -> int:
    """Windows, latest drift, runs, candidates and serving versions in one view."""

    state = devstack.load_state()
    args.model, args.stream = common.resolve(args, state)
    data = gather_status(args, state)
    if args.output == "json":
        common.print_json(data)
        return 0
    if data["stack"]:
        t = Table("part", "address", "state", title="stack")
        for row in data["stack"]:
            up = "[green]up[/green]" if row["up"] else "[red]down[/red]"
            t.add_row(row["part"], row["address"], up)
        common.console.print(t)
    _windows_table(data["windows"], args.stream)
    trig = data["trigger"]
    common.console.print(f"trigger of {trig['model']}: {trigger_line(trig)}")
    _runs_table(data["runs"])
    if data["decisions"]:
        d = data["decisions"][0]
        common.console.print(
            f"latest decision: taken={d['taken']} reason={d['reason']!r} ({d['source']})"
        )
    candidates_table(data["candidates"])
    model = data["serving"]
    if model is None:
        common.console.print(f"serving: {args.model!r} has never been promoted")
    else:
        labels = ", ".join(f"{k}=v{v}" for k, v in model["labels"].items())
        states = ", ".join(f"v{k} {s}" for k, s in model["serving_reports"].items())
        common.console.print(
            f"serving {args.model}: versions {model['versions']}; {labels}; {states}"
        )
        watch = model.get("watch")
        if watch:
            common.console.print(
                f"watching v{watch['stable']} against v{watch['previous']} on live data: "
                f"{len(watch.get('windows', {}))} window(s) so far"
            )
    if data.get("quality"):
        _quality_table(data["quality"], args.model)
    for a in data.get("rollbacks") or []:
        common.console.print(f"[yellow]rolled back[/yellow] by {a['actor']}: {a['reason']}")
    return 0


def _windows_table(wins: list[Any], stream: str) -> None:
    t = common.id_table(
        f"windows of {stream}", "window", "period", "examples", "verdict", "largest distances"
    )
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
    common.console.print(t)


def _runs_table(runs: list[Any]) -> None:
    t = common.id_table(
        "training runs", "run", "reason", "train/eval examples", "state", "components", "candidate"
    )
    for r in runs:
        comps = " ".join(f"{c['name']}:{c['state'][:4]}" for c in r["components"])
        sizes = f"{r.get('train_examples') or '?'}/{r.get('eval_examples') or '?'}"
        t.add_row(r["run_id"], r["reason"], sizes, r["state"], comps, r["candidate_id"])
    common.console.print(t)


def candidates_table(cands: list[Any]) -> None:
    t = common.id_table("candidates", "candidate", "model", "state", "blessed", "version", "reason")
    for c in cands:
        t.add_row(
            c["candidate_id"],
            c["model"],
            c["state"],
            "yes" if c["blessed"] else "no",
            str(c.get("version") or ""),
            c.get("reason") or "",
        )
    common.console.print(t)


def windows(args: argparse.Namespace) -> int:

    state = devstack.load_state()
    args.model, args.stream = common.resolve(args, state)
    v = client.validator(state)
    try:
        wins = v.windows(args.stream, limit=args.limit)
    finally:
        v.close()
    if args.output == "json":
        common.print_json(wins)
    else:
        _windows_table(wins, args.stream)
    return 0


def runs(args: argparse.Namespace) -> int:

    state = devstack.load_state()
    if args.run_id:
        tc = client.trigger(state)
        try:
            run = tc.run(args.run_id)
        finally:
            tc.close()
        if args.output == "json":
            common.print_json(run)
        else:
            _runs_table([run])
            common.console.print(f"why: {run.get('why')}; module sha256 {run.get('module_sha256')}")
        return 0
    args.model, _ = common.resolve(args, state)
    tc = client.trigger(state)
    try:
        listed = tc.runs(args.count, model=args.model)
    finally:
        tc.close()
    if args.output == "json":
        common.print_json(listed)
    else:
        _runs_table(listed)
    return 0


def register(sub: Any) -> None:
    st = sub.add_parser("status", help="windows, drift, runs, candidates, serving in one view")
    common.model_option(st)
    st.add_argument("--stream", help="default: the model's stream")
    st.add_argument("--windows", type=int, default=8)
    st.add_argument("--runs", type=int, default=5)
    common.output_option(st)
    st.set_defaults(func=status)
    wi = sub.add_parser("windows", help="a stream's latest windows with their largest distances")
    common.model_option(wi)
    wi.add_argument("--stream", help="default: the model's stream")
    wi.add_argument("--limit", type=int, default=20)
    common.output_option(wi)
    wi.set_defaults(func=windows)
    ru = sub.add_parser("runs", help="a model's training runs, or one run by id (or prefix)")
    ru.add_argument("run_id", nargs="?")
    common.model_option(ru)
    ru.add_argument("--count", type=int, default=20)
    common.output_option(ru)
    ru.set_defaults(func=runs)
