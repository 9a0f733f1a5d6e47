"""Validator checks on real taxi data: distances equal TFDV, drift found, anomalies classified."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyarrow import csv
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2

from services.validator import checks
from shared.schema import load_schema
from shared.stats import dataset, feature_stats, statistics_in_memory
from tests.conftest import TAXI_CSV, TAXI_SCHEMA

pytestmark = pytest.mark.unit
Y2014 = 1388534400
NOV_2013 = (1383264000, 1385856000)


@pytest.fixture(scope="module")
def taxi() -> pa.Table:
    return csv.read_csv(TAXI_CSV, convert_options=csv.ConvertOptions(strings_can_be_null=True))


@pytest.fixture(scope="module")
def years(taxi: pa.Table) -> tuple[pa.Table, pa.Table]:
    ts = taxi.column("trip_start_timestamp")
    return taxi.filter(pc.less(ts, Y2014)), taxi.filter(pc.greater_equal(ts, Y2014))


@pytest.fixture(scope="module")
def halves(taxi: pa.Table) -> tuple[pa.Table, pa.Table]:
    ts = taxi.column("trip_start_timestamp")
    month = taxi.filter(pc.and_(pc.greater_equal(ts, NOV_2013[0]), pc.less(ts, NOV_2013[1])))
    idx = np.random.default_rng(0).permutation(month.num_rows)
    h = month.num_rows // 2
    return month.take(pa.array(idx[:h])), month.take(pa.array(idx[h:]))


@pytest.fixture(scope="module")
def schema() -> schema_pb2.Schema:
    return load_schema(TAXI_SCHEMA)


def zero_threshold_schema(base: schema_pb2.Schema, source: int) -> schema_pb2.Schema:
    s = schema_pb2.Schema()
    s.CopyFrom(base)
    for f in s.feature:
        f.ClearField("drift_comparator")
        if f.type == schema_pb2.BYTES:
            f.drift_comparator.infinity_norm.threshold = 0.0
        else:
            f.drift_comparator.jensen_shannon_divergence.threshold = 0.0
            f.drift_comparator.jensen_shannon_divergence.source.type = source
    return s


@pytest.mark.parametrize("pair", ["years", "halves"])
@pytest.mark.parametrize("hist", ["quantiles", "standard"])
def test_our_distances_equal_tfdv(
    request: pytest.FixtureRequest, pair: str, hist: str, schema: schema_pb2.Schema
) -> None:
    import tensorflow_data_validation as tfdv

    prev, cur = request.getfixturevalue(pair)
    s_prev, s_cur = statistics_in_memory(prev), statistics_in_memory(cur)
    source = checks._SOURCES[hist]
    result = tfdv.validate_statistics(
        s_cur, zero_threshold_schema(schema, source), previous_statistics=s_prev
    )
    tfdv_values = {
        ".".join(d.path.step): m.value for d in result.drift_skew_info for m in d.drift_measurements
    }
    ours = checks.measure(
        dataset(s_cur),
        dataset(s_prev),
        schema,
        "drift",
        "prev",
        checks.Defaults(jsd_histogram=hist),
    )
    compared = 0
    for name, value in tfdv_values.items():
        assert ours[name].value is not None
        assert ours[name].value == pytest.approx(value, abs=1e-9), name
        compared += 1
    assert compared >= 15
    # TFDV reports nothing for a feature with no data on one side; neither do we.
    assert all(d.value is None for n, d in ours.items() if n not in tfdv_values)


def test_payment_type_drifts_between_2013_and_2014(
    years: tuple[pa.Table, pa.Table], schema: schema_pb2.Schema
) -> None:
    y13, y14 = years
    d = checks.measure(
        dataset(statistics_in_memory(y14)),
        dataset(statistics_in_memory(y13)),
        schema,
        "drift",
        "2013",
        checks.Defaults(),
    )
    pt = d["payment_type"]
    assert pt.measure == "linf"
    assert pt.value == pytest.approx(0.0691, abs=5e-4)
    assert pt.threshold == 0.06 and pt.crossed  # the schema's comparator, set below it
    assert pt.count == y14.num_rows and pt.baseline_count == y13.num_rows
    assert d["fare"].measure == "jensen_shannon" and d["fare"].value is not None


def test_random_halves_of_one_month_stay_under_defaults(
    halves: tuple[pa.Table, pa.Table], schema: schema_pb2.Schema
) -> None:
    a, b = halves
    d = checks.measure(
        dataset(statistics_in_memory(b)),
        dataset(statistics_in_memory(a)),
        schema,
        "drift",
        "half",
        checks.Defaults(),
    )
    crossed = {n: x.value for n, x in d.items() if x.crossed}
    assert crossed == {}
    assert d["payment_type"].value is not None and d["payment_type"].value < 0.06


POLICY = checks.AnomalyPolicy(
    frozenset({"SCHEMA_MISSING_COLUMN", "UNEXPECTED_DATA_TYPE", "DATA_MISSING"}), 0.1
)


def codes(anoms: list) -> dict[tuple[str, str], str]:  # type: ignore[type-arg]
    return {(a.feature, a.code): a.severity for a in anoms}


def test_missing_column_blocks(years: tuple[pa.Table, pa.Table], schema: schema_pb2.Schema) -> None:
    t = years[1].drop(["fare"])
    found = codes(checks.find_anomalies(statistics_in_memory(t), schema, POLICY))
    assert found[("fare", "SCHEMA_MISSING_COLUMN")] == "blocking"


def test_type_change_blocks(years: tuple[pa.Table, pa.Table], schema: schema_pb2.Schema) -> None:
    t = years[1]
    i = t.column_names.index("trip_start_hour")
    t = t.set_column(i, "trip_start_hour", pc.cast(t.column(i), pa.string()))
    found = codes(checks.find_anomalies(statistics_in_memory(t), schema, POLICY))
    assert found[("trip_start_hour", "UNEXPECTED_DATA_TYPE")] == "blocking"


def test_rare_new_category_warns_and_common_one_blocks(
    years: tuple[pa.Table, pa.Table], schema: schema_pb2.Schema
) -> None:
    t = years[1]
    i = t.column_names.index("payment_type")
    values = t.column(i).to_pylist()
    rare = t.set_column(i, "payment_type", pa.array(["Bitcoin", *values[1:]]))
    found = codes(checks.find_anomalies(statistics_in_memory(rare), schema, POLICY))
    assert found[("payment_type", "ENUM_TYPE_UNEXPECTED_STRING_VALUES")] == "warning"
    common = t.set_column(i, "payment_type", pa.array(["Bitcoin"] * len(values)))
    found = codes(checks.find_anomalies(statistics_in_memory(common), schema, POLICY))
    assert found[("payment_type", "ENUM_TYPE_UNEXPECTED_STRING_VALUES")] == "blocking"


def test_empty_window_is_anomalous_data_missing(
    years: tuple[pa.Table, pa.Table], schema: schema_pb2.Schema
) -> None:
    empty = years[1].slice(0, 0)
    anoms = checks.find_anomalies(statistics_in_memory(empty), schema, POLICY)
    assert codes(anoms)[("", "DATA_MISSING")] == "blocking"
    assert checks.verdict(0, 200, anoms, []) == "insufficient_data"


def test_verdict_order() -> None:
    from shared.events import Anomaly, Distance, FeatureDistances

    crossed = Distance(measure="linf", value=0.2, threshold=0.1, crossed=True, baseline="b")
    calm = Distance(measure="linf", value=0.01, threshold=0.1, crossed=False, baseline="b")
    warn = Anomaly(feature="x", code="C", severity="warning", description="")
    block = Anomaly(feature="x", code="C", severity="blocking", description="")
    drift = [FeatureDistances(name="f", drift=crossed, skew=calm)]
    skew = [FeatureDistances(name="f", drift=calm, skew=crossed)]
    assert checks.verdict(10, 200, [], drift) == "insufficient_data"
    assert checks.verdict(500, 200, [block], drift) == "anomalous"
    assert checks.verdict(500, 200, [warn], drift) == "drift"
    assert checks.verdict(500, 200, [], skew) == "skew"
    assert checks.verdict(500, 200, [warn], [FeatureDistances(name="f", drift=calm)]) == "ok"


def test_feature_stats_keys_are_feature_names(years: tuple[pa.Table, pa.Table]) -> None:
    fs = feature_stats(dataset(statistics_in_memory(years[0])))
    assert "payment_type" in fs and "fare" in fs
    assert isinstance(anomalies_pb2.Anomalies(), anomalies_pb2.Anomalies)
