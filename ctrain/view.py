"""Rich renderings of the loop for ``ctrain demo`` and ``ctrain status``, and one line per
event for the demo's log."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ctrain.loop import LoopState, headline
from shared.events import (
    Event,
    ModelCandidate,
    PromotionEvent,
    TrainingRun,
    WindowClosed,
    WindowScored,
)

PIPELINE = ("gather", "validate", "transform", "train", "evaluate", "publish")
MARK = {"succeeded": "[green]✓[/green]", "failed": "[red]✗[/red]", "running": "[yellow]…[/yellow]"}


def windows_table(loop: LoopState, last: int = 8) -> Table:
    """Judged periods (all partitions' windows of one period), latest by event time."""
    t = Table(title="periods (latest by event time)", expand=True, title_justify="left")
    for col in ("period", "trips", "windows", "verdict", "largest distances (value > threshold)"):
        t.add_column(col)
    rows = sorted(
        loop.periods.values(), key=lambda p: (p.window_end or p.produced_at, p.window_id)
    )[-last:]
    for v in rows:
        colour = {"ok": "green", "insufficient_data": "dim"}.get(v.verdict, "yellow")
        dists = [
            (d.value / (d.threshold or 1), f"{f.name} {k} {d.value:.3f}", d.crossed)
            for f in v.features
            for k, d in (("drift", f.drift), ("skew", f.skew))
            if d is not None and d.value is not None
        ]
        dists.sort(reverse=True)
        detail = ", ".join(
            f"[bold red]{txt}[/bold red]" if crossed else txt for _, txt, crossed in dists[:3]
        )
        span = (
            f"{v.window_start:%Y-%m-%d}..{v.window_end:%Y-%m-%d}"
            if v.window_start and v.window_end
            else v.window_id
        )
        t.add_row(
            span,
            f"{v.example_count:,}",
            str(len(v.members)),
            f"[{colour}]{v.verdict}[/{colour}]",
            detail,
        )
    waiting = len(set(loop.windows) - loop.judged_windows())
    if waiting:
        t.add_row("[dim]…[/dim]", "", f"{waiting}", "[dim]waiting for their period[/dim]", "")
    return t


def trigger_line(state: dict[str, Any]) -> str:
    """The trigger's state in one line: armed or why not, streaks, cooldown, budget."""
    if not state:
        return "[dim]trigger state: not known yet[/dim]"
    armed = "[green]armed[/green]" if state["armed"] else f"[yellow]{state['why']}[/yellow]"
    need = state["consecutive_needed"]
    return (
        f"{armed} · drift streak {state['consecutive_drift']}/{need} · "
        f"skew streak {state['consecutive_skew']}/{need} · attempts {state['attempts']} · "
        f"cooldown left {state['cooldown_left_s']:.0f}s · budget left {state['budget_left']} · "
        f"clock {state['clock']}"
    )


def run_panel(run: dict[str, Any] | None, title: str) -> RenderableType:
    if not run:
        return Text(f"{title}: not started", style="dim")
    comps = {c["name"]: c for c in run.get("components", [])}
    parts = []
    for name in PIPELINE:
        c = comps.get(name)
        if c is None:
            parts.append(f"[dim]{name}[/dim]")
        elif c["state"] == "running":
            parts.append(f"{MARK['running']} {name}")
        else:
            parts.append(f"{MARK[c['state']]} {name} {c.get('seconds', 0):.0f}s")
    return Text.from_markup(
        f"[bold]{title}[/bold] {run['run_id']} ({run['reason']}): {run['state']}\n  "
        + "  →  ".join(parts)
    )


def candidate_panel(loop: LoopState) -> RenderableType:
    if not loop.candidates:
        return Text("no candidate yet", style="dim")
    t = Table(title="candidates (TFMA against the serving model)", expand=True)
    # An id is what an operator types (`ctrain candidates approve <id>`): never cut it.
    t.add_column("candidate", no_wrap=True, min_width=len("cand-") + 20)
    for col in ("blessed", "metric", "candidate", "serving"):
        t.add_column(col)
    t.add_column("failed checks", overflow="fold", ratio=1)
    for c in loop.candidates.values():
        head, serving = headline(c.metrics), headline(c.baseline_metrics)
        name = head[0] if head else "-"
        auc, base = (head[1] if head else None), (serving[1] if serving else None)
        t.add_row(
            c.candidate_id,
            "[green]yes[/green]" if c.blessed else "[red]no[/red]",
            name,
            f"{auc:.3f}" if auc is not None else "-",
            f"{base:.3f}" if base is not None else "-",
            "; ".join(c.failed_checks) or "",
        )
    return t


def predictions_table(before: tuple[int, list[float]] | None, after: Any) -> RenderableType:
    if before is None:
        return Text("predictions: no model serving yet", style="dim")
    t = Table(title="P(big tip) for the first 2014 trips, through the `stable` label")
    t.add_column("trip")
    t.add_column(f"before: v{before[0]}")
    t.add_column(f"after: v{after[0]}" if after else "after: (not yet)")
    for i, score in enumerate(before[1]):
        t.add_row(str(i + 1), f"{score:.3f}", f"{after[1][i]:.3f}" if after else "")
    return t


def demo_screen(progress: Any, loop: LoopState) -> RenderableType:
    elapsed = time.time() - progress.started
    head = Text.from_markup(
        f"[bold]ctrain demo[/bold] · {progress.phase} · {elapsed:,.0f}s · "
        f"replayed {progress.replayed:,}/{progress.replay_total:,} · "
        f"windows {len(loop.windows)} · dead letters {len(loop.dlq)} · "
        f"stable v{loop.stable_version(progress.model) or '-'}"
    )
    runs = progress.runs
    parts: list[RenderableType] = [
        head,
        windows_table(loop),
        Text.from_markup(f"[bold]trigger[/bold]: {trigger_line(progress.trigger)}"),
        Text.from_markup(f"[bold]latest decision[/bold]: {progress.decision or 'none yet'}"),
        run_panel(runs.get(progress.bootstrap_run), "first model"),
        run_panel(runs.get(progress.drift_run), "retraining"),
        candidate_panel(loop),
        predictions_table(progress.before, progress.after),
    ]
    if progress.waiting_approval:
        parts.append(
            Panel(
                f"waiting for an operator: ctrain candidates approve {progress.waiting_approval}",
                style="yellow",
            )
        )
    return Group(*parts)


def describe(ev: Event) -> str:
    """One line per event for the demo's log."""
    from shared.events import DeadLetter, WindowValidated

    if isinstance(ev, WindowClosed):
        return (
            f"[cyan]window[/cyan] {ev.start:%Y-%m-%d}..{ev.end:%Y-%m-%d} closed "
            f"({ev.example_count:,} trips, {ev.close_reason})"
        )
    if isinstance(ev, WindowValidated):
        crossed = [
            f"{f.name} {k} {d.measure} {d.value:.3f}>{d.threshold:g}"
            for f in ev.features
            for k, d in (("drift", f.drift), ("skew", f.skew))
            if d is not None and d.crossed and d.value is not None
        ]
        colour = {"ok": "green", "insufficient_data": "dim"}.get(ev.verdict, "yellow")
        detail = f": {', '.join(crossed[:3])}" if crossed else ""
        start = f"{ev.window_start:%Y-%m-%d}" if ev.window_start else ev.window_id
        return f"[{colour}]validated[/{colour}] {start} {ev.verdict}{detail}"
    if isinstance(ev, TrainingRun):
        extra = f" in {ev.failed_component}" if ev.failed_component else ""
        return f"[magenta]run[/magenta] {ev.run_id} {ev.state}{extra} (reason: {ev.reason})"
    if isinstance(ev, ModelCandidate):
        head, base = headline(ev.metrics), headline(ev.baseline_metrics)
        vs = f" vs serving {base[1]:.3f}" if base else " (no model serving to compare)"
        verdict = "blessed" if ev.blessed else "NOT blessed: " + "; ".join(ev.failed_checks)
        shown = f"{head[0]} {head[1]:.3f}" if head else "no headline metric"
        return f"[magenta]candidate[/magenta] {ev.candidate_id} {shown}{vs}; {verdict}"
    if isinstance(ev, PromotionEvent):
        labels = ", ".join(f"{k}=v{v}" for k, v in ev.labels.items())
        return (
            f"[bold green]promotion[/bold green] {ev.candidate_id} {ev.decision} by {ev.actor}"
            f"{f' -> {labels}' if labels else ''} ({ev.reason})"
        )
    if isinstance(ev, WindowScored):
        return describe_scored(ev)
    if isinstance(ev, DeadLetter):
        return f"[red]dead letter[/red] {ev.reason}: {ev.message}"
    return f"{type(ev).__name__}"


def describe_scored(ev: WindowScored) -> str:
    """The monitor's score of a window: realized on its labels, estimated without them."""
    real, est = ev.metrics.realized, ev.metrics.estimated
    key = next((k for k in ("auc", "accuracy", "rmse") if k in real or k in est), None)
    if key is None:
        return f"[blue]quality[/blue] {ev.window_id}: no metric"
    who = f"challenger {ev.candidate_id}" if ev.role == "challenger" else f"{ev.role} v{ev.version}"
    start = f"{ev.window_start:%Y-%m-%d}" if ev.window_start else ev.window_id
    shown = f"{key} {real[key]:.3f}" if key in real else "no labels yet"
    guess = f", estimated {est[key]:.3f}" if key in est else ""
    return (
        f"[blue]quality[/blue] {who} on {start}: {shown}{guess} "
        f"({ev.label_coverage:.0%} of {ev.example_count:,} labelled)"
    )
