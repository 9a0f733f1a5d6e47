"""Labels joined from their own stream: the one layout the monitor and the pipeline read.

A label joined to an example is kept beside the example's window shard, in
``<shard dir>/labels/<segment>.parquet`` (docs/models.md, "Labels"), so a KFP pod reads
labels the way it reads shards: from the artifact store, never through Redis. A segment
holds the labels one batch of label records joined to that shard: the example's row in
``data.parquet``, its id, the label's event time, where the label record came from and
the label features (JSON: a feature keeps the type the schema gives it when merged).

A segment may be written again after a crash (same labels, maybe cut into other
segments); a reader keeps one label per row, the first by source position, which is the
one the join claimed (the join never writes a second, different label for a row).

Pure file functions: no Kafka, no Redis; tests call them on shards directly.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shared.artifacts import ArtifactStore
from shared.ids import example_id
from shared.shard import offsets_uri

LABELS_DIR = "labels"
SEGMENT_SCHEMA = pa.schema(
    [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("event_time_ms", pa.int64()),
        pa.field("src_partition", pa.int64(), nullable=False),
        pa.field("src_offset", pa.int64(), nullable=False),
        pa.field("features", pa.string(), nullable=False),
    ]
)


class LabelsUnreadable(ValueError):
    """A shard's ids or joined labels cannot be read."""


def label_features(module: types.ModuleType | Any) -> tuple[str, ...]:
    """The raw features a label record carries: the module's ``RAW_LABEL_FEATURES``, or
    ``LABEL_KEY`` itself when the label is a raw feature used as is."""
    raw = tuple(getattr(module, "RAW_LABEL_FEATURES", ()) or ())
    return raw or (str(module.LABEL_KEY),)


@dataclass(frozen=True)
class Joined:
    """One label joined to one example."""

    row: int
    example_id: str
    event_time_ms: int | None
    src_partition: int
    src_offset: int
    features: Mapping[str, Any]


def shard_dir(data_uri: str) -> str:
    return data_uri.rsplit("/", 1)[0]


def labels_dir(data_uri: str) -> str:
    return f"{shard_dir(data_uri)}/{LABELS_DIR}"


def write_segment(store: ArtifactStore, data_uri: str, name: str, rows: Iterable[Joined]) -> str:
    """Write one segment atomically; returns its URI."""
    rows = list(rows)
    table = pa.table(
        {
            "row": pa.array([r.row for r in rows], pa.int64()),
            "example_id": pa.array([r.example_id for r in rows], pa.string()),
            "event_time_ms": pa.array([r.event_time_ms for r in rows], pa.int64()),
            "src_partition": pa.array([r.src_partition for r in rows], pa.int64()),
            "src_offset": pa.array([r.src_offset for r in rows], pa.int64()),
            "features": pa.array(
                [orjson.dumps(dict(r.features)).decode() for r in rows], pa.string()
            ),
        },
        schema=SEGMENT_SCHEMA,
    )
    d = labels_dir(data_uri)
    if not store.remote:
        import os

        os.makedirs(d, exist_ok=True)
    uri = f"{d}/{name}.parquet"
    with store.open_atomic(uri) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return uri


