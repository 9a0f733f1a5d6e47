"""The validator core: one WindowClosed in, one WindowValidated out.

No Kafka and no HTTP: the adapter hands events in and publishes what comes
back. Heavy work (shard read, TFDV) runs in a worker thread so the service's
event loop keeps answering health checks and scrapes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import orjson
import pyarrow as pa
from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

from services.ingest.shard import read_shard
from services.validator import checks
from services.validator.errors import ShardUnreadable
from services.validator.index import WindowIndex, WindowRef
from services.validator.metrics import ValidatorMetrics
from services.validator.schemas import SchemaStore
from services.validator.stats import dataset, statistics_beam, statistics_in_memory
from shared.artifacts import ArtifactStore
from shared.events import Distance, WindowClosed, WindowValidated
from shared.ids import stable_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidatorConfig:
    min_examples: int = 200
    model: str = "default"
    baseline_window: str = ""
    environment: str = ""
    defaults: checks.Defaults = field(default_factory=checks.Defaults)
    policy: checks.AnomalyPolicy = field(
        default_factory=lambda: checks.AnomalyPolicy(frozenset({"SCHEMA_MISSING_COLUMN"}))
    )
    stats_runner: str = "inprocess"
    beam_runner: str = "DirectRunner"
    beam_options: tuple[str, ...] = ()


def _ms(ev: WindowClosed) -> tuple[int, int]:
    return int(ev.start.timestamp() * 1000), int(ev.end.timestamp() * 1000)


class Validator:
    def __init__(
        self,
        *,
        store: ArtifactStore,
        schemas: SchemaStore,
        index: WindowIndex,
        metrics: ValidatorMetrics,
        config: ValidatorConfig,
    ) -> None:
        self.store = store
        self.schemas = schemas
        self.index = index
        self.metrics = metrics
        self.config = config

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
            return done
        t0 = time.perf_counter()
        stats = await asyncio.to_thread(self._window_stats, ev)
        schema = await asyncio.to_thread(self.schemas.ensure, ev.stream, stats)
        anomalies = await asyncio.to_thread(
            checks.find_anomalies, stats, schema, self.config.policy, self.config.environment
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
            verdict=checks.verdict(ev.example_count, self.config.min_examples, anomalies, features),
            example_count=ev.example_count,
            features=features,
            anomalies=anomalies,
            drift_baseline=drift_id,
            skew_baseline=skew_name if skew_id else None,
            window_start=ev.start,
            window_end=ev.end,
            data_uri=ev.data_uri,
        )
        self._write_artifacts(ev, result, stats)
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
            table = read_shard(ev.data_uri)
        except (OSError, pa.ArrowInvalid) as e:
            raise ShardUnreadable(f"window {ev.window_id}: cannot read {ev.data_uri}: {e}") from e
        self.metrics.rows.inc(table.num_rows)
        return statistics_in_memory(table)

    async def _skew_baseline(self, stream: str, window_id: str) -> tuple[list[WindowRef], str]:
        serving = await self.index.serving_windows(self.config.model)
        if serving:
            refs = [r for r in [await self.index.get(w) for w in serving] if r is not None]
            return refs, f"serving:{self.config.model}"
        if self.config.baseline_window:
            ref = await self.index.get(self.config.baseline_window)
            return ([ref] if ref else []), f"window:{self.config.baseline_window}"
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
                dataset(stats), dataset(base), schema, kind, baseline_id, self.config.defaults
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
        table = pa.concat_tables([read_shard(r.data_uri) for r in refs], promote=True)
        stats = statistics_in_memory(table)
        self.store.write_bytes(uri, stats.SerializeToString())
        return stats

    def _write_artifacts(
        self,
        ev: WindowClosed,
        result: WindowValidated,
        stats: statistics_pb2.DatasetFeatureStatisticsList,
    ) -> None:
        d = self.dir(ev.stream, ev.window_id)
        self.store.write_bytes(f"{d}/stats.pb", stats.SerializeToString())
        self.store.write_bytes(
            f"{d}/anomalies.json",
            orjson.dumps([a.model_dump() for a in result.anomalies]),
        )
        self.store.write_bytes(
            f"{d}/drift.json",
            orjson.dumps(
                {
                    "window_id": ev.window_id,
                    "drift_baseline": result.drift_baseline,
                    "skew_baseline": result.skew_baseline,
                    "features": [f.model_dump(mode="json") for f in result.features],
                }
            ),
        )
        # Last: its presence means the window is done (the idempotency marker).
        self.store.write_bytes(self.result_uri(ev.stream, ev.window_id), result.to_bytes())

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
