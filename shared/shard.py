"""Window shards: Parquet written in columnar batches as examples arrive.

A window never lives in memory as Python dicts: rows are buffered only up to
``batch_rows`` and then written as one Arrow record batch (one row group), so
memory is bounded by the batch, not by the window. Parquet is read by TFX
through tfx_bsl's ``ParquetTFXIO`` and directly by pyarrow/pandas.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shared.schema import ExampleSpec, FeatureKind

ARROW_TYPES = {
    FeatureKind.INT: pa.int64(),
    FeatureKind.FLOAT: pa.float32(),
    FeatureKind.BYTES: pa.string(),
}
SHARD_NAME = "data.parquet"
# Beside each shard, row for row: the source offset of each example (its id's last part).
OFFSETS_NAME = "offsets.parquet"
OFFSETS_SCHEMA = pa.schema([pa.field("offset", pa.int64(), nullable=False)])


def arrow_schema(spec: ExampleSpec) -> pa.Schema:
    return pa.schema([pa.field(f.name, ARROW_TYPES[f.kind], nullable=True) for f in spec.features])


class ShardWriter:
    """Streams record batches of one window into a Parquet file at ``path``.

    Row groups hold exactly ``batch_rows`` rows (the last one fewer) whatever the
    poll batches looked like, so a window rebuilt after a restart is byte-identical.
    """

    def __init__(self, schema: pa.Schema, path: str, batch_rows: int = 8192) -> None:
        self.schema = schema
        self.path = path
        self.batch_rows = batch_rows
        self.count = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None

    def add(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        self.count += batch.num_rows
        if self._pending_rows >= self.batch_rows:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._pending:
            return
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        n = table.num_rows if final else table.num_rows - table.num_rows % self.batch_rows
        if n == 0:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(
                self.path, self.schema, compression="zstd", write_statistics=True
            )
        self._writer.write_table(table.slice(0, n), row_group_size=self.batch_rows)
        rest = table.slice(n)
        self._pending = rest.to_batches()
        self._pending_rows = rest.num_rows

    def finish(self) -> str:
        """Flush, fsync, close; return the sha256 of the file's bytes."""
        self._flush(final=True)
        if self._writer is None:  # an empty window still gets a valid, empty shard
            self._writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")
        self._writer.close()
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
            os.fsync(f.fileno())
        return h.hexdigest()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


def read_shard(uri: str) -> pa.Table:
    """Read a window shard (local path or tf.io.gfile URI) into an Arrow table."""
    if "://" in uri and not uri.startswith("file://"):
        import tensorflow as tf

        with tf.io.gfile.GFile(uri, "rb") as f:
            return pq.read_table(pa.BufferReader(f.read()))
    return pq.read_table(uri.removeprefix("file://"))


def iter_shards(uris: Iterable[str], batch_rows: int) -> Iterator[pa.Table]:
    """The shards' rows, ``batch_rows`` at a time, in order: a window of any size is read
    without ever being in memory whole (docs/validator.md, "Memory")."""
    for uri in uris:
        if "://" in uri and not uri.startswith("file://"):
            import tensorflow as tf

            source: Any = tf.io.gfile.GFile(uri, "rb")
        else:
            source = uri.removeprefix("file://")
        f = pq.ParquetFile(source)
        try:
            for batch in f.iter_batches(batch_size=batch_rows):
                yield pa.Table.from_batches([batch])
        finally:
            f.close()


def offsets_uri(data_uri: str) -> str:
    """The offsets file of the shard at ``data_uri``."""
    return f"{data_uri.rsplit('/', 1)[0]}/{OFFSETS_NAME}"
