"""A judged window's examples as the monitor needs them: rows, ids, in-window labels.

Pure file reading (no Kafka, no Redis, no serving): tests call it on shards directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from services.monitor.errors import WindowUnreadable
from shared.artifacts import ArtifactStore
from shared.events import WindowValidated
from shared.labels import LabelsUnreadable, offset_ids
from shared.shard import read_shard


@dataclass(frozen=True)
class ModelView:
    """What the monitor knows of one model: from the configuration and its module."""

    name: str
    stream: str
    task: str
    label_key: str
    raw_label_features: tuple[str, ...]
    slices: tuple[tuple[str, ...], ...]
    output_key: str
    threshold: float = 0.5
    coverage_steps: tuple[float, ...] = (0.5, 0.9)
    example_id_field: str = ""
    slice_min_examples: int = 30
    # What a joined label carries (shared.labels.label_features).
    label_features: tuple[str, ...] = ()

    def label_inputs(self, columns: list[str]) -> tuple[str, ...]:
        """Columns whose presence says an example carries its label in the window."""
        if self.raw_label_features:
            return self.raw_label_features
        return (self.label_key,) if self.label_key in columns else ()


@dataclass
class WindowData:
    table: pa.Table
    # One id per row, or None where the window's shards predate example ids.
    ids: list[str] | None
    # Rows whose label can be computed from the window itself.
    labelled: np.ndarray
    # (shard, data_uri, rows) of each member, in order.
    members: list[tuple[str, str, int]]


def load_window(store: ArtifactStore, v: WindowValidated, model: ModelView) -> WindowData:
    """Every member shard of a judged period, in member order, with ids and label presence."""
    members = v.members or []
    named = [(m.window_id, m.data_uri) for m in members] or (
        [(v.window_id, v.data_uri)] if v.data_uri else []
    )
    uris = [u for _, u in named]
    if not uris:
        raise WindowUnreadable(f"validation {v.id} names no data")
    tables: list[pa.Table] = []
    ids: list[str] | None = []
    for uri in uris:
        try:
            t = read_shard(uri)
        except (OSError, pa.ArrowException) as e:
            raise WindowUnreadable(f"shard {uri}: {e}") from e
        tables.append(t)
        if model.example_id_field:
            if model.example_id_field not in t.column_names:
                raise WindowUnreadable(
                    f"shard {uri} has no column {model.example_id_field!r} (labels.id_field)"
                )
            col = t.column(model.example_id_field).to_pylist()
            member_ids = [None if x is None else str(x) for x in col]
            ids = None if ids is None else ids + [x or "" for x in member_ids]
        else:
            try:
                found = offset_ids(store, uri, t.num_rows)
            except LabelsUnreadable as e:
                raise WindowUnreadable(str(e)) from e
            ids = None if ids is None or found is None else ids + found
    # Every shard of a stream is written with the schema's one Arrow schema.
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    labelled = np.ones(table.num_rows, dtype=bool)
    for name in model.label_inputs(table.column_names):
        if name not in table.column_names:
            labelled[:] = False
            break
        labelled &= ~np.asarray(table.column(name).is_null().to_numpy())
    sizes = [(shard, uri, t.num_rows) for (shard, uri), t in zip(named, tables, strict=True)]
    return WindowData(table, ids, labelled, sizes)


def read_shard_table(uri: str) -> pa.Table:
    try:
        return read_shard(uri)
    except (OSError, pa.ArrowException) as e:
        raise WindowUnreadable(f"shard {uri}: {e}") from e


def predictions_uri(store: ArtifactStore, model: str, window_id: str, name: str) -> str:
    return store.uri("quality", model, window_id, name)


def write_table(store: ArtifactStore, uri: str, table: pa.Table) -> None:
    """Atomically (temp + rename, or the object store's equivalent)."""
    with store.open_atomic(uri) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_table(store: ArtifactStore, uri: str) -> pa.Table:
    return pq.read_table(pa.BufferReader(store.read_bytes(uri)))
