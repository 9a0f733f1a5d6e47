"""``ctrain backtest``: which thresholds and policy to set before going live.

Settings come from the configuration (``CTRAIN_TRIGGER_*`` and ``CTRAIN_VALIDATOR_*``
as the services read them); every flag overrides one. ``--sweep NAME=V1,V2,...``
repeats the backtest for each value and prints one line per value.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

from rich.table import Table

from ctrain import devstack, where
from ctrain.backtest import (
    Judge,
    Outcome,
    RecordedJudge,
    Report,
    WindowJudge,
    load_validations,
    load_windows,
    simulate,
)
from ctrain.commands import common
from ctrain.replay_labels import parse_duration

THRESHOLDS = ("drift_linf", "drift_jsd", "skew_linf", "skew_jsd")
POLICY_FLAGS = (
    "consecutive",
    "cooldown_s",
    "backoff",
    "daily_budget",
    "min_train_examples",
    "max_train_examples",
    "min_eval_examples",
    "post_change_share",
)


def register(sub: Any) -> None:
    bt = sub.add_parser(
        "backtest", help="replay recorded periods through the trigger's policy, offline"
    )
    bt.add_argument("--stream", required=True, help="the stream to replay")
    bt.add_argument(
        "--source",
        choices=["windows", "validations", "topic"],
        default="windows",
        help="window shards (distances recomputed), or the validator's recorded verdicts "
        "from the artifact store or from ctrain.validations",
    )
    bt.add_argument("--root", help="artifact root (default: CTRAIN_ARTIFACT_ROOT or the dev stack)")
    bt.add_argument("--schema", help="schema.pbtxt (default: CTRAIN_SCHEMA)")
    bt.add_argument("--min-examples", type=int, help="validator: smaller periods are not judged")
    bt.add_argument("--ignore", help="validator: comma-separated features left out")
    for name in THRESHOLDS:
        bt.add_argument(f"--{name.replace('_', '-')}", type=float, help=f"validator {name}")
    for name in POLICY_FLAGS:
        kind = float if name in ("cooldown_s", "backoff", "post_change_share") else int
        bt.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"trigger {name}")
    bt.add_argument(
        "--outcomes",
        default="promote",
        help="what each simulated run ends in, cycled: promote, reject, fail (comma-separated)",
    )
    bt.add_argument("--delay", type=int, default=1, help="periods from a run's start to its end")
    bt.add_argument(
        "--label-delay",
        help="labels arrive this long after their example (30d, 12h): when runs become "
        "possible with labels on their own stream (maturity: the model's, else this)",
    )
    bt.add_argument("--sweep", help="NAME=V1,V2,... : one backtest per value (a flag name above)")
    common.output_option(bt)
    bt.set_defaults(func=command)


INT_FLAGS = {
    "consecutive",
    "daily_budget",
    "min_train_examples",
    "max_train_examples",
    "min_eval_examples",
}


def _dev_config() -> None:
    """Against the dev stack, its services' configuration is the configuration."""

    state = devstack.load_state()
    if not state:
        return
    for k, v in devstack.service_env(state).items():
        if k.startswith(("CTRAIN_TRIGGER_", "CTRAIN_VALIDATOR_")) or k in (
            "CTRAIN_SCHEMA",
            "CTRAIN_CONFIG",
            "CTRAIN_ARTIFACT_ROOT",
        ):
            os.environ.setdefault(k, v)


