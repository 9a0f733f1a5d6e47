"""``ctrain replay``, ``schema``, ``validator reindex``: data into a stream, a stream's
schema, the validator's index."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ctrain import devstack, where
from ctrain.commands import common
from ctrain.replay import ReplayError, order_by_time, read_table, replay
from ctrain.replay_labels import parse_duration, replay_with_labels
from shared.config import pick_model


def _replay_topic(args: argparse.Namespace) -> str:
    """``--topic``, else the topic of ``--model`` (or of the models file's only model)."""
    from shared import topics

    if args.topic:
        return str(args.topic)
    cfg = common.models_file(devstack.load_state())
    if cfg is None:
        return topics.EXAMPLES
    return cfg.models[pick_model(cfg, args.model)].topic


def _replay(args: argparse.Namespace) -> int:

    settings = common.common_from_dev()
    topic = _replay_topic(args)
    if args.label_delay is not None:
        return _replay_labels(args, settings, topic)
    with Progress(
        TextColumn("[bold]replay"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>10,.0f} ex/s"),
        TimeRemainingColumn(),
        console=common.console,
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
                end_of_input=not args.keep_open,
            )
        )
    common.console.print(
        f"sent [bold]{summary.sent:,}[/bold] examples to {summary.topic} in "
        f"{summary.seconds:.2f}s ({summary.rate:,.0f}/s); partitions {summary.partitions}"
    )
    return 0


def _replay_labels(args: argparse.Namespace, settings: object, topic: str) -> int:
    """The file as examples now and their labels ``--label-delay`` later."""
    from shared import contract
    from shared.labels import label_features

    if not args.time_column:
        raise ReplayError("--label-delay needs --time-column (labels come later in event time)")
    cfg = common.models_file(devstack.load_state())
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
            end_of_input=not args.keep_open,
        )
    )
    common.console.print(
        f"sent [bold]{summary.examples:,}[/bold] examples to {summary.topic} without "
        f"{', '.join(columns)} and [bold]{summary.labels:,}[/bold] labels to ctrain.labels "
        f"{args.label_delay} later ({summary.never_labelled:,} never labelled, "
        f"{summary.unlabelled:,} without a label in the file) in {summary.seconds:.2f}s"
    )
    return 0


def _schema(args: argparse.Namespace) -> int:
    from google.protobuf import text_format

    from services.validator.schemas import SchemaStore
    from shared.artifacts import ArtifactStore
    from shared.schema import load_schema

    schemas = SchemaStore(ArtifactStore(where.artifact_root()))
    if args.action == "export":
        schema = schemas.load(args.stream)
        if schema is None:
            common.console.print(f"no schema stored for stream {args.stream!r} yet")
            return 1
        text = text_format.MessageToString(schema)
        if args.output in (None, "-"):
            sys.stdout.write(text)
        else:
            with open(args.output, "w") as f:
                f.write(text)
            v = schemas.current_version(args.stream)
            common.console.print(f"wrote schema v{v} of {args.stream!r} to {args.output}")
        return 0
    if not args.file:
        common.console.print("schema import needs a FILE")
        return 2
    curated = _curated_schema(args.stream)
    if curated:
        # The validator reads the curated file first: an imported version would be
        # stored and silently never used.
        common.console.print(
            f"stream {args.stream!r} is validated against the curated schema {curated}; "
            "an imported version would be ignored. Edit that file instead, or unset it "
            "to let the validator use imported versions."
        )
        return 2
    v = schemas.save(args.stream, load_schema(args.file))
    common.console.print(f"imported {args.file} as schema v{v} of stream {args.stream!r}")
    return 0


def _curated_schema(stream: str) -> str | None:
    """The curated schema file the validator uses for ``stream``, and where it is named."""

    cfg = common.models_file(devstack.load_state())
    for name, m in cfg.models.items() if cfg else []:
        if m.stream == stream and m.schema_path:
            return f"{m.schema_path} (model {name!r} in the models file)"
    env = os.environ.get("CTRAIN_SCHEMA")
    return f"{env} (CTRAIN_SCHEMA)" if env else None


def _reindex(args: argparse.Namespace) -> int:
    """Rebuild the validator's window index in Redis from the artifact store."""
    from redis.asyncio import Redis

    from services.validator.index import RedisWindowIndex, periods_in_store, refs_in_store

    settings: Any = common.common_from_dev()
    refs = refs_in_store(where.artifact_root(), args.stream)
    periods = periods_in_store(where.artifact_root(), args.stream)

    async def go() -> None:
        redis = Redis.from_url(settings.redis_url)
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
    common.console.print(
        f"indexed {len(refs)} validated window(s) and {len(periods)} judged period(s) of "
        f"{', '.join(streams) or 'no stream'} "
        f"from {where.artifact_root()}"
    )
    return 0


def register(sub: Any) -> None:
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
        "--keep-open",
        action="store_true",
        help="do not end the input with a watermark record: the last windows close after "
        "the model's idle_timeout_s instead of at once",
    )
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
