"""TFDV statistics of a window: pure functions over files and Arrow tables.

The in-process path feeds Arrow record batches straight to TFDV's in-memory
generators (no pandas round trip, which would turn nullable int columns into
floats). The Beam path runs the same generators as a pipeline for windows too
large for one process; the runner and its options are settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pyarrow as pa
from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2


def stats_options(schema: schema_pb2.Schema | None = None) -> object:
    import tensorflow_data_validation as tfdv

    # The schema only steers types and categorical handling; no schema-derived
    # semantic domains are inferred (that would add seconds of work per window).
    return tfdv.StatsOptions(schema=schema) if schema is not None else tfdv.StatsOptions()


def canonical(table: pa.Table) -> pa.RecordBatch:
    """Flat nullable columns -> TFDV's list-typed, null-as-missing record batch."""
    from tfx_bsl.arrow import table_util

    batch = table.combine_chunks().to_batches()
    rb = batch[0] if batch else pa.RecordBatch.from_pylist([], schema=table.schema)
    return table_util.CanonicalizeRecordBatch(rb)


def statistics_in_memory(
    table: pa.Table, schema: schema_pb2.Schema | None = None
) -> statistics_pb2.DatasetFeatureStatisticsList:
    from tensorflow_data_validation.statistics import stats_impl

    return stats_impl.generate_statistics_in_memory(canonical(table), stats_options(schema))


def statistics_streamed(
    tables: Iterable[pa.Table], schema: schema_pb2.Schema | None = None
) -> tuple[statistics_pb2.DatasetFeatureStatisticsList, int]:
    """The statistics of all ``tables`` together, and their row count, built one table at
    a time: TFDV's combiners take each batch into their accumulators (bounded sketches),
    as its Beam pipeline does, so memory follows the batch, not the window. One table
    gives exactly what :func:`statistics_in_memory` gives."""
    from tensorflow_data_validation.statistics import stats_impl

    options = stats_options(schema)
    generators = stats_impl.get_generators(options, in_memory=True)
    accumulators = [g.create_accumulator() for g in generators]
    rows = 0
    for table in tables:
        rows += table.num_rows
        batch = canonical(table)
        pairs = zip(generators, accumulators, strict=True)
        accumulators = [g.add_input(a, batch) for g, a in pairs]
    return stats_impl.extract_statistics_output(accumulators, generators), rows


def statistics_beam(
    data_uris: Sequence[str],
    output_uri: str,
    runner: str = "DirectRunner",
    options: Sequence[str] = (),
    schema: schema_pb2.Schema | None = None,
) -> statistics_pb2.DatasetFeatureStatisticsList:
    """The same statistics as a Beam pipeline (DirectRunner here; Dataflow/Flink/Spark there)."""
    import apache_beam as beam
    import tensorflow_data_validation as tfdv
    from apache_beam.options.pipeline_options import PipelineOptions
    from tfx_bsl.arrow import table_util
    from tfx_bsl.tfxio.parquet_tfxio import ParquetTFXIO

    opts = PipelineOptions([f"--runner={runner}", *options])
    with beam.Pipeline(options=opts) as p:
        _ = (
            p
            | ParquetTFXIO(file_pattern=list(data_uris)).BeamSource(batch_size=10_000)
            | beam.Map(table_util.CanonicalizeRecordBatch)
            | tfdv.GenerateStatistics(stats_options(schema))
            | tfdv.WriteStatisticsToBinaryFile(output_uri)
        )
    return tfdv.load_stats_binary(output_uri)


def dataset(
    stats: statistics_pb2.DatasetFeatureStatisticsList,
) -> statistics_pb2.DatasetFeatureStatistics:
    return stats.datasets[0] if stats.datasets else statistics_pb2.DatasetFeatureStatistics()


def feature_stats(
    ds: statistics_pb2.DatasetFeatureStatistics,
) -> dict[str, statistics_pb2.FeatureNameStatistics]:
    out = {}
    for f in ds.features:
        name = ".".join(f.path.step) if f.path.step else f.name
        out[name] = f
    return out
