"""The label join against a real Redis, on shards laid out as ingest writes them: the
unhappy paths of held labels, crashes between claim and write, and the upkeep racing
the index. (The happy path and the monitor's rescoring: test_monitor.py.)"""

from __future__ import annotations

import asyncio
import types
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from redis.asyncio import Redis

from services.monitor.labeljoin import JoinModel, LabelJoin, Source
from services.monitor.labelstate import LabelState
from shared import labels as lb
from shared.artifacts import ArtifactStore
from shared.events import EventDeadLetter, LabelRecord, MemberWindow, WindowValidated

pytestmark = pytest.mark.integration
START = datetime(2014, 1, 1, tzinfo=UTC)


def period(root: Path, k: int, n: int = 10) -> WindowValidated:
    d = root / "windows" / "s" / f"w{k}"
    d.mkdir(parents=True)
    ids = pa.array([f"tx-{k}-{i}" for i in range(n)], pa.string())
    pq.write_table(pa.table({"tx": ids, "y": pa.nulls(n, pa.float32())}), d / "data.parquet")
    return WindowValidated(
        id=f"val-{k}",
        window_id=f"period-{k}",
        stream="s",
        stats_uri="",
        verdict="ok",
        example_count=n,
        window_start=START + timedelta(days=10 * k),
        window_end=START + timedelta(days=10 * (k + 1)),
        scope="period",
        members=[MemberWindow(window_id=d.name, data_uri=str(d / "data.parquet"), example_count=n)],
    )


class Rig:
    def __init__(self, redis: Redis, root: Path, models: int = 1) -> None:
        self.letters: list[EventDeadLetter] = []
        self.counts: dict[tuple[str, str], int] = {}
        names = ["m", "other"][:models]
        self.join = LabelJoin(
            {
                n: JoinModel(n, "s" if n == "m" else "t", ("y",), id_field="tx", horizon_s=86400.0)
                for n in names
            },
            ArtifactStore(str(root)),
            LabelState(redis),
            self.dead,
            self.count,
        )

    async def dead(self, letter: EventDeadLetter) -> None:
        self.letters.append(letter)

    def count(self, model: str, outcome: str, n: int) -> None:
        self.counts[(model, outcome)] = self.counts.get((model, outcome), 0) + n


def rec(x: str, y: float, offset: int, day: float = 1.0, **kw: Any) -> tuple[LabelRecord, Source]:
    r = LabelRecord(example_id=x, label=y, event_time=START + timedelta(days=day), **kw)
    return r, Source("ctrain.labels", 0, offset, r.model_dump_json())


def test_every_record_held_for_an_id_is_joined_or_dead_lettered(
    redis: Redis, tmp_path: Path
) -> None:
    r = Rig(redis, tmp_path)
    v = period(tmp_path, 0)

    async def go() -> None:
        # Three records for one example before it is known: the first, the same again
        # (a duplicate), a different one (a conflict); and one record redelivered.
        first = rec("tx-0-1", 1.0, 10)
        got = await r.join.join([first, rec("tx-0-1", 1.0, 11), rec("tx-0-1", 0.0, 12), first])
        assert got == {"held": 4}
        assert await r.join.state.pending_count("m") == 1
        await r.join.index(v)
        assert await r.join.state.pending_count("m") == 0

    asyncio.run(go())
    assert [x.reason for x in r.letters] == ["conflicting_label"]
    assert r.letters[0].source.offset == 12
    assert r.counts[("m", "joined")] == 1 and r.counts[("m", "duplicate")] == 1
    joined = lb.read_joined(ArtifactStore(str(tmp_path)), v.members[0].data_uri)
    assert joined.column("row").to_pylist() == [1]
    assert joined.column("src_offset").to_pylist() == [10]


