"""Inferred, versioned schemas and their CLI; environments; the Beam path equals in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from pyarrow import csv
from tensorflow_metadata.proto.v0 import schema_pb2

from services.validator import checks
from services.validator.schemas import SchemaStore
from shared.artifacts import ArtifactStore
from shared.schema import load_schema
from shared.stats import dataset, feature_stats, statistics_beam, statistics_in_memory
from tests.conftest import ROOT, TAXI_CSV, TAXI_SCHEMA

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def taxi() -> pa.Table:
    return csv.read_csv(TAXI_CSV, convert_options=csv.ConvertOptions(strings_can_be_null=True))


def test_inferred_schema_is_versioned_and_round_trips_through_the_cli(
    tmp_path: Path, taxi: pa.Table
) -> None:
    store = ArtifactStore(str(tmp_path))
    schemas = SchemaStore(store)
    stats = statistics_in_memory(taxi.slice(0, 2000))
    schema = schemas.ensure("s", stats)
    assert schemas.current_version("s") == 1
    assert {f.name for f in schema.feature} >= {"fare", "payment_type"}
    assert schemas.ensure("s", stats) == schema  # not re-inferred
    env = {**os.environ, "CTRAIN_ARTIFACT_ROOT": str(tmp_path)}
    out = tmp_path / "review.pbtxt"
    cli = [sys.executable, "-m", "ctrain.cli", "schema"]
    subprocess.run([*cli, "export", "--stream", "s", "-o", str(out)], env=env, check=True, cwd=ROOT)
    reviewed = load_schema(out)
    assert reviewed == schema
    subprocess.run(
        [*cli, "import", str(TAXI_SCHEMA), "--stream", "s"], env=env, check=True, cwd=ROOT
    )
    assert schemas.current_version("s") == 2
    assert schemas.load("s") == load_schema(TAXI_SCHEMA)


def test_serving_environment_accepts_a_window_without_the_label(taxi: pa.Table) -> None:
    schema = load_schema(TAXI_SCHEMA)
    schema.default_environment.extend(["TRAINING", "SERVING"])
    for f in schema.feature:
        if f.name == "tips":
            f.not_in_environment.append("SERVING")
    serving = statistics_in_memory(taxi.drop(["tips"]))
    policy = checks.AnomalyPolicy(frozenset({"SCHEMA_MISSING_COLUMN"}))
    training_view = {
        (a.feature, a.code) for a in checks.find_anomalies(serving, schema, policy, "TRAINING")
    }
    serving_view = {
        (a.feature, a.code) for a in checks.find_anomalies(serving, schema, policy, "SERVING")
    }
    assert ("tips", "SCHEMA_MISSING_COLUMN") in training_view
    assert not any(f == "tips" for f, _ in serving_view)


@pytest.mark.slow
def test_beam_path_computes_the_same_statistics(tmp_path: Path, taxi: pa.Table) -> None:
    import pyarrow.parquet as pq

    part = taxi.slice(0, 3000)
    shard = tmp_path / "data.parquet"
    pq.write_table(part, shard)
    beam = dataset(statistics_beam([str(shard)], str(tmp_path / "stats.pb")))
    mem = dataset(statistics_in_memory(part))
    assert beam.num_examples == mem.num_examples == 3000
    fb, fm = feature_stats(beam), feature_stats(mem)
    assert set(fb) == set(fm)
    for name in ("fare", "trip_miles"):
        assert fb[name].num_stats.mean == pytest.approx(fm[name].num_stats.mean, rel=1e-9)
    assert {b.label for b in fb["payment_type"].string_stats.rank_histogram.buckets} == {
        b.label for b in fm["payment_type"].string_stats.rank_histogram.buckets
    }
    _ = schema_pb2
