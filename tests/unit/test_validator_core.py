"""The validator core on real taxi windows: redelivery, out-of-order arrival, small windows."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from prometheus_client import CollectorRegistry
from pyarrow import csv

from services.validator import checks
from services.validator.core import Validator, ValidatorConfig
from services.validator.index import WindowRef
from services.validator.metrics import ValidatorMetrics
from services.validator.schemas import SchemaStore
from shared.artifacts import ArtifactStore
from shared.events import OffsetRange, WindowClosed
from shared.schema import example_spec, load_schema
from shared.shard import ShardWriter, arrow_schema
from tests.conftest import TAXI_CSV, TAXI_SCHEMA

pytestmark = pytest.mark.unit


class MemoryIndex:
    def __init__(self) -> None:
        self.refs: dict[str, WindowRef] = {}
        self.serving: list[str] | None = None
        self.periods: dict[str, int] = {}

    async def add(self, ref: WindowRef) -> None:
        self.refs[ref.window_id] = ref

    async def get(self, window_id: str) -> WindowRef | None:
        return self.refs.get(window_id)

    async def _at(self, start: int) -> list[WindowRef]:
        return sorted(
            (r for r in self.refs.values() if r.start_ms == start), key=lambda r: r.window_id
        )

    async def predecessors(self, stream: str, start_ms: int) -> list[WindowRef]:
        earlier = [r.start_ms for r in self.refs.values() if r.start_ms < start_ms]
        return await self._at(max(earlier)) if earlier else []

    async def first(self, stream: str) -> list[WindowRef]:
        return await self._at(min(r.start_ms for r in self.refs.values())) if self.refs else []

    async def serving_windows(self, model: str) -> list[str] | None:
        return self.serving

    async def latest(self, stream: str, limit: int) -> list[WindowRef]:
        return sorted(self.refs.values(), key=lambda r: -r.start_ms)[:limit]

    async def add_period(self, stream: str, period_id: str, start_ms: int) -> None:
        self.periods[period_id] = start_ms


def quarter_windows(tmp: Path) -> list[WindowClosed]:
    """The taxi data cut into calendar quarters, written as ingest would."""
    spec = example_spec(load_schema(TAXI_SCHEMA))
    schema = arrow_schema(spec)
    table = csv.read_csv(TAXI_CSV, convert_options=csv.ConvertOptions(strings_can_be_null=True))
    table = table.select(schema.names).cast(schema)
    ts = table.column("trip_start_timestamp")
    out = []
    starts = [datetime(y, m, 1, tzinfo=UTC) for y in (2013, 2014) for m in (1, 4, 7, 10)]
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else datetime(2015, 1, 1, tzinfo=UTC)
        part = table.filter(
            pc.and_(pc.greater_equal(ts, int(start.timestamp())), pc.less(ts, int(end.timestamp())))
        )
        wid = f"win-q{k}"
        path = tmp / "windows" / "taxi" / wid / "data.parquet"
        path.parent.mkdir(parents=True)
        w = ShardWriter(schema, str(path))
        w.add(part.combine_chunks().to_batches()[0])
        sha = w.finish()
        out.append(
            WindowClosed(
                window_id=wid,
                stream="taxi",
                start=start,
                end=end,
                example_count=part.num_rows,
                offsets=[OffsetRange(topic="t", partition=0, first=0, last=part.num_rows - 1)],
                data_uri=str(path),
                sha256=sha,
            )
        )
    return out


def make_validator(tmp: Path, index: MemoryIndex, **cfg: object) -> Validator:
    store = ArtifactStore(str(tmp))
    return Validator(
        store=store,
        schemas=SchemaStore(store, str(TAXI_SCHEMA)),
        index=index,
        metrics=ValidatorMetrics(CollectorRegistry()),
        config=ValidatorConfig(
            **{
                "min_examples": 200,
                "policy": checks.AnomalyPolicy(
                    frozenset({"SCHEMA_MISSING_COLUMN", "UNEXPECTED_DATA_TYPE"})
                ),
                "defaults": checks.Defaults(ignore=frozenset({"trip_start_timestamp"})),
                **cfg,
            }  # type: ignore[arg-type]
        ),
    )


@pytest.fixture(scope="module")
def windows(tmp_path_factory: pytest.TempPathFactory) -> list[WindowClosed]:
    return quarter_windows(tmp_path_factory.mktemp("shards"))


def test_in_order_chain_redelivery_and_artifacts(
    tmp_path: Path, windows: list[WindowClosed]
) -> None:
    index = MemoryIndex()
    v = make_validator(tmp_path, index)
    results = [asyncio.run(v.handle(w)) for w in windows[:3]]
    first, second, third = results
    assert first.drift_baseline is None and first.skew_baseline is None
    assert second.drift_baseline == "win-q0" and third.drift_baseline == "win-q1"
    assert third.skew_baseline == "first-window"
    pt = {f.name: f for f in third.features}["payment_type"]
    assert pt.drift is not None and pt.drift.value is not None and pt.drift.measure == "linf"
    assert pt.drift.count == windows[2].example_count
    assert "trip_start_timestamp" not in {f.name for f in third.features}
    assert all(f.drift is not None for f in third.features)  # every feature, not only crossings
    d = Path(third.stats_uri).parent
    assert {p.name for p in d.iterdir()} >= {
        "stats.pb",
        "drift.json",
        "anomalies.json",
        "validated.json",
    }
    # Redelivery: same event back, nothing recomputed.
    again = asyncio.run(v.handle(windows[2]))
    assert again == third
    assert v.metrics.duplicates._value.get() == 1  # type: ignore[attr-defined]


def test_out_of_order_window_meets_its_true_predecessor(
    tmp_path: Path, windows: list[WindowClosed]
) -> None:
    index = MemoryIndex()
    v = make_validator(tmp_path, index)
    late_first = asyncio.run(v.handle(windows[3]))  # Q4 2013 arrives first
    assert late_first.drift_baseline is None
    q1 = asyncio.run(v.handle(windows[1]))
    q0 = asyncio.run(v.handle(windows[0]))
    q2 = asyncio.run(v.handle(windows[2]))
    assert q1.drift_baseline is None  # nothing earlier had arrived yet
    assert q0.drift_baseline is None
    assert q2.drift_baseline == "win-q1"  # the true predecessor, not the last arrival
    # The chain is not rewritten: Q4's stored result is unchanged.
    assert asyncio.run(v.handle(windows[3])) == late_first


def test_skew_against_the_serving_model_windows(
    tmp_path: Path, windows: list[WindowClosed]
) -> None:
    index = MemoryIndex()
    v = make_validator(tmp_path, index, model="taxi")
    for w in windows[:4]:
        asyncio.run(v.handle(w))
    index.serving = ["win-q0", "win-q1", "win-q2", "win-q3"]  # what trained the serving model
    r = asyncio.run(v.handle(windows[7]))  # Q4 2014
    assert r.skew_baseline == "serving:taxi"
    pt = {f.name: f for f in r.features}["payment_type"]
    assert pt.skew is not None and pt.skew.value is not None
    assert pt.skew.baseline_count == sum(w.example_count for w in windows[:4])


def test_small_window_is_insufficient_never_drift(
    tmp_path: Path, windows: list[WindowClosed]
) -> None:
    index = MemoryIndex()
    v = make_validator(tmp_path, index, min_examples=100_000)
    asyncio.run(v.handle(windows[0]))
    r = asyncio.run(v.handle(windows[7]))
    assert r.verdict == "insufficient_data"
    assert any(f.drift is not None for f in r.features)  # distances still measured


def test_unreadable_shard_is_not_retryable(tmp_path: Path, windows: list[WindowClosed]) -> None:
    from services.validator.errors import ShardUnreadable

    v = make_validator(tmp_path, MemoryIndex())
    broken = windows[0].model_copy(
        update={"window_id": "win-gone", "data_uri": str(tmp_path / "nope")}
    )
    with pytest.raises(ShardUnreadable) as e:
        asyncio.run(v.handle(broken))
    assert not e.value.retryable and "win-gone" in str(e.value)
    _ = pa  # pyarrow used by helpers above
