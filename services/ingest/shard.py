"""Window shards: Parquet written in columnar batches as examples arrive.

A window never lives in memory as Python dicts: rows are buffered only up to
``batch_rows`` and then written as one Arrow record batch (one row group), so
memory is bounded by the batch, not by the window. Parquet is read by TFX
through tfx_bsl's ``ParquetTFXIO`` and directly by pyarrow/pandas.
"""

from __future__ import annotations

import hashlib
import os
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


def arrow_schema(spec: ExampleSpec) -> pa.Schema:
    return pa.schema([pa.field(f.name, ARROW_TYPES[f.kind], nullable=True) for f in spec.features])


class ShardWriter:
    """Streams rows of one window into a Parquet file at ``path``."""

    def __init__(self, spec: ExampleSpec, path: str, batch_rows: int = 8192) -> None:
        self.schema = arrow_schema(spec)
        self.names = [f.name for f in spec.features]
        self.path = path
        self.batch_rows = batch_rows
        self.rows: list[dict[str, Any]] = []
        self.count = 0
        self._writer: pq.ParquetWriter | None = None

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.count += 1
        if len(self.rows) >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        rows = self.rows
        arrays = [
            pa.array([r.get(n) for r in rows], type=f.type)
            for n, f in zip(self.names, self.schema, strict=True)
        ]
        batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
        if self._writer is None:
            self._writer = pq.ParquetWriter(
                self.path, self.schema, compression="zstd", write_statistics=True
            )
        self._writer.write_batch(batch)
        self.rows = []

    def finish(self) -> str:
        """Flush, fsync, close; return the sha256 of the file's bytes."""
        self._flush()
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