def read_joined(store: ArtifactStore, data_uri: str) -> pa.Table:
    """Every label joined to the shard, one per row (the first by source position)."""
    d = labels_dir(data_uri)
    names = [n for n in store.listdir(d) if n.endswith(".parquet")]
    if not names:
        return SEGMENT_SCHEMA.empty_table()
    try:
        parts = [pq.read_table(pa.BufferReader(store.read_bytes(f"{d}/{n}"))) for n in names]
    except (OSError, pa.ArrowException) as e:
        raise LabelsUnreadable(f"labels of {data_uri}: {e}") from e
    t = pa.concat_tables([p.cast(SEGMENT_SCHEMA) for p in parts])
    t = t.sort_by(
        [("row", "ascending"), ("src_partition", "ascending"), ("src_offset", "ascending")]
    )
    rows = t.column("row").to_numpy()
    first = np.ones(len(rows), dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    return t.filter(pa.array(first))


def offset_ids(store: ArtifactStore, data_uri: str, rows: int) -> list[str] | None:
    """``<topic>:<partition>:<offset>`` of each row (None for shards older than ids)."""
    from shared.events import WindowClosed

    off_uri = offsets_uri(data_uri)
    meta_uri = f"{shard_dir(data_uri)}/window.json"
    if not store.exists(off_uri) or not store.exists(meta_uri):
        return None
    try:
        closed = WindowClosed.model_validate(orjson.loads(store.read_bytes(meta_uri)))
        offsets = pq.read_table(pa.BufferReader(store.read_bytes(off_uri))).column("offset")
    except (OSError, ValueError, pa.ArrowException) as e:
        raise LabelsUnreadable(f"offsets of {data_uri}: {e}") from e
    if len(offsets) != rows or len(closed.offsets) != 1:
        raise LabelsUnreadable(
            f"offsets of {data_uri}: {len(offsets)} offsets for {rows} rows"
            if len(offsets) != rows
            else f"{meta_uri}: a window of one partition expected"
        )
    src = closed.offsets[0]
    return [example_id(src.topic, src.partition, o) for o in offsets.to_pylist()]


def business_ids(table: pa.Table, id_field: str, uri: str) -> list[str | None]:
    if id_field not in table.column_names:
        raise LabelsUnreadable(f"shard {uri} has no column {id_field!r} (labels.id_field)")
    return [None if x is None else str(x) for x in table.column(id_field).to_pylist()]


def carries_label(table: pa.Table, features: Iterable[str]) -> np.ndarray:
    """Rows that carry every label feature in the window itself."""
    out = np.ones(table.num_rows, dtype=bool)
    for name in features:
        if name not in table.column_names:
            return np.zeros(table.num_rows, dtype=bool)
        out &= ~np.asarray(table.column(name).is_null().to_numpy(), dtype=bool)
    return out


@dataclass(frozen=True)
class Counts:
    labelled: int = 0  # carried in the window or joined
    defaulted: int = 0  # unlabelled at maturity, given the default
    unlabelled: int = 0  # left out

    def __add__(self, o: Counts) -> Counts:
        return Counts(
            self.labelled + o.labelled, self.defaulted + o.defaulted, self.unlabelled + o.unlabelled
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "labelled": self.labelled,
            "defaulted": self.defaulted,
            "unlabelled": self.unlabelled,
        }


def attach(
    table: pa.Table,
    joined: pa.Table,
    features: tuple[str, ...],
    default: Mapping[str, Any] | None = None,
) -> tuple[pa.Table, Counts]:
    """The shard's rows that have a label, with their joined label features set.

    A row keeps label features it carries in the window; one without gets its joined
    label's, else the ``default`` (given only for a matured window), else it is left out.
    """
    n = table.num_rows
    inline = carries_label(table, features)
    has = np.zeros(n, dtype=bool)
    values: dict[str, list[Any]] = {f: [None] * n for f in features}
    if joined.num_rows:
        rows = joined.column("row").to_numpy()
        for r, raw in zip(rows, joined.column("features").to_pylist(), strict=True):
            if 0 <= r < n and not inline[r]:
                got = orjson.loads(raw)
                if all(f in got and got[f] is not None for f in features):
                    has[r] = True
                    for f in features:
                        values[f][r] = got[f]
    keep = inline | has
    defaulted = 0
    if default is not None:
        fill = ~keep
        defaulted = int(fill.sum())
        for f in features:
            for r in np.flatnonzero(fill):
                values[f][r] = default[f]
        keep = np.ones(n, dtype=bool)
    out = table
    for f in features:
        if f not in out.column_names:
            continue
        col = out.column(f)
        given = pa.array(values[f]).cast(col.type) if n else pa.array([], col.type)
        mask = pa.array(inline)
        merged = pc.if_else(mask, col.combine_chunks(), given)
        out = out.set_column(out.schema.get_field_index(f), f, merged)
    counts = Counts(
        labelled=int((inline | has).sum()),
        defaulted=defaulted,
        unlabelled=int(n - keep.sum()),
    )
    return out.filter(pa.array(keep)), counts


def joined_only(
    table: pa.Table, joined: pa.Table, features: tuple[str, ...]
) -> tuple[pa.Table, np.ndarray]:
    """The rows that got their label by the join (not in the window), with their label
    features set, and their row numbers."""
    n = table.num_rows
    marked = table.append_column("__row", pa.array(np.arange(n, dtype=np.int64)))
    out, _ = attach(marked, joined, features)
    rows = out.column("__row").to_numpy()
    keep = ~carries_label(table, features)[rows]
    out = out.filter(pa.array(keep))
    return out.remove_column(out.schema.get_field_index("__row")), rows[keep]
