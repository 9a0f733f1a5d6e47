"""The ``ctrain`` console script."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=False)


def _dev(args: argparse.Namespace) -> int:
    from ctrain import devstack

    if args.action == "up":
        devstack.up(
            echo=console.print,
            serving_replicas=args.serving_replicas,
            control_replicas=args.control_replicas,
        )
        console.print(f"[green]dev stack up[/green]; state in {devstack.state_dir() / 'dev.json'}")
        return 0
    if args.action == "down":
        devstack.down(echo=console.print)
        return 0
    if args.action == "roll":
        if not args.name:
            console.print("[red]name the process to roll[/red]: `ctrain dev roll trigger`")
            return 2
        devstack.roll(args.name, echo=console.print)
        return 0
    if args.action == "reset":
        devstack.reset(echo=console.print)
        console.print("[green]dev stack reset[/green]: every service, store and topic afresh")
        return 0
    rows = devstack.status()
    if not rows:
        console.print("no dev stack recorded; start one with `ctrain dev up`")
        return 1
    t = Table("part", "address", "state")
    for name, addr, ok in rows:
        t.add_row(name, addr, "[green]up[/green]" if ok else "[red]down[/red]")
    console.print(t)
    return 0 if all(ok for _, _, ok in rows) else 1


def _common_from_dev() -> object:
    """Shared settings, filled from the dev stack's state file where env is silent."""
    from ctrain import devstack
    from shared.settings import CommonSettings

    state = devstack.load_state()
    kwargs: dict[str, Any] = {}
    if state:
        if "CTRAIN_KAFKA_BOOTSTRAP" not in os.environ:
            kwargs["kafka_bootstrap"] = state["kafka"]
            kwargs["kafka_idempotent"] = not state.get("embedded_kafka", False)
        if "CTRAIN_REDIS_URL" not in os.environ:
            kwargs["redis_url"] = state["redis"]
    return CommonSettings(**kwargs)


def _replay_topic(args: argparse.Namespace) -> str:
    """``--topic``, else the topic of ``--model`` (or of the models file's only model)."""
    from ctrain import devstack
    from ctrain.ops import models_file
    from shared import topics
    from shared.config import pick_model

    if args.topic:
        return str(args.topic)
    cfg = models_file(devstack.load_state())
    if cfg is None:
        return topics.EXAMPLES
    return cfg.models[pick_model(cfg, args.model)].topic