def test_a_crash_between_claim_and_write_loses_nothing(
    redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = Rig(redis, tmp_path)
    v = period(tmp_path, 0)
    batch = [rec(f"tx-0-{i}", float(i), i) for i in range(5)]

    def crash(*a: Any, **k: Any) -> None:
        raise OSError("disk full")

    async def go() -> None:
        await r.join.index(v)
        monkeypatch.setattr(lb, "write_segment", crash)
        with pytest.raises(OSError, match="disk full"):
            await r.join.join(batch)  # claimed, not written: the batch is not committed
        monkeypatch.undo()
        # The batch again (redelivered), from a fresh process: written, counted once.
        fresh = Rig(redis, tmp_path)
        assert await fresh.join.join(batch) == {"redelivered": 5}
        shard = v.members[0].window_id
        assert await fresh.join.state.counts("m", [shard]) == {shard: 5}

    asyncio.run(go())
    joined = lb.read_joined(ArtifactStore(str(tmp_path)), v.members[0].data_uri)
    assert joined.column("row").to_pylist() == [0, 1, 2, 3, 4]


def test_the_upkeep_leaves_a_label_whose_window_was_just_indexed(
    redis: Redis, tmp_path: Path
) -> None:
    r = Rig(redis, tmp_path)
    v0, v5 = period(tmp_path, 0), period(tmp_path, 5)

    async def go() -> None:
        assert await r.join.join([rec("tx-0-3", 1.0, 1), rec("nope", 1.0, 2)]) == {"held": 2}
        # The later period is indexed first: the watermark passes both labels' time. The
        # upkeep races the earlier period's index: its label is left to the index.
        await r.join.state.index("m", v0.members[0].window_id, v0.members[0].data_uri, 0, [
            ("tx-0-3", 3)
        ])  # fmt: skip
        await r.join.index(v5)
        # A replica that leads no model gives up on nothing (the leader's upkeep does).
        assert await r.join.expire(only=[]) == 0
        assert await r.join.state.pending_count("m") == 2
        assert await r.join.expire(only=["m"]) == 1
        assert await r.join.state.pending_count("m") == 0

    asyncio.run(go())
    assert [(x.reason, x.source.offset) for x in r.letters] == [("unknown_example", 2)]
    assert r.counts[("m", "joined")] == 1


def test_labels_of_no_model_or_of_the_wrong_shape_are_dead_lettered(
    redis: Redis, tmp_path: Path
) -> None:
    r = Rig(redis, tmp_path, models=2)
    v = period(tmp_path, 0)

    async def go() -> None:
        await r.join.index(v)
        nameless = rec("tx-0-1", 1.0, 1)
        wrong = rec("tx-0-1", 1.0, 2, model="nope")
        shape = LabelRecord(example_id="tx-0-2", features={"z": 1}, model="m")
        late = rec("tx-0-3", 1.0, 4, day=12.0, model="m")  # 2 days after its window's end
        ok = rec("tx-0-4", 1.0, 5, model="m")
        got = await r.join.join(
            [nameless, wrong, (shape, Source("ctrain.labels", 0, 3, "{}")), late, ok]
        )
        assert got == {"unknown_model": 2, "invalid_label": 1, "late_label": 1, "joined": 1}

    asyncio.run(go())
    by = {x.source.offset: x for x in r.letters}
    assert "names no model and 2 are monitored" in by[1].message
    assert "model 'nope', which is not monitored" in by[2].message
    assert "missing y; not label features: z" in by[3].message
    assert "past the horizon" in by[4].message


def test_examples_that_carry_their_label_are_counted_at_index_time(
    redis: Redis, tmp_path: Path
) -> None:
    r = Rig(redis, tmp_path)
    v = period(tmp_path, 0)
    uri = v.members[0].data_uri
    t = pq.read_table(uri)
    y = pa.array([1.0, None, 0.0, None, None, 1.0, None, None, None, None], pa.float32())
    pq.write_table(t.set_column(t.schema.get_field_index("y"), "y", y), uri)

    async def go() -> dict[str, int]:
        await r.join.index(v)
        await r.join.index(v)  # again: counted once
        # A label for an example that carries one is counted, not joined (nor counted
        # twice by the trigger); one for an example without is joined.
        got = await r.join.join([rec("tx-0-2", 1.0, 1), rec("tx-0-3", 1.0, 2)])
        assert got == {"in_window": 1, "joined": 1}
        raw = await redis.hgetall("ctrain:labels:m:inline")
        return {k.decode(): int(x) for k, x in raw.items()}

    shard = v.members[0].window_id
    assert asyncio.run(go()) == {shard: 3}
    joined = lb.read_joined(ArtifactStore(str(tmp_path)), uri)
    assert joined.column("row").to_pylist() == [3]


def test_held_labels_of_an_index_that_stopped_are_joined_by_the_upkeep(
    redis: Redis, tmp_path: Path
) -> None:
    """The index wrote its ids and died before joining what was held for them; no later
    window moves the watermark: the upkeep still joins them."""
    r = Rig(redis, tmp_path)
    v = period(tmp_path, 0)

    async def go() -> int:
        assert await r.join.join([rec("tx-0-3", 1.0, 1, day=9.5)]) == {"held": 1}
        m = v.members[0]
        await r.join.state.index("m", m.window_id, m.data_uri, 0, [("tx-0-3", 3)])
        assert await r.join.expire() == 0
        return await r.join.state.pending_count("m")

    assert asyncio.run(go()) == 0
    assert r.counts[("m", "joined")] == 1 and r.letters == []


def test_a_shard_that_cannot_be_read_is_a_clear_error(redis: Redis, tmp_path: Path) -> None:
    """The monitor dead-letters the validation (window_unreadable), as for its scoring."""
    from services.monitor.core import Monitor
    from services.monitor.errors import WindowUnreadable

    r = Rig(redis, tmp_path)
    v = period(tmp_path, 0)
    Path(v.members[0].data_uri).unlink()
    view = types.SimpleNamespace(name="m", stream="s")
    monitor = Monitor({"m": view}, None, None, None, None, None, r.join)  # type: ignore[arg-type, dict-item]

    async def go() -> None:
        with pytest.raises(lb.LabelsUnreadable, match=r"shard .*data\.parquet"):
            await r.join.index(v)
        with pytest.raises(WindowUnreadable, match=r"shard .*data\.parquet"):
            await monitor.on_validation(v)
        assert not await r.join.state.indexed("m", v.members[0].window_id)

    asyncio.run(go())


def test_the_labels_clock_waits_for_the_slowest_labels_partition(
    redis: Redis, tmp_path: Path
) -> None:
    """Labels arrive on several partitions, each in event-time order: a window must not
    read as matured because one partition ran ahead while another still brings its
    labels. The clock is the slowest partition's newest joined event time."""
    from shared import keys

    r = Rig(redis, tmp_path)
    v = period(tmp_path, 0)

    def on(partition: int, x: str, offset: int, day: float) -> tuple[LabelRecord, Source]:
        rec_, src = rec(x, 1.0, offset, day=day)
        return rec_, Source("ctrain.labels", partition, offset, src.payload)

    async def go() -> list[int]:
        await r.join.index(v)
        clocks = []
        await r.join.join([on(1, "tx-0-1", 0, 9.0)])  # partition 1 alone: its time
        clocks.append(int(await redis.get(keys.labels_clock("m"))))
        await r.join.join([on(0, "tx-0-2", 0, 2.0)])  # partition 0 is behind: held back
        clocks.append(int(await redis.get(keys.labels_clock("m"))))
        await r.join.join([on(0, "tx-0-3", 1, 5.0)])  # it catches up, still the slowest
        clocks.append(int(await redis.get(keys.labels_clock("m"))))
        return clocks

    day = 86_400_000
    start = int(START.timestamp() * 1000)
    assert asyncio.run(go()) == [start + 9 * day, start + 2 * day, start + 5 * day]
