"""The demo's helpers, outside its scenario (ctrain/demo.py): the data cut at a window
boundary into history and what comes after, a clean dev state directory, retries
against a service that is restarting, and the worker thread the live view watches."""

from __future__ import annotations

import calendar
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pyarrow as pa
import pyarrow.compute as pc

from ctrain import client, devstack
from ctrain.loop import LoopError

T = TypeVar("T")


def split_at_window(
    table: pa.Table, window_s: int, column: str, year: int = 2014
) -> tuple[pa.Table, pa.Table]:
    """Rows before / from the first window boundary on or after 1 January ``year``.

    Windows are aligned to multiples of their duration since the epoch, so a split
    on a boundary leaves no window half in each phase.
    """
    jan1 = calendar.timegm((year, 1, 1, 0, 0, 0))
    boundary = -(-jan1 // window_s) * window_s
    ts = table.column(column)
    before = table.filter(pc.less(ts, boundary))
    after = table.filter(pc.greater_equal(ts, boundary))
    return before, after


def split_history(
    table: pa.Table, time_column: str | None, window_s: float | None, share: float = 0.6
) -> tuple[pa.Table, pa.Table]:
    """A user's data: the first ``share`` as history, the rest as what comes after. With
    event time and windows of a duration, the cut is on a window boundary."""
    cut = int(table.num_rows * share)
    if time_column and window_s and 0 < cut < table.num_rows:
        ts = table.column(time_column)
        if pa.types.is_integer(ts.type) or pa.types.is_floating(ts.type):
            at = ts[cut].as_py()
            boundary = -(-int(at) // int(window_s)) * int(window_s)
            return (
                table.filter(pc.less(ts, boundary)),
                table.filter(pc.greater_equal(ts, boundary)),
            )
    return table.slice(0, cut), table.slice(cut)


def prepare_state_dir(d: Path) -> None:
    """A demo starts from nothing: old artifacts, Redis data and models are cleared."""
    state = devstack.load_state()
    if state and any(devstack.Proc(**p).alive() for p in state.get("procs", [])):
        raise devstack.DevStackError(
            f"a dev stack is already up (state {d / 'dev.json'}); `ctrain dev down` first"
        )
    for sub in ("artifacts", "serving", "redis"):
        shutil.rmtree(d / sub, ignore_errors=True)
    for f in ("models.config", "dev.json", "tokens.json"):
        (d / f).unlink(missing_ok=True)


def retrying(fn: Callable[[], T], timeout: float, what: str) -> T:
    """Call ``fn`` until a service that is restarting answers (connection errors, 5xx)."""
    import grpc

    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (httpx.TransportError, client.ApiError, grpc.RpcError) as e:
            if isinstance(e, client.ApiError) and e.status < 500:
                raise
            if time.monotonic() > deadline:
                raise LoopError(f"{what}: no answer in {timeout:.0f}s: {e}") from e
            time.sleep(0.5)  # back-off before asking again


def run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def go() -> None:
        try:
            out["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - the caller's thread re-raises it
            out["error"] = e

    t = threading.Thread(target=go, name="ctrain-demo", daemon=True)
    t.start()
    return t, out


def group_progress(bootstrap: str, group: str, topic: str) -> str:
    """Where consumer group ``group`` stands on ``topic``: per partition, its committed
    offset beside the log's end (``0: 3/3``), to say whether a published event was read."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def ask() -> str:
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        try:
            await c.start()
            tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
            ends = await c.end_offsets(tps)
            parts = [f"{tp.partition}: {await c.committed(tp)}/{ends[tp]}" for tp in tps]
            return f"group {group} on {topic}, committed/end: " + ", ".join(parts)
        finally:
            await c.stop()

    try:
        return asyncio.run(asyncio.wait_for(ask(), 30))
    except Exception as e:  # noqa: BLE001 - a diagnosis, never the failure itself
        return f"group {group} on {topic}: not readable ({type(e).__name__}: {e})"
