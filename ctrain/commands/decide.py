"""``ctrain candidates`` and ``ctrain rollback``: clients of the promoter's approval API and
nothing else (what they can do, any HTTP client with a token can do)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.table import Table

from ctrain import client, devstack
from ctrain.commands import common
from ctrain.commands.observe import candidates_table


def candidates(args: argparse.Namespace) -> int:
    role = "approver" if args.action in ("approve", "reject") else "viewer"
    pc = client.promoter(role)
    try:
        if args.action == "list":
            listed = pc.candidates(state=args.state, model=args.model)
            common.print_json(listed) if args.output == "json" else candidates_table(listed)
            return 0
        if not args.candidate_id:
            common.console.print(f"candidates {args.action} needs a CANDIDATE_ID")
            return 2
        if args.action == "show":
            one = pc.candidate(args.candidate_id)
            common.print_json(one) if args.output == "json" else _show(one)
            return 0
        if args.action == "approve":
            rec = pc.approve(args.candidate_id, args.reason or "approved from the CLI")
            common.console.print(
                f"[green]approved[/green] {rec['candidate_id']}: state {rec['state']}"
            )
            if args.wait:
                return _wait_promoted(pc, args.candidate_id, args.wait)
            return 0
        rec = pc.reject(args.candidate_id, args.reason or "rejected from the CLI")
        common.console.print(f"[yellow]rejected[/yellow] {rec['candidate_id']}: {rec['reason']}")
        return 0
    finally:
        pc.close()


def _wait_promoted(pc: client.PromoterClient, cid: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = pc.candidate(cid)
        # A promotion ends in `serving`; the others are ends where it did not get there.
        if rec["state"] in ("serving", "failed", "rejected", "superseded", "rolled_back"):
            common.console.print(f"{cid}: {rec['state']} (version {rec.get('version')})")
            return 0 if rec["state"] == "serving" else 1
        time.sleep(0.5)  # poll interval
    common.console.print(f"{cid}: not promoted after {timeout:.0f}s")
    return 1


def _show(c: dict[str, Any]) -> None:
    common.console.print(
        f"[bold]{c['candidate_id']}[/bold] model {c['model']} · state {c['state']} · "
        f"blessed {c['blessed']} · version {c.get('version')}"
    )
    if c.get("failed_checks"):
        common.console.print("[red]failed checks:[/red] " + "; ".join(c["failed_checks"]))
    common.console.print(f"why it was trained: {c.get('trigger_reason')}")
    for window, crossed in (c.get("trigger_evidence") or {}).items():
        common.console.print(f"  {window}: {'; '.join(crossed)}")
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
    common.console.print(t)
    live = c.get("live")
    if live:
        common.console.print(f"live data: {live['summary']}")
    lin = c.get("lineage", {})
    evals = lin.get("eval_windows") or [lin.get("eval_window")]
    common.console.print(
        f"trained on {lin.get('train_examples') or '?'} examples of windows {lin.get('windows')}; "
        f"evaluated on {lin.get('eval_examples') or '?'} examples of windows {evals}"
    )
    labels = lin.get("labels")
    if labels:
        tr, ev = labels.get("train", {}), labels.get("eval", {})
        common.console.print(
            f"labels (joined from their stream): training {tr.get('labelled', 0):,} labelled, "
            f"{tr.get('defaulted', 0):,} defaulted, {tr.get('unlabelled', 0):,} left out; "
            f"evaluation {ev.get('labelled', 0):,} labelled, {ev.get('defaulted', 0):,} "
            f"defaulted, {ev.get('unlabelled', 0):,} left out"
        )
    common.console.print(
        f"run {lin.get('run_id')}; model {lin.get('model_uri')}; "
        f"module sha256 {lin.get('module_sha256') or '?'}"
    )


def rollback(args: argparse.Namespace) -> int:

    args.model, _ = common.resolve(args, devstack.load_state())
    pc = client.promoter("approver")
    try:
        out = pc.rollback(args.model, args.reason, args.version)
    finally:
        pc.close()
    common.console.print(f"[yellow]rolled back[/yellow] {args.model}: {out}")
    return 0


def register(sub: Any) -> None:
    ca = sub.add_parser("candidates", help="list, show, approve or reject model candidates")
    ca.add_argument("action", choices=["list", "show", "approve", "reject"])
    ca.add_argument("candidate_id", nargs="?")
    ca.add_argument("--reason", help="recorded in the audit trail")
    ca.add_argument("--state", help="list only candidates in this state")
    ca.add_argument("--model", help="list only this model's candidates")
    common.output_option(ca)
    ca.add_argument("--wait", type=float, default=0, help="approve: wait N s for the promotion")
    ca.set_defaults(func=candidates)
    rb = sub.add_parser("rollback", help="move `stable` back to the previous (or a given) version")
    common.model_option(rb)
    rb.add_argument("--version", type=int)
    rb.add_argument("--reason", required=True, help="recorded in the audit trail")
    rb.set_defaults(func=rollback)
