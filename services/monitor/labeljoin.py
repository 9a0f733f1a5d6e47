"""The label join: each label record joined to exactly one example, once.

One join serves the monitor (live quality) and training (the trigger's runs read the
joined labels from the artifact store, ``shared.labels``). No Kafka and no HTTP: the app
hands over a batch of decoded label records and their source positions; every step is
safe to repeat after a crash or an outage at any await point:

1. the example is found by its id (business id or ``topic:partition:offset``) in the
   index built from the judged windows' shards (:meth:`LabelJoin.index`); a label whose
   example is not indexed yet is held, and joined when its window is;
2. a label whose event time is more than ``horizon_s`` after its window's end is
   dead-lettered ``late_label``;
3. the example is claimed in Redis (one script per label): the first label wins; the
   same record again (same source position: a redelivery) is written again; the same
   label from another record is a ``duplicate`` (counted, not applied twice); a different
   label is dead-lettered ``conflicting_label``;
4. the batch's labels are written per shard as one segment beside the shard; only then
   does the app commit the batch's offsets;
5. held labels whose example never came (windows ``early_tolerance_s`` newer than the
   label were indexed) are dead-lettered ``unknown_example`` with their record, for
   ``ctrain dlq redrive``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from services.monitor.labelstate import LabelState
from shared import labels as lb
from shared.artifacts import ArtifactStore
from shared.events import DlqSource, EventDeadLetter, LabelRecord, WindowValidated

log = logging.getLogger(__name__)
# Outcomes of a label record (``ctrain_monitor_labels_total{outcome}``).
DEAD = {"late_label", "conflicting_label", "unknown_example", "unknown_model", "invalid_label"}


@dataclass(frozen=True)
class JoinModel:
    """What the join knows of one model (its ``labels`` section and its module)."""

    name: str
    stream: str
    features: tuple[str, ...]
    id_field: str = ""
    horizon_s: float = 90 * 86_400.0
    early_tolerance_s: float = 86_400.0


@dataclass(frozen=True)
class Source:
    """Where a label record came from (kept with a held label, for its dead letter)."""

    topic: str
    partition: int
    offset: int
    payload: str


@dataclass
class _Item:
    rec: LabelRecord
    src: Source
    values: dict[str, Any]
    shard: str = ""
    row: int = -1
    carried: bool = False  # the example carries its label in the window

    @property
    def ms(self) -> int | None:
        t = self.rec.event_time
        return int(t.timestamp() * 1000) if t is not None else None


Joined = Callable[[str, set[str]], Awaitable[None]]


def _ms(t: Any) -> int:
    return int(t.timestamp() * 1000) if t is not None else 0


class LabelJoin:
    def __init__(
        self,
        models: dict[str, JoinModel],
        store: ArtifactStore,
        state: LabelState,
        dead_letter: Callable[[EventDeadLetter], Awaitable[None]],
        count: Callable[[str, str, int], None],
        *,
        group_id: str = "ctrain-monitor.ctrain.labels",
        on_joined: Joined | None = None,
    ) -> None:
        self.models = models
        self.by_stream = {m.stream: m for m in models.values()}
        self.store = store
        self.state = state
        self.dead_letter = dead_letter
        self.count = count
        self.group_id = group_id
        self.on_joined = on_joined

    # ----------------------------------------------------------------- index
    async def index(self, v: WindowValidated) -> int:
        """Index the period's shards (each once) and join the labels held for them.
        Returns the number of examples indexed now."""
        m = self.by_stream.get(v.stream)
        if m is None:
            return 0
        end_ms = _ms(v.window_end)
        n = 0
        for member in v.members:
            if await self.state.indexed(m.name, member.window_id):
                continue
            ids, carried = await asyncio.to_thread(self._ids, m, member.data_uri)
            await self.state.index(
                m.name, member.window_id, member.data_uri, end_ms, ids, len(carried), carried
            )
            n += len(ids)
            held = await self.state.pending_for(m.name, [x for x, _ in ids])
            if held:
                await self._join_held(m, held)
        return n

    def _ids(self, m: JoinModel, data_uri: str) -> tuple[list[tuple[str, int]], frozenset[int]]:
        """Every id that names a row of the shard (its business id and its write position),
        and the rows that carry their label in the window."""
        path = data_uri.removeprefix("file://")
        try:
            names = pq.ParquetFile(path).schema_arrow.names
            cols = [c for c in (m.id_field, *m.features) if c and c in names]
            t = pq.read_table(path, columns=cols)
            named = lb.business_ids(t, m.id_field, data_uri) if m.id_field else []
        except (OSError, ValueError, pa.ArrowException) as e:
            raise lb.LabelsUnreadable(f"shard {data_uri}: {e}") from e
        out = [(x, i) for i, x in enumerate(named) if x]
        offsets = lb.offset_ids(self.store, data_uri, t.num_rows)
        if offsets:
            out += [(x, i) for i, x in enumerate(offsets)]
        return out, frozenset(int(r) for r in np.flatnonzero(lb.carries_label(t, m.features)))

    async def _join_held(
        self,
        m: JoinModel,
        held: dict[str, list[dict[str, Any]]],
        outcomes: Counter[str] | None = None,
    ) -> None:
        items = []
        for x, entries in held.items():
            for entry in entries:
                rec = LabelRecord.model_validate(entry["record"])
                src = Source(entry["topic"], entry["partition"], entry["offset"], entry["payload"])
                items.append((x, _Item(rec, src, entry["values"])))
        locs = await self.state.locate(m.name, [x for x, _ in items])
        found = []
        for (_, item), loc in zip(items, locs, strict=True):
            if loc is not None:
                item.shard, item.row, item.carried = loc
                found.append(item)
        await self._settle(m, found, Counter() if outcomes is None else outcomes)
        await self.state.drop_pending(m.name, sorted({x for x, i in items if i.row >= 0}))

    # ------------------------------------------------------------------ join
    async def join(self, batch: list[tuple[LabelRecord, Source]]) -> Counter[str]:
        """Join a batch of label records; returns what became of them, by outcome."""
        outcomes: Counter[str] = Counter()
        per: dict[str, list[_Item]] = defaultdict(list)
        for rec, src in batch:
            m = self._model_of(rec)
            if m is None:
                await self._dead(
                    None, src, "unknown_model", self._unknown_model(rec), outcomes, rec.model
                )
                continue
            try:
                values = rec.values(m.features)
            except ValueError as e:
                await self._dead(m, src, "invalid_label", str(e), outcomes)
                continue
            per[m.name].append(_Item(rec, src, values))
        for name, items in per.items():
            await self._join_model(self.models[name], items, outcomes)
        return outcomes

    def _model_of(self, rec: LabelRecord) -> JoinModel | None:
        if rec.model is not None:
            return self.models.get(rec.model)
        return next(iter(self.models.values())) if len(self.models) == 1 else None

    def _unknown_model(self, rec: LabelRecord) -> str:
        if rec.model is not None:
            return f"label for model {rec.model!r}, which is not monitored"
        return (
            f"label {rec.example_id!r} names no model and {len(self.models)} are monitored: "
            "set its 'model'"
        )

    async def _join_model(self, m: JoinModel, items: list[_Item], outcomes: Counter[str]) -> None:
        newest = max((i.ms for i in items if i.ms is not None), default=None)
        locs = await self.state.locate(m.name, [i.rec.example_id for i in items])
        known, unknown = [], []
        for item, loc in zip(items, locs, strict=True):
            if loc is None:
                unknown.append(item)
            else:
                item.shard, item.row, item.carried = loc
                known.append(item)
        if unknown:
            clock = newest or 0
            await self.state.hold(
                m.name,
                [
                    (
                        i.rec.example_id,
                        orjson.dumps(
                            {
                                "record": i.rec.model_dump(mode="json"),
                                "values": i.values,
                                "topic": i.src.topic,
                                "partition": i.src.partition,
                                "offset": i.src.offset,
                                "payload": i.src.payload,
                                "src": f"{i.src.partition}:{i.src.offset}",
                            }
                        ),
                        f'"src":"{i.src.partition}:{i.src.offset}"',
                        i.ms if i.ms is not None else clock,
                    )
                    for i in unknown
                ],
            )
            # Their window may have been indexed between the look-up and the hold.
            again = await self.state.locate(m.name, [i.rec.example_id for i in unknown])
            late_found = []
            await self._advance(
                m, [i for i, loc in zip(unknown, again, strict=True) if loc is None]
            )
            for item, loc in zip(unknown, again, strict=True):
                if loc is None:
                    self._out(m.name, outcomes, "held")
                else:
                    item.shard, item.row, item.carried = loc
                    late_found.append(item)
            if late_found:
                # Join what is held for them, this batch's records with any held before.
                ids = sorted({i.rec.example_id for i in late_found})
                await self._join_held(m, await self.state.pending_for(m.name, ids), outcomes)
        await self._settle(m, known, outcomes)

    async def _settle(self, m: JoinModel, items: list[_Item], outcomes: Counter[str]) -> None:
        if not items:
            return
        shards = await self.state.shards(m.name, sorted({i.shard for i in items}))
        ok: list[_Item] = []
        for i in items:
            if i.carried:
                # Its label is in the window already: that one counts, this is not joined.
                self._out(m.name, outcomes, "in_window")
                continue
            end = int(shards.get(i.shard, {}).get("end_ms") or 0)
            late_by = (i.ms - end) / 1000 - m.horizon_s if i.ms is not None and end else 0
            if late_by > 0:
                await self._dead(
                    m,
                    i.src,
                    "late_label",
                    f"label of {i.rec.example_id} at {i.rec.event_time} is {late_by / 3600:.1f} h "
                    f"past the horizon ({m.horizon_s:g} s after its window's end)",
                    outcomes,
                )
            else:
                ok.append(i)
        claims = await self.state.claim(
            m.name,
            [(i.shard, i.row, orjson.dumps([i.src.partition, i.src.offset, i.values])) for i in ok],
        )
        # The labels' clock moves with the labels that join (a late or mistaken event time
        # must not mature windows early).
        await self._advance(m, ok)
        write: dict[str, list[_Item]] = defaultdict(list)
        for i, had in zip(ok, claims, strict=True):
            if had is None:
                write[i.shard].append(i)
                self._out(m.name, outcomes, "joined")
                continue
            p, o, values = orjson.loads(had)
            if (p, o) == (i.src.partition, i.src.offset):
                write[i.shard].append(i)  # a redelivery: its segment may not be written
                self._out(m.name, outcomes, "redelivered")
            elif values == i.values:
                self._out(m.name, outcomes, "duplicate")
            else:
                await self._dead(
                    m,
                    i.src,
                    "conflicting_label",
                    f"example {i.rec.example_id} already has the label {values} "
                    f"(from partition {p} offset {o}); this record says {i.values}",
                    outcomes,
                )
        for shard, got in write.items():
            data_uri = str(shards[shard]["data_uri"])
            got.sort(key=lambda i: (i.src.partition, i.src.offset))
            name = f"p{got[0].src.partition}-o{got[0].src.offset}"
            await asyncio.to_thread(
                lb.write_segment,
                self.store,
                data_uri,
                name,
                [
                    lb.Joined(
                        i.row, i.rec.example_id, i.ms, i.src.partition, i.src.offset, i.values
                    )
                    for i in got
                ],
            )
        if self.on_joined and write:
            await self.on_joined(m.name, set(write))

    async def _advance(self, m: JoinModel, items: list[_Item]) -> None:
        """Each labels partition's newest event time; the clock is the slowest one's."""
        newest: dict[int, int] = {}
        for i in items:
            if i.ms is not None:
                newest[i.src.partition] = max(newest.get(i.src.partition, i.ms), i.ms)
        for partition, ms in newest.items():
            await self.state.advance_clock(m.name, partition, ms)

    async def _dead(
        self,
        m: JoinModel | None,
        src: Source,
        reason: str,
        message: str,
        outcomes: Counter[str],
        model: str | None = None,
    ) -> None:
        await self.dead_letter(
            EventDeadLetter(
                id=f"edlq-monitor-{src.topic}-{src.partition}-{src.offset}",
                reason=reason,
                message=message,
                source=DlqSource(topic=src.topic, partition=src.partition, offset=src.offset),
                payload=src.payload,
                service="monitor",
                group_id=self.group_id,
            )
        )
        self._out(m.name if m else (model or ""), outcomes, reason)

    def _out(self, model: str, outcomes: Counter[str], outcome: str) -> None:
        outcomes[outcome] += 1
        self.count(model, outcome, 1)

    # ---------------------------------------------------------------- upkeep
    async def _rejoin(self, m: JoinModel) -> None:
        """Join held labels whose example is indexed: an index that stopped (a crash)
        after writing its ids and before joining what was held for them left them. (Joined
        labels leave the held set as it is read: one skipped now is met on the next run.)"""
        async for ids in self.state.pending_ids(m.name):
            found = await self.state.locate(m.name, ids)
            known = [x for x, loc in zip(ids, found, strict=True) if loc is not None]
            if known:
                await self._join_held(m, await self.state.pending_for(m.name, known))

    async def expire(self, only: Collection[str] | None = None) -> int:
        """Dead-letter held labels whose example never came: windows ``early_tolerance_s``
        newer than the label have been indexed. Returns how many. ``only``: the models
        this replica leads (one replica gives up on a model's labels)."""
        n = 0
        for m in self.models.values():
            if only is not None and m.name not in only:
                continue
            await self._rejoin(m)
            wm = await self.state.watermark(m.name)
            if wm is None:
                continue
            stale = await self.state.expired(m.name, wm - int(m.early_tolerance_s * 1000))
            # One whose example was indexed meanwhile (or by an index that stopped before
            # joining what was held) is joined now, not given up on.
            found = await self.state.locate(m.name, list(stale))
            known = {x: e for (x, e), loc in zip(stale.items(), found, strict=True) if loc}
            if known:
                await self._join_held(m, known)
            stale = {x: e for x, e in stale.items() if x not in known}
            outcomes: Counter[str] = Counter()
            for x, entries in stale.items():
                for entry in entries:
                    src = Source(
                        str(entry.get("topic", "")),
                        int(entry.get("partition", -1)),
                        int(entry.get("offset", -1)),
                        str(entry.get("payload", "")),
                    )
                    await self._dead(
                        m,
                        src,
                        "unknown_example",
                        f"no example {x!r} of model {m.name!r} arrived in the windows up to "
                        f"{m.early_tolerance_s:g} s after its label",
                        outcomes,
                    )
            await self.state.drop_pending(m.name, list(stale))
            n += sum(len(e) for e in stale.values())
        return n
