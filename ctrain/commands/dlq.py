"""``ctrain dlq list|show|redrive``: the dead-letter queues, for an operator after a fix."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from typing import Any

import orjson
from rich.table import Table

from ctrain import dlq
from ctrain.commands import common


def register(sub: Any) -> None:
    d = sub.add_parser(
        "dlq", help="list, show and redrive dead letters (examples, windows, events)"
    )
    d.add_argument("action", choices=["list", "show", "redrive"])
    d.add_argument("letter_id", nargs="*", help="show: one letter; redrive: these letters")
    d.add_argument(
        "--queue",
        choices=[*dlq.QUEUES, "all"],
        default="all",
        help="which dead-letter topic (default: all three)",
    )
    d.add_argument("--reason", help="only letters with this reason (e.g. missing_feature)")
    d.add_argument("--source-partition", type=int, help="only letters from this partition")
    d.add_argument("--from-offset", type=int, help="only source offsets >= this")
    d.add_argument("--to-offset", type=int, help="only source offsets <= this")
    d.add_argument("--to", help="redrive: the topic for letters without one (HTTP lines)")
    d.add_argument("--why", help="redrive: why now (kept in the audit trail; required)")
    d.add_argument("--actor", help="redrive: who (default: your user name)")
    d.add_argument("--force", action="store_true", help="redrive letters redriven before too")
    d.add_argument("--dry-run", action="store_true", help="redrive: say what would be sent")
    d.add_argument("--limit", type=int, default=50, help="list: letters shown (newest)")
    common.output_option(d)
    d.set_defaults(func=run)


def _settings_and_redis() -> tuple[Any, Any]:
    from redis.asyncio import Redis

    settings: Any = common.common_from_dev()
    return settings, Redis.from_url(settings.redis_url)


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    settings, redis = _settings_and_redis()
    try:
        queues = list(dlq.QUEUES) if args.queue == "all" else [args.queue]
        held = await dlq.read(settings, queues)
        if args.action == "show":
            return _show(held, args)
        chosen = dlq.select(
            held,
            reason=args.reason,
            ids=args.letter_id or None,
            source_partition=args.source_partition,
            from_offset=args.from_offset,
            to_offset=args.to_offset,
        )
        if args.action == "list":
            return _list(chosen, await dlq.redriven(redis), args)
        return await _redrive(settings, redis, chosen, args)
    finally:
        await redis.aclose()


def _show(held: list[dlq.Held], args: argparse.Namespace) -> int:
    if len(args.letter_id) != 1:
        common.console.print("dlq show needs one LETTER_ID (see `ctrain dlq list`)")
        return 2
    match = [h for h in held if h.id == args.letter_id[0]]
    if not match:
        common.console.print(f"no dead letter {args.letter_id[0]!r} in {', '.join(dlq.QUEUES)}")
        return 1
    h = match[0]
    body = {"queue": h.queue, "dlq_offset": h.offset, **h.letter.model_dump(mode="json")}
    if args.output == "json":
        sys.stdout.write(orjson.dumps(body).decode() + "\n")
        return 0
    for k, v in body.items():
        if k != "payload":
            common.console.print(f"[bold]{k}[/bold]: {v}")
    common.console.print("[bold]payload[/bold]:")
    common.console.print(h.letter.payload, markup=False, highlight=False)
    return 0


def _list(chosen: list[dlq.Held], done: dict[str, Any], args: argparse.Namespace) -> int:
    if args.output == "json":
        rows = [
            {
                "queue": h.queue,
                "id": h.id,
                "reason": h.letter.reason,
                "source": h.letter.source.model_dump(),
                "redriven": done.get(h.id),
            }
            for h in chosen
        ]
        summary = [{"queue": q, "reason": r, "count": n} for q, r, n in dlq.by_reason(chosen)]
        sys.stdout.write(orjson.dumps({"by_reason": summary, "letters": rows}).decode() + "\n")
        return 0
    if not chosen:
        common.console.print("no dead letters match")
        return 0
    t = Table("queue", "reason", "letters", "redriven", title="dead letters by reason")
    for q, r, n in dlq.by_reason(chosen):
        back = sum(1 for h in chosen if h.queue == q and h.letter.reason == r and h.id in done)
        t.add_row(q, r, str(n), str(back))
    common.console.print(t)
    t = Table("id", "reason", "source", "message", title=f"newest {args.limit}")
    for h in chosen[-args.limit :]:
        s = h.letter.source
        mark = " (redriven)" if h.id in done else ""
        t.add_row(
            h.id + mark,
            h.letter.reason,
            f"{s.topic}/{s.partition}@{s.offset}",
            h.letter.message[:80],
        )
    common.console.print(t)
    return 0


async def _redrive(
    settings: Any, redis: Any, chosen: list[dlq.Held], args: argparse.Namespace
) -> int:
    if not (
        args.letter_id or args.reason or args.from_offset is not None or args.to_offset is not None
    ):
        common.console.print(
            "dlq redrive needs a selection: LETTER_IDs, --reason, or an offset range "
            "(--source-partition/--from-offset/--to-offset)"
        )
        return 2
    if not args.why and not args.dry_run:
        common.console.print("dlq redrive needs --why (kept in the audit trail)")
        return 2
    if not chosen:
        common.console.print("no dead letters match")
        return 1
    try:
        out = await dlq.redrive(
            settings,
            redis,
            chosen,
            actor=args.actor or getpass.getuser(),
            why=args.why or "",
            to=args.to,
            force=args.force,
            dry_run=args.dry_run,
        )
    except dlq.DlqError as e:
        common.console.print(f"[red]{e}[/red]")
        return 2
    verb = "would send" if args.dry_run else "sent"
    for lid, topic in out.sent:
        common.console.print(f"{verb} {lid} -> {topic}")
    for lid, why in out.skipped:
        common.console.print(f"[yellow]skipped[/yellow] {lid}: {why} (--force sends it again)")
    common.console.print(f"{len(out.sent)} {verb}, {len(out.skipped)} skipped")
    return 0