def command(args: argparse.Namespace) -> int:
    from services.trigger.config import policy_from
    from services.trigger.settings import TriggerSettings
    from services.validator.config import config_from
    from services.validator.settings import ValidatorSettings
    from shared.config import apply, config_of
    from shared.settings import CommonSettings

    _dev_config()
    settings, vs, ts = CommonSettings(), ValidatorSettings(), TriggerSettings()
    schema = args.schema or settings.schema_path
    models = config_of(settings)
    name = models.model_of_stream(args.stream) if models else None
    spec = None
    if models is not None and name is not None:
        # The stream's model in the models file: its thresholds, policy and schema.
        spec = models.models[name]
        vs = apply(vs, spec.validation.given(), models=len(models.models))
        ts = apply(ts, spec.trigger.given(), models=len(models.models))
        schema = args.schema or spec.schema_path
    root = args.root or where.artifact_root()
    outcomes = tuple(o.strip() for o in args.outcomes.split(",") if o.strip())
    bad = [o for o in outcomes if o not in ("promote", "reject", "fail")]
    if bad or not outcomes:
        common.console.print(f"[red]--outcomes[/red]: {bad or 'empty'}; use promote, reject, fail")
        return 2
    sweep: list[tuple[str, Any]] = [("", None)]
    if args.sweep:
        name, _, values = args.sweep.partition("=")
        name = name.replace("-", "_")
        if name not in THRESHOLDS + POLICY_FLAGS or not values:
            common.console.print(
                f"[red]--sweep[/red] {args.sweep!r}: use NAME=V1,V2 with NAME one of "
                f"{', '.join(THRESHOLDS + POLICY_FLAGS)}"
            )
            return 2
        sweep = [(name, float(v)) for v in values.split(",")]
    reports: list[tuple[str, Any, Report]] = []
    for name, value in sweep:
        over = {
            k: getattr(args, k) for k in THRESHOLDS + POLICY_FLAGS if getattr(args, k) is not None
        }
        if name:
            over[name] = int(value) if name in INT_FLAGS else value
        policy = policy_from(ts, spec.labels if spec is not None else None)
        policy = replace(policy, **{k: v for k, v in over.items() if k in POLICY_FLAGS})
        cfg = config_from(vs)
        defaults = replace(cfg.defaults, **{k: v for k, v in over.items() if k in THRESHOLDS})
        if args.ignore:
            defaults = replace(defaults, ignore=frozenset(args.ignore.split(",")))
        min_examples = args.min_examples or cfg.min_examples
        judge: Judge
        if args.source == "windows":
            windows = load_windows(root, args.stream)
            if not windows:
                common.console.print(
                    f"[red]no windows[/red] of stream {args.stream!r} under {root}"
                )
                return 1
            # A threshold given here wins over the schema's comparators of its kind.
            kinds = frozenset(k.split("_")[0] for k in over if k in THRESHOLDS)
            wj = WindowJudge(windows, schema, min_examples, defaults, cfg.max_group_periods, kinds)
            judge, n = wj, len(wj)
        else:
            vals = (
                _from_topic(settings, args.stream)
                if args.source == "topic"
                else load_validations(root, args.stream)
            )
            thresholds = {
                (k.split("_")[0], "linf" if k.endswith("linf") else "jensen_shannon"): v
                for k, v in over.items()
                if k in THRESHOLDS
            }
            rj = RecordedJudge(vals, min_examples, thresholds)
            judge, n = rj, len(rj)
        if n == 0:
            common.console.print(f"[red]no judged periods[/red] of stream {args.stream!r}")
            return 1
        typed = cast(tuple[Outcome, ...], outcomes)
        label_delay = parse_duration(args.label_delay) if args.label_delay else None
        report = simulate(n, judge, policy, typed, args.delay, label_delay_s=label_delay)
        reports.append((name, value, report))
    if args.output == "json":
        out = [{"sweep": {n: v} if n else {}, **r.to_json()} for n, v, r in reports]
        print(json.dumps(out if args.sweep else out[0], indent=2, default=str))
        return 0
    if args.sweep:
        _print_sweep(reports)
    else:
        _print_report(reports[0][2])
    return 0


def _when(s: float) -> str:
    return datetime.fromtimestamp(s, UTC).strftime("%Y-%m-%d %H:%M")


def _print_report(r: Report) -> None:
    t = Table("#", "period start", "examples", "verdict", "largest distance", "decision")
    for p in r.periods:
        style = "bold green" if p["started"] else ""
        t.add_row(
            str(p["index"]),
            _when(p["start_s"]),
            f"{p['examples']:,}",
            p["verdict"],
            p["top"],
            f"[{style}]{p['decision']}[/{style}]" if style else p["decision"],
        )
    common.console.print(t)
    runs = Table(
        "run at",
        "trigger",
        "episode",
        "periods since episode",
        "since streak start",
        "event time since",
        "train/eval examples",
        "outcome",
        "false alarm",
        title="runs",
    )
    for run in r.runs:
        runs.add_row(
            str(run.index),
            run.trigger,
            str(run.episode),
            str(run.since_episode),
            str(run.since_crossing),
            _span(run.since_crossing_s),
            f"{run.train_examples:,}/{run.eval_examples:,}",
            run.outcome or "(open)",
            "yes" if run.false_alarm else "no",
        )
    common.console.print(runs)
    eps = ", ".join(
        f"#{e['episode']}: {e['periods']} periods, {len(e['runs'])} runs" for e in r.episodes
    )
    common.console.print(
        f"{len(r.periods)} periods · {len(r.runs)} runs · {r.false_alarms} false alarms · "
        f"episodes {eps}"
    )


def _span(s: float) -> str:
    return f"{s / 86400:.1f} d" if s >= 86400 else f"{s / 3600:.1f} h"


def _print_sweep(reports: list[tuple[str, Any, Report]]) -> None:
    t = Table(
        "setting", "runs", "false alarms", "first run at", "median periods to run", title="sweep"
    )
    for name, value, r in reports:
        gaps = sorted(run.since_crossing for run in r.runs)
        t.add_row(
            f"{name}={value:g}",
            str(len(r.runs)),
            str(r.false_alarms),
            str(r.runs[0].index) if r.runs else "-",
            str(gaps[len(gaps) // 2]) if gaps else "-",
        )
    common.console.print(t)


def _from_topic(settings: Any, stream: str) -> list[Any]:
    """Every period verdict of ``stream`` on ctrain.validations, read without a group."""
    import asyncio

    from pydantic import ValidationError

    from shared import topics
    from shared.events import WindowValidated
    from shared.kafka import read_to_end

    vals: list[WindowValidated] = []
    skipped = 0
    for rec in asyncio.run(read_to_end(settings.kafka_bootstrap, topics.VALIDATIONS)):
        try:
            v = WindowValidated.model_validate_json(rec.value or b"{}")
        except ValidationError:
            skipped += 1
            continue
        if v.stream == stream and v.scope == "period":
            vals.append(v)
    if skipped:
        common.console.print(f"[yellow]skipped {skipped} records that are not validations[/yellow]")
    return vals
