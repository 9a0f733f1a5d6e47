"""A window's statistics built batch by batch (the validator's bounded-memory path)
against TFDV's in-memory statistics of the whole table."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from pyarrow import csv

from shared.schema import example_spec, load_schema
from shared.shard import ShardWriter, arrow_schema, iter_shards
from shared.stats import dataset, feature_stats, statistics_in_memory, statistics_streamed
from tests.conftest import TAXI_CSV, TAXI_SCHEMA

pytestmark = pytest.mark.unit


def taxi() -> pa.Table:
    schema = arrow_schema(example_spec(load_schema(TAXI_SCHEMA)))
    t = csv.read_csv(TAXI_CSV, convert_options=csv.ConvertOptions(strings_can_be_null=True))
    return t.select(schema.names).cast(schema)


def shard(tmp_path: Path, table: pa.Table, name: str) -> str:
    path = tmp_path / name / "data.parquet"
    path.parent.mkdir()
    w = ShardWriter(table.schema, str(path))
    for b in table.to_batches(max_chunksize=1000):
        w.add(b)
    w.finish()
    return str(path)


def test_one_batch_is_exactly_the_in_memory_statistics(tmp_path: Path) -> None:
    table = taxi()
    streamed, rows = statistics_streamed(iter_shards([shard(tmp_path, table, "w")], 1 << 20))
    assert rows == table.num_rows
    assert streamed == statistics_in_memory(table)


def test_many_batches_and_shards_count_every_row_and_agree_on_the_moments(
    tmp_path: Path,
) -> None:
    table = taxi()
    half = table.num_rows // 2
    uris = [shard(tmp_path, table.slice(0, half), "a"), shard(tmp_path, table.slice(half), "b")]
    streamed, rows = statistics_streamed(iter_shards(uris, 1024))
    whole = statistics_in_memory(table)
    assert rows == table.num_rows == dataset(streamed).num_examples
    ours, theirs = feature_stats(dataset(streamed)), feature_stats(dataset(whole))
    assert set(ours) == set(theirs)
    for name, f in theirs.items():
        if f.HasField("num_stats"):
            got = ours[name].num_stats
            assert got.common_stats.num_non_missing == f.num_stats.common_stats.num_non_missing
            assert got.min == f.num_stats.min and got.max == f.num_stats.max, name
            assert got.mean == pytest.approx(f.num_stats.mean, rel=1e-9), name
        else:
            got_s = ours[name].string_stats
            assert got_s.unique == f.string_stats.unique, name
            assert [(v.value, v.frequency) for v in got_s.top_values] == [
                (v.value, v.frequency) for v in f.string_stats.top_values
            ], name
    # The same batches give the same bytes (a window rebuilt is judged the same).
    again, _ = statistics_streamed(iter_shards(uris, 1024))
    assert again.SerializeToString() == streamed.SerializeToString()
