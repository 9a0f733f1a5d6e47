"""What every training step shares: the SavedModel's names, the in-process Beam
options, the steps' errors, the model module and the data readers and writers."""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from shared import contract

if TYPE_CHECKING:
    import pyarrow as pa


SERVING_SIGNATURE = contract.SERVING_SIGNATURE
TRANSFORM_SIGNATURE = contract.TRANSFORM_SIGNATURE
SERVING_INPUT = contract.SERVING_INPUT
TFMA_MODEL_TYPE = "tf_generic"  # tfma.constants.TF_GENERIC, without importing TFMA here
CANDIDATE = "candidate"
BASELINE = "baseline"
# In-process Beam: the data of one training run fits a worker; one worker
# avoids a second TF runtime per process on a 2-core box.
# Beam's DirectRunner now first tries Prism, which downloads a binary (no network here)
# and leaves gRPC threads that crash the process at exit; the in-process FnApiRunner
# is what DirectRunner ran before and needs neither.
BEAM_ARGS = (
    "--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner",
    "--direct_num_workers=1",
    "--direct_running_mode=in_memory",
)


def beam_run(beam_args: Sequence[str] = ()) -> tuple[Any, contextlib.AbstractContextManager[None]]:
    """A step's Beam pipeline options and the block its pipeline runs in.

    No args: the in-process runner (``BEAM_ARGS``) with its fixed costs cut
    (``beam_memo.in_process``, whose cheap pickles never leave the process). Args (the
    trigger's ``beam_args``, e.g. ``--runner=DataflowRunner --project=...``): exactly
    those options and Beam's own pickling. Either way the pipeline reads the step's
    rows from the artifact store itself (``read_examples``).
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    from services.trigger.beam_memo import in_process

    if not beam_args:
        return PipelineOptions(list(BEAM_ARGS)), in_process()
    return PipelineOptions(list(beam_args)), contextlib.nullcontext()


def beam_path(uri: str) -> str:
    """``uri`` as Beam's filesystems name it: they know no ``file://`` scheme (a plain path
    is local), though the artifact store accepts one."""
    return uri.removeprefix("file://")


def read_examples(p: Any, name: str, uri: str) -> Any:
    """A PCollection of the serialized raw tf.Examples of the Parquet file at ``uri``, read
    by the pipeline's workers (any filesystem Beam knows: local, gs://, s3://, hdfs://)."""
    import apache_beam as beam

    return (
        p
        | f"Read{name}" >> beam.io.ReadFromParquetBatched(beam_path(uri))
        | f"Encode{name}Raw" >> beam.FlatMap(raw_examples)
    )


def parquet_rows(uri: str) -> int:
    """Rows of the Parquet file at ``uri`` from its footer, through Beam's filesystems."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    try:
        with FileSystems.open(beam_path(uri)) as f:
            return int(pq.ParquetFile(f).metadata.num_rows)
    except (OSError, pa.ArrowException) as e:
        raise StepError(f"cannot read {uri}: {e}") from e


class StepError(Exception):
    """A step cannot run on its inputs (missing/empty data, bad module, ...)."""


class BlockingAnomalies(StepError):
    """The training data has anomalies whose type the caller declared blocking."""

    def __init__(self, anomalies: list[dict[str, str]]) -> None:
        self.anomalies = anomalies
        listed = "; ".join(f"{a['feature'] or '<dataset>'}: {a['code']}" for a in anomalies)
        super().__init__(f"{len(anomalies)} blocking anomalies: {listed}")


def load_module(module_path: str) -> types.ModuleType:
    """The model module, checked against the contract (``shared.contract``).

    A run reads the copy the trigger put in its directory; on an object store
    (a KFP pod) that copy is fetched to local disk first.
    """
    if "://" in module_path:
        module_path = local_copy(module_path)
    try:
        return contract.check(module_path)
    except contract.ContractError as e:
        raise StepError(str(e)) from e


def local_copy(uri: str) -> str:
    import tempfile

    from shared.artifacts import ArtifactStore

    data = ArtifactStore(uri.rsplit("/", 1)[0]).read_bytes(uri)
    path = os.path.join(tempfile.mkdtemp(prefix="ctrain-module-"), uri.rsplit("/", 1)[1])
    with open(path, "wb") as f:
        f.write(data)
    return path


def raw_examples(table: pa.Table, drop: Iterable[str] = ()) -> list[bytes]:
    """Serialized tf.Examples of the rows (``shared.tfexample``, the one encoder)."""
    from shared.tfexample import EncodeError, rows_to_examples

    try:
        return rows_to_examples(table, drop)
    except EncodeError as e:
        raise StepError(str(e)) from e


def write_parquet(table: pa.Table, path: str) -> None:
    import pyarrow.parquet as pq

    tmp = f"{path}.tmp"
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)  # a retried step never sees a half-written file


def concat_shards(uris: list[str], what: str) -> Any:
    import pyarrow as pa

    from shared.shard import read_shard

    tables = []
    for uri in uris:
        try:
            tables.append(read_shard(uri))
        except (OSError, pa.ArrowException) as e:
            raise StepError(f"cannot read {what} shard {uri}: {e}") from e
    try:
        table = pa.concat_tables(tables)
    except pa.ArrowInvalid as e:
        raise StepError(f"{what} shards have different schemas: {e}") from e
    if table.num_rows == 0:
        raise StepError(f"the {len(uris)} {what} shards hold no rows")
    return table
