"""The validator core: each WindowClosed profiled on its own (``scope: "window"``), and
each event-time period judged once on all its partitions' windows (``scope: "period"``,
the verdict the trigger acts on; see ``periods.py``).

No Kafka and no HTTP: the adapter hands events in and publishes what comes
back. Heavy work (shard read, TFDV) runs in a worker thread so the service's
event loop keeps answering health checks and scrapes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
from redis.asyncio import Redis
from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

from services.validator import checks
from services.validator import periods as per
from services.validator.errors import ShardUnreadable, UnknownWindow
from services.validator.index import WindowIndex, WindowRef
from services.validator.metrics import ValidatorMetrics
from services.validator.schemas import SchemaStore
from shared.artifacts import ArtifactStore
from shared.events import Distance, MemberWindow, PartitionIdle, WindowClosed, WindowValidated
from shared.ids import stable_id
from shared.model_fields import ValidationFields
from shared.shard import iter_shards
from shared.stats import dataset, statistics_beam, statistics_streamed

log = logging.getLogger(__name__)
# The log end offset of each partition of a topic (its partitions are the keys).
EndOffsets = Callable[[str], Awaitable[dict[int, int]]]


_V = ValidationFields()


@dataclass(frozen=True)
class ValidatorConfig:
    min_examples: int = _V.min_examples  # the settings' defaults (shared/model_fields.py)
    model: str = "default"
    baseline_window: str = _V.baseline_window
    environment: str = _V.environment
    defaults: checks.Defaults = field(default_factory=checks.Defaults)
    policy: checks.AnomalyPolicy = field(
        default_factory=lambda: checks.AnomalyPolicy(frozenset(_V.blocking_anomalies))
    )
    stats_runner: str = "inprocess"
    beam_runner: str = "DirectRunner"
    beam_options: tuple[str, ...] = ()
    # A period is judged when every partition moved past it, or this long after its first
    # window arrived (a partition that fell silent must not stall the loop).
    period_grace_s: float = _V.period_grace_s
    # Rows TFDV takes at a time: a window's statistics are merged batch by batch.
    stats_batch_rows: int = _V.stats_batch_rows
    max_group_periods: int = _V.max_group_periods


def _ms(ev: WindowClosed) -> tuple[int, int]:
    return int(ev.start.timestamp() * 1000), int(ev.end.timestamp() * 1000)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class Validator:
    def __init__(
        self,
        *,
        store: ArtifactStore,
        schemas: SchemaStore,
        index: WindowIndex,
        metrics: ValidatorMetrics,
        config: ValidatorConfig,
        redis: Redis | None = None,
        end_offsets: EndOffsets | None = None,
        per_stream: Mapping[str, ValidatorConfig] | None = None,
    ) -> None:
        self.store = store
        self.schemas = schemas
        self.index = index
        self.metrics = metrics
        self.config = config
        # A models file gives each stream its own thresholds, policy and model.
        self.per_stream = dict(per_stream or {})
        self.redis = redis
        self.end_offsets = end_offsets
        self._book_lock = asyncio.Lock()

    def cfg(self, stream: str) -> ValidatorConfig:
        return self.per_stream.get(stream, self.config)

    # ----------------------------------------------------------- layout
    def dir(self, stream: str, window_id: str) -> str:
        return self.store.uri("validations", stream, window_id)

    def result_uri(self, stream: str, window_id: str) -> str:
        return f"{self.dir(stream, window_id)}/validated.json"

    def load_result(self, stream: str, window_id: str) -> WindowValidated | None:
        uri = self.result_uri(stream, window_id)
        if not self.store.exists(uri):
            return None
        return WindowValidated.model_validate_json(self.store.read_bytes(uri))

    def load_stats(self, uri: str) -> statistics_pb2.DatasetFeatureStatisticsList:
        return statistics_pb2.DatasetFeatureStatisticsList.FromString(self.store.read_bytes(uri))

    # ------------------------------------------------------------ entry
    async def handle(self, ev: WindowClosed) -> WindowValidated:
        """Validate a window; a redelivered window returns its stored result unchanged."""
        done = self.load_result(ev.stream, ev.window_id)
        if done is not None:
            self.metrics.duplicates.inc()
            # The result is written before the window is indexed: an outage or crash
            # between the two leaves a result the index does not know. Index it now.
            if await self.index.get(ev.window_id) is None:
                start_ms, end_ms = _ms(ev)
                await self.index.add(
                    WindowRef(
                        ev.window_id,
                        ev.stream,
                        start_ms,
                        end_ms,
                        ev.data_uri,
                        done.stats_uri,
                        ev.example_count,
                    )
                )
            return done
        t0 = time.perf_counter()
        cfg = self.cfg(ev.stream)
        stats = await asyncio.to_thread(self._window_stats, ev)
        schema = await asyncio.to_thread(self.schemas.ensure, ev.stream, stats)
        anomalies = await asyncio.to_thread(
            checks.find_anomalies, stats, schema, cfg.policy, cfg.environment
        )
        start_ms, end_ms = _ms(ev)
        stats_uri = f"{self.dir(ev.stream, ev.window_id)}/stats.pb"
        ref = WindowRef(
            ev.window_id, ev.stream, start_ms, end_ms, ev.data_uri, stats_uri, ev.example_count
        )
        drift_refs = await self.index.predecessors(ev.stream, start_ms)
        skew_refs, skew_name = await self._skew_baseline(ev.stream, ev.window_id)
        drift, drift_id = await self._distances(stats, drift_refs, schema, "drift", ev.stream)
        skew, skew_id = await self._distances(stats, skew_refs, schema, "skew", ev.stream)
        features = checks.merge_features(drift, skew)
        result = WindowValidated(
            id=stable_id("val", ev.window_id),
            window_id=ev.window_id,
            stream=ev.stream,
            stats_uri=stats_uri,
            verdict=checks.verdict(ev.example_count, cfg.min_examples, anomalies, features),
            example_count=ev.example_count,
            features=features,
            anomalies=anomalies,
            drift_baseline=drift_id,
            skew_baseline=skew_name if skew_id else None,
            window_start=ev.start,
            window_end=ev.end,
            data_uri=ev.data_uri,
        )
        self._write_artifacts(ev.stream, ev.window_id, result, stats)
        await self.index.add(ref)
        self._observe(result, time.perf_counter() - t0)
        return result

    # ------------------------------------------------------------ inner
    def _window_stats(self, ev: WindowClosed) -> statistics_pb2.DatasetFeatureStatisticsList:
        if self.config.stats_runner == "beam":
            out = f"{self.dir(ev.stream, ev.window_id)}/stats.beam.pb"
            return statistics_beam(
                [ev.data_uri], out, self.config.beam_runner, self.config.beam_options
            )
        try:
            stats, rows = statistics_streamed(
                iter_shards([ev.data_uri], self.config.stats_batch_rows)
            )
        except (OSError, pa.ArrowInvalid) as e:
            raise ShardUnreadable(f"window {ev.window_id}: cannot read {ev.data_uri}: {e}") from e
        self.metrics.rows.inc(rows)
        return stats

    async def _skew_baseline(self, stream: str, window_id: str) -> tuple[list[WindowRef], str]:
        cfg = self.cfg(stream)
        serving = await self.index.serving_windows(cfg.model)
        if serving:
            refs = [r for r in [await self.index.get(w) for w in serving] if r is not None]
            return refs, f"serving:{cfg.model}"
        if cfg.baseline_window:
            ref = await self.index.get(cfg.baseline_window)
            return ([ref] if ref else []), f"window:{cfg.baseline_window}"
        first = await self.index.first(stream)
        return first, "first-window"

    async def _distances(
        self,
        stats: statistics_pb2.DatasetFeatureStatisticsList,
        refs: list[WindowRef],
        schema: schema_pb2.Schema,
        kind: checks.Kind,
        stream: str,
    ) -> tuple[dict[str, Distance], str | None]:
        if not refs:
            return {}, None
        base = await asyncio.to_thread(self._baseline_stats, refs, stream)
        ids = sorted(r.window_id for r in refs)
        baseline_id = ids[0] if len(ids) == 1 else stable_id("base", *ids)
        return (
            checks.measure(
                dataset(stats), dataset(base), schema, kind, baseline_id, self.cfg(stream).defaults
            ),
            baseline_id,
        )

    def _baseline_stats(
        self, refs: list[WindowRef], stream: str
    ) -> statistics_pb2.DatasetFeatureStatisticsList:
        """One window: its stored statistics. Several: statistics of their union, cached."""
        if len(refs) == 1:
            return self.load_stats(refs[0].stats_uri)
        ids = sorted(r.window_id for r in refs)
        uri = self.store.uri("validations", stream, "_baselines", f"{stable_id('base', *ids)}.pb")
        if self.store.exists(uri):
            return self.load_stats(uri)
        ordered = sorted(refs, key=lambda r: r.window_id)
        uris = [r.data_uri for r in ordered]
        stats, _ = statistics_streamed(iter_shards(uris, self.config.stats_batch_rows))
        self.store.write_bytes(uri, stats.SerializeToString())
        return stats

    def _write_artifacts(
        self,
        stream: str,
        window_id: str,
        result: WindowValidated,
        stats: statistics_pb2.DatasetFeatureStatisticsList,
    ) -> None:
        d = self.dir(stream, window_id)
        self.store.write_bytes(f"{d}/stats.pb", stats.SerializeToString())
        self.store.write_bytes(
            f"{d}/anomalies.json",
            orjson.dumps([a.model_dump() for a in result.anomalies]),
        )
        self.store.write_bytes(
            f"{d}/drift.json",
            orjson.dumps(
                {
                    "window_id": window_id,
                    "drift_baseline": result.drift_baseline,
                    "skew_baseline": result.skew_baseline,
                    "features": [f.model_dump(mode="json") for f in result.features],
                }
            ),
        )
        # Last: its presence means the window is done (the idempotency marker).
        self.store.write_bytes(self.result_uri(stream, window_id), result.to_bytes())

    def _observe(self, r: WindowValidated, seconds: float) -> None:
        self.metrics.seconds.observe(seconds)
        self.metrics.windows.labels(r.verdict).inc()
        for a in r.anomalies:
            self.metrics.anomalies.labels(a.severity).inc()
        for f in r.features:
            for kind, d in (("drift", f.drift), ("skew", f.skew)):
                if d is not None and d.value is not None:
                    self.metrics.distance.labels(f.name, d.measure, kind).set(d.value)
                    self.metrics.threshold.labels(f.name, d.measure, kind).set(d.threshold)
                    streak = self.metrics.crossed_streak.labels(f.name, d.measure, kind)
                    if d.crossed:
                        streak.inc()
                    else:
                        streak.set(0)
        log.info(
            "window validated",
            extra={"window_id": r.window_id, "verdict": r.verdict, "seconds": round(seconds, 3)},
        )

    # ----------------------------------------------------------- periods
    def _book_key(self, stream: str) -> str:
        return f"ctrain:validator:{stream}:periods"

    async def _load_book(self, stream: str) -> per.Book:
        assert self.redis is not None, "periods need Redis"
        raw = await self.redis.get(self._book_key(stream))
        return per.Book.from_json(orjson.loads(raw)) if raw else per.Book()

    async def _partitions(self, topics: list[str]) -> tuple[list[str], dict[str, int] | None]:
        """Every source partition ("topic:partition") and its log end offset now."""
        if self.end_offsets is None:
            return [f"{t}:0" for t in sorted(topics)], None
        ends: dict[str, int] = {}
        for topic in sorted(topics):
            for p, end in (await self.end_offsets(topic)).items():
                ends[f"{topic}:{p}"] = end
        return sorted(ends), ends

    async def streams(self) -> list[str]:
        assert self.redis is not None
        names: Any = await self.redis.smembers("ctrain:validator:streams")
        return sorted(n.decode() if isinstance(n, bytes) else n for n in names or [])

    async def assemble(
        self, stream: str, ev: WindowClosed | PartitionIdle | None, now: float
    ) -> list[WindowValidated]:
        """Add a validated window to its period; judge every period now complete.

        Returns the period verdicts still to publish (an outbox kept in Redis, so a
        crash between judging and publishing republishes the same ids); call
        :meth:`sent` once they are out.
        """
        assert self.redis is not None, "periods need Redis"
        async with self._book_lock:
            book = await self._load_book(stream)
            outbox = list(book.outbox)
            raw_topics: Any = await self.redis.smembers(f"ctrain:validator:{stream}:topics")
            topics = {t.decode() if isinstance(t, bytes) else t for t in raw_topics or []}
            if ev is not None:
                seen = (
                    {ev.topic} if isinstance(ev, PartitionIdle) else {o.topic for o in ev.offsets}
                )
                if seen - topics:
                    await self.redis.sadd(f"ctrain:validator:{stream}:topics", *(seen - topics))
                    topics |= seen
                await self.redis.sadd("ctrain:validator:streams", stream)
            if isinstance(ev, PartitionIdle):
                book.idle[f"{ev.topic}:{ev.partition}"] = ev.next_offset
            elif ev is not None:
                start_ms, end_ms = _ms(ev)
                if not per.add(
                    book,
                    ev.window_id,
                    start_ms,
                    end_ms,
                    ev.example_count,
                    [f"{o.topic}:{o.partition}" for o in ev.offsets],
                    ev.period_ms is not None,
                    now,
                    ev.close_reason != "count",
                ):
                    amended = self._amend(book, stream, ev, start_ms, end_ms)
                    if amended is not None:
                        # Its period was judged without it (its partition was silent past
                        # the grace time): judged again with it, against its predecessor.
                        self.metrics.late_windows.inc()
                        log.warning(
                            "window arrived after its period was judged: judged again with it",
                            extra={"window_id": ev.window_id, "period": amended.unit_id},
                        )
                        await self._judge_unit(stream, amended, [])
                        outbox.append(amended.unit_id)
            partitions, ends = await self._partitions(sorted(topics))
            cfg = self.cfg(stream)
            grace = cfg.period_grace_s
            for period in per.complete(book, partitions, now, grace, ends):
                prev_last = list(book.last)
                for unit in per.judge(
                    book,
                    stream,
                    period,
                    partitions,
                    cfg.min_examples,
                    cfg.max_group_periods,
                    ends,
                ):
                    await self._judge_unit(stream, unit, prev_last)
                    outbox.append(unit.unit_id)
            book.outbox = outbox
            await self.redis.set(self._book_key(stream), orjson.dumps(book.to_json()))
        results = [self.load_result(stream, uid) for uid in outbox]
        return [r for r in results if r is not None]

    def _amend(
        self, book: per.Book, stream: str, ev: WindowClosed, start_ms: int, end_ms: int
    ) -> per.Unit | None:
        """The judged period of a late window, again with the window in it."""
        key = per.period_key(start_ms, end_ms, ev.period_ms is not None, ev.window_id)
        judged = book.judged.get(key)
        prev = self.load_result(stream, judged) if judged else None
        if prev is None:
            return None  # judged so long ago its verdict left the book
        return per.amend(
            book,
            stream,
            ev.window_id,
            start_ms,
            end_ms,
            ev.period_ms is not None,
            [m.window_id for m in prev.members],
            prev.example_count,
            ev.example_count,
        )

    async def sent(self, stream: str, ids: list[str]) -> None:
        async with self._book_lock:
            book = await self._load_book(stream)
            book.outbox = [u for u in book.outbox if u not in set(ids)]
            assert self.redis is not None
            await self.redis.set(self._book_key(stream), orjson.dumps(book.to_json()))

    async def _judge_unit(self, stream: str, unit: per.Unit, prev_last: list[str]) -> None:
        if self.load_result(stream, unit.unit_id) is not None:
            # Judged before a crash: the stored verdict stands (its listing may not).
            await self.index.add_period(stream, unit.unit_id, unit.start_ms)
            return
        refs = [r for r in [await self.index.get(m) for m in unit.members] if r is not None]
        if not refs:
            raise UnknownWindow(f"period {unit.unit_id}: none of its windows is indexed")
        cfg = self.cfg(stream)
        stats = await asyncio.to_thread(self._baseline_stats, refs, stream)
        schema = await asyncio.to_thread(self.schemas.ensure, stream, stats)
        anomalies = await asyncio.to_thread(
            checks.find_anomalies, stats, schema, cfg.policy, cfg.environment
        )
        last = [r for r in [await self.index.get(m) for m in prev_last] if r is not None]
        drift_refs = last or await self.index.predecessors(stream, unit.start_ms)
        drift_refs = [r for r in drift_refs if r.window_id not in set(unit.members)]
        skew_refs, skew_name = await self._skew_baseline(stream, unit.unit_id)
        drift, drift_id = await self._distances(stats, drift_refs, schema, "drift", stream)
        skew, skew_id = await self._distances(stats, skew_refs, schema, "skew", stream)
        features = checks.merge_features(drift, skew)
        result = WindowValidated(
            id=stable_id("val", unit.unit_id),
            window_id=unit.unit_id,
            stream=stream,
            stats_uri=f"{self.dir(stream, unit.unit_id)}/stats.pb",
            verdict=checks.verdict(unit.count, cfg.min_examples, anomalies, features),
            example_count=unit.count,
            features=features,
            anomalies=anomalies,
            drift_baseline=drift_id,
            skew_baseline=skew_name if skew_id else None,
            window_start=_dt(unit.start_ms),
            window_end=_dt(unit.end_ms),
            scope="period",
            members=[
                MemberWindow(
                    window_id=r.window_id, data_uri=r.data_uri, example_count=r.example_count
                )
                for r in sorted(refs, key=lambda r: r.window_id)
            ],
            complete=unit.complete,
        )
        self._write_artifacts(stream, unit.unit_id, result, stats)
        await self.index.add_period(stream, unit.unit_id, unit.start_ms)
        self.metrics.periods.labels(result.verdict).inc()
        log.info(
            "period judged",
            extra={
                "period": unit.unit_id,
                "verdict": result.verdict,
                "examples": unit.count,
                "windows": len(refs),
                "complete": unit.complete,
            },
        )
