"""A judged window's examples as the monitor needs them: rows, ids, in-window labels.

Pure file reading (no Kafka, no Redis, no serving): tests call it on shards directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from services.monitor.errors import WindowUnreadable
from shared.artifacts import ArtifactStore
from shared.events import WindowClosed, WindowValidated
from shared.ids import example_id
from shared.shard import offsets_uri, read_shard


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
    label_lookback_s: float = 7 * 86400.0
    example_id_field: str = ""
    slice_min_examples: int = 30

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


def _ids_of_member(store: ArtifactStore, data_uri: str, rows: int) -> list[str] | None:
    off_uri = offsets_uri(data_uri)
    meta_uri = f"{data_uri.rsplit('/', 1)[0]}/window.json"
    if not store.exists(off_uri) or not store.exists(meta_uri):
        return None
    try:
        closed = WindowClosed.model_validate(orjson.loads(store.read_bytes(meta_uri)))
        offsets = pq.read_table(pa.BufferReader(store.read_bytes(off_uri))).column("offset")
    except (OSError, ValueError, pa.ArrowException) as e:
        raise WindowUnreadable(f"offsets of {data_uri}: {e}") from e
    if len(offsets) != rows or len(closed.offsets) != 1:
        raise WindowUnreadable(
            f"offsets of {data_uri}: {len(offsets)} offsets for {rows} rows"
            if len(offsets) != rows
            else f"{meta_uri}: a window of one partition expected"
        )
    src = closed.offsets[0]
    return [example_id(src.topic, src.partition, o) for o in offsets.to_pylist()]


def load_window(store: ArtifactStore, v: WindowValidated, model: ModelView) -> WindowData:
    """Every member shard of a judged period, in member order, with ids and label presence."""
    members = v.members or []
    uris = [m.data_uri for m in members] or ([v.data_uri] if v.data_uri else [])
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
                    f"shard {uri} has no column {model.example_id_field!r} "
                    "(quality.example_id_field)"
                )
            col = t.column(model.example_id_field).to_pylist()
            member_ids = [None if x is None else str(x) for x in col]
            ids = None if ids is None else ids + [x or "" for x in member_ids]
        else:
            found = _ids_of_member(store, uri, t.num_rows)
            ids = None if ids is None or found is None else ids + found
    # Every shard of a stream is written with the schema's one Arrow schema.
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    labelled = np.ones(table.num_rows, dtype=bool)
    for name in model.label_inputs(table.column_names):
        if name not in table.column_names:
            labelled[:] = False
            break
        labelled &= ~np.asarray(table.column(name).is_null().to_numpy())
    return WindowData(table, ids, labelled)


def predictions_uri(store: ArtifactStore, model: str, window_id: str, name: str) -> str:
    return store.uri("quality", model, window_id, name)


def write_table(store: ArtifactStore, uri: str, table: pa.Table) -> None:
    """Atomically (temp + rename, or the object store's equivalent)."""
    with store.open_atomic(uri) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_table(store: ArtifactStore, uri: str) -> pa.Table:
    return pq.read_table(pa.BufferReader(store.read_bytes(uri)))