def _replay(args: argparse.Namespace) -> int:
    from ctrain.replay import replay

    settings = _common_from_dev()
    topic = _replay_topic(args)
    if args.label_delay is not None:
        return _replay_labels(args, settings, topic)
    with Progress(
        TextColumn("[bold]replay"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>10,.0f} ex/s"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("replay", total=None, rate=0.0)
        import time

        t0 = time.perf_counter()

        def progress(sent: int, total: int) -> None:
            el = time.perf_counter() - t0
            bar.update(task, completed=sent, total=total, rate=sent / el if el > 0 else 0.0)

        summary = asyncio.run(
            replay(
                settings,  # type: ignore[arg-type]
                args.path,
                time_column=args.time_column,
                rate=args.rate,
                speedup=args.speedup,
                limit=args.limit,
                repeat=args.repeat,
                key_column=args.key_column,
                topic=topic,
                progress=progress,
            )
        )
    console.print(
        f"sent [bold]{summary.sent:,}[/bold] examples to {summary.topic} in "
        f"{summary.seconds:.2f}s ({summary.rate:,.0f}/s); partitions {summary.partitions}"
    )
    return 0


def _replay_labels(args: argparse.Namespace, settings: object, topic: str) -> int:
    """The file as examples now and their labels ``--label-delay`` later."""
    from ctrain import devstack
    from ctrain.ops import models_file
    from ctrain.replay import ReplayError, order_by_time, read_table
    from ctrain.replay_labels import parse_duration, replay_with_labels
    from shared import contract
    from shared.config import pick_model
    from shared.labels import label_features

    if not args.time_column:
        raise ReplayError("--label-delay needs --time-column (labels come later in event time)")
    cfg = models_file(devstack.load_state())
    model = pick_model(cfg, args.model) if cfg is not None and not args.topic else None
    spec = cfg.models[model] if cfg is not None and model else None
    columns = tuple(c for c in (args.label_columns or "").split(",") if c)
    if not columns and spec is not None:
        columns = label_features(contract.import_module(spec.module))
    if not columns:
        raise ReplayError("name the label columns (--label-columns a,b) or the model (--model)")
    table = order_by_time(read_table(args.path), args.time_column)
    if args.limit is not None:
        table = table.slice(0, args.limit)
    id_column = args.id_column or (spec.labels.id_field if spec is not None else "") or None
    if id_column and id_column not in table.column_names and not args.id_column:
        id_column = None  # the model's id field is not in this file: ids from the broker
    summary = asyncio.run(
        replay_with_labels(
            settings,  # type: ignore[arg-type]
            table,
            time_column=args.time_column,
            label_columns=columns,
            delay_s=parse_duration(args.label_delay),
            topic=topic,
            id_column=id_column,
            never_fraction=args.never_labelled,
            seed=args.seed,
            model=model if cfg is not None and len(cfg.models) > 1 else None,
            rate=args.rate,
            speedup=args.speedup,
        )
    )
    console.print(
        f"sent [bold]{summary.examples:,}[/bold] examples to {summary.topic} without "
        f"{', '.join(columns)} and [bold]{summary.labels:,}[/bold] labels to ctrain.labels "
        f"{args.label_delay} later ({summary.never_labelled:,} never labelled, "
        f"{summary.unlabelled:,} without a label in the file) in {summary.seconds:.2f}s"
    )
    return 0


def _artifact_root() -> str:
    from ctrain import where

    return where.artifact_root()


def _schema(args: argparse.Namespace) -> int:
    from google.protobuf import text_format

    from services.validator.schemas import SchemaStore
    from shared.artifacts import ArtifactStore
    from shared.schema import load_schema

    schemas = SchemaStore(ArtifactStore(_artifact_root()))
    if args.action == "export":
        schema = schemas.load(args.stream)
        if schema is None:
            console.print(f"no schema stored for stream {args.stream!r} yet")
            return 1
        text = text_format.MessageToString(schema)
        if args.output in (None, "-"):
            sys.stdout.write(text)
        else:
            with open(args.output, "w") as f:
                f.write(text)
            v = schemas.current_version(args.stream)
            console.print(f"wrote schema v{v} of {args.stream!r} to {args.output}")
        return 0
    if not args.file:
        console.print("schema import needs a FILE")
        return 2
    curated = _curated_schema(args.stream)
    if curated:
        # The validator reads the curated file first: an imported version would be
        # stored and silently never used.
        console.print(
            f"stream {args.stream!r} is validated against the curated schema {curated}; "
            "an imported version would be ignored. Edit that file instead, or unset it "
            "to let the validator use imported versions."
        )
        return 2
    v = schemas.save(args.stream, load_schema(args.file))
    console.print(f"imported {args.file} as schema v{v} of stream {args.stream!r}")
    return 0


def _curated_schema(stream: str) -> str | None:
    """The curated schema file the validator uses for ``stream``, and where it is named."""
    from ctrain import devstack
    from ctrain.ops import models_file

    cfg = models_file(devstack.load_state())
    for name, m in cfg.models.items() if cfg else []:
        if m.stream == stream and m.schema_path:
            return f"{m.schema_path} (model {name!r} in the models file)"
    env = os.environ.get("CTRAIN_SCHEMA")
    return f"{env} (CTRAIN_SCHEMA)" if env else None


def _reindex(args: argparse.Namespace) -> int:
    """Rebuild the validator's window index in Redis from the artifact store."""
    from redis.asyncio import Redis

    from services.validator.index import RedisWindowIndex, periods_in_store, refs_in_store

    common: Any = _common_from_dev()
    refs = refs_in_store(_artifact_root(), args.stream)
    periods = periods_in_store(_artifact_root(), args.stream)

    async def go() -> None:
        redis = Redis.from_url(common.redis_url)
        try:
            index = RedisWindowIndex(redis)
            for ref in refs:
                await index.add(ref)
            for stream, period_id, start_ms in periods:
                await index.add_period(stream, period_id, start_ms)
        finally:
            await redis.aclose()

    asyncio.run(go())
    streams = sorted({r.stream for r in refs})
    console.print(
        f"indexed {len(refs)} validated window(s) and {len(periods)} judged period(s) of "
        f"{', '.join(streams) or 'no stream'} "
        f"from {_artifact_root()}"
    )
    return 0


def _pipeline(args: argparse.Namespace) -> int:
    from services.trigger.pipeline import ComponentImages, compile_pipeline

    packages = {}
    for item in args.packages or []:
        step, _, pkgs = item.partition("=")
        packages[step] = [p for p in pkgs.split(",") if p]
    images = ComponentImages(
        base_image=args.base_image, packages=packages, trainer_gpus=args.trainer_gpus
    )
    compile_pipeline(args.output, images)
    console.print(f"wrote {args.output} (base image {args.base_image})")
    return 0


def _train(args: argparse.Namespace) -> int:
    from ctrain import client, devstack
    from ctrain.ops import resolve

    model, _ = resolve(args, devstack.load_state())
    tc = client.trigger()
    try:
        body = tc.train(args.reason, model=model)
    finally:
        tc.close()
    if body["started"]:
        console.print(f"[green]run started[/green] {body['run_id']} ({body['reason']})")
        return 0
    console.print(f"[yellow]no run[/yellow]: {body['reason']}")
    return 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctrain", description="Event-driven continuous training.")
    sub = p.add_subparsers(dest="command", required=True)
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
    rp = sub.add_parser("replay", help="stream a CSV/Parquet/JSON-lines file into a model's stream")
    rp.add_argument("path")
    rp.add_argument("--model", help="send to this model's topic (default: the file's only model)")
    rp.add_argument("--topic", help="send to this topic (overrides --model)")
    rp.add_argument("--time-column", help="send rows in this column's order (event time)")
    rp.add_argument("--rate", type=float, help="examples per second")
    rp.add_argument("--speedup", type=float, help="replay the data's own clock this much faster")
    rp.add_argument("--limit", type=int, help="send only the first N rows")
    rp.add_argument("--repeat", type=int, default=1, help="send the file N times")
    rp.add_argument("--key-column", help="Kafka key column (keeps a key in one partition)")
    rp.add_argument(
        "--label-delay",
        help="send each row's label to ctrain.labels this much later in event time (30d, 12h)",
    )
    rp.add_argument(
        "--label-columns", help="the label columns (default: the model's label features)"
    )
    rp.add_argument(
        "--id-column", help="the id labels name their example by (default: labels.id_field)"
    )
    rp.add_argument(
        "--never-labelled", type=float, default=0.0, help="fraction of rows never labelled"
    )
    rp.add_argument("--seed", type=int, default=0, help="seed of the never-labelled choice")
    rp.set_defaults(func=_replay)
    sc = sub.add_parser("schema", help="review the inferred schema of a stream")
    sc.add_argument("action", choices=["export", "import"])
    sc.add_argument("file", nargs="?", help="schema.pbtxt to import")
    sc.add_argument("--stream", default="default")
    sc.add_argument("-o", "--output", help="export to this file (default: stdout)")
    sc.set_defaults(func=_schema)
    va = sub.add_parser("validator", help="the validator's state")
    va.add_argument("action", choices=["reindex"], help="reindex: rebuild its Redis index")
    va.add_argument("--stream", help="only this stream (default: every stream)")
    va.set_defaults(func=_reindex)
    pl = sub.add_parser("pipeline", help="the continuous-training pipeline")
    pl.add_argument("action", choices=["compile"])
    pl.add_argument("-o", "--output", required=True, help="pipeline YAML to write")
    pl.add_argument("--base-image", default="ctrain:latest", help="image of every component")
    pl.add_argument(
        "--packages", action="append", help="STEP=pkg1,pkg2 extra packages for one component"
    )
    pl.add_argument("--trainer-gpus", type=int, default=0, help="GPUs for the trainer")
    pl.set_defaults(func=_pipeline)
    tr = sub.add_parser("train", help="ask the trigger for a training run now")
    tr.add_argument("--reason", default="manual request from ctrain train")
    tr.add_argument("--model", help="default: the models file's only model")
    tr.set_defaults(func=_train)
    from ctrain.model_cmd import add_parser as add_model

    add_model(sub)
    from ctrain.backtest_cmd import add_parser as add_backtest
    from ctrain.console_cmd import add_parser as add_console
    from ctrain.dlq_cmd import add_parser as add_dlq
    from ctrain.ops import add_parsers

    add_parsers(sub)
    add_backtest(sub)
    add_dlq(sub)
    add_console(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as e:  # one clear line for operators; details with CTRAIN_DEBUG=1
        if os.environ.get("CTRAIN_DEBUG"):
            raise
        console.print(f"[red]error:[/red] {type(e).__name__}: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
