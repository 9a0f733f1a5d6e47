"""The statistics page rendered from real TFDV statistics of taxi trips, with no CDN."""

from __future__ import annotations

import re

import pytest
from pyarrow import csv

from services.validator.statsview import render
from tests.conftest import TAXI_CSV

pytestmark = pytest.mark.unit


def stats_of(rows: slice) -> object:
    import tensorflow_data_validation as tfdv

    df = csv.read_csv(TAXI_CSV).to_pandas().iloc[rows]
    return tfdv.generate_statistics_from_dataframe(df)


def test_window_beside_its_baseline() -> None:
    window, base = stats_of(slice(0, 2000)), stats_of(slice(6000, 9000))
    page = render(window, base, "win-1", "drift baseline win-0", title="win-1 vs win-0")
    assert page.startswith("<!doctype html>") and "<script" not in page
    assert not re.search(r"(src|href)=", page) and "http" not in page  # nothing fetched
    assert "win-1 (2,000 examples)" in page and "drift baseline win-0 (3,000 examples)" in page
    # A numeric feature: summaries of both, a histogram of each on one axis.
    fare = page.split("<h2>fare</h2>")[1].split("</section>")[0]
    assert "<th class='k'>mean</th>" in fare and fare.count("<svg") == 1
    assert fare.count('fill="#2f6db5"') > 3 and fare.count('fill="#e07b39"') > 3
    # A categorical one: the top categories with both shares.
    pay = page.split("<h2>payment_type</h2>")[1].split("</section>")[0]
    assert ">Cash</text>" in pay and re.search(r"\d+\.\d / \d+\.\d %", pay)
    company = page.split("<h2>company</h2>")[1].split("</section>")[0]
    assert ">(empty)</text>" in company and "…</text>" in company  # long names shortened


def test_a_window_alone_and_names_are_escaped() -> None:
    from tensorflow_metadata.proto.v0 import statistics_pb2

    s = statistics_pb2.DatasetFeatureStatisticsList()
    d = s.datasets.add(num_examples=3)
    f = d.features.add()
    f.path.step.append("<img>")
    f.string_stats.common_stats.num_non_missing = 2
    f.string_stats.common_stats.num_missing = 1
    f.string_stats.top_values.add(value="<b>", frequency=2)
    page = render(s, None, "w")
    assert "<img>" not in page and "&lt;img&gt;" in page and "&lt;b&gt;" in page
    assert "33.3 %" in page and "baseline" not in page
