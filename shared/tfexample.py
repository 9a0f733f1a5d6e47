"""Arrow rows -> serialized ``tf.train.Example``: the one encoder of ctrain.

Training (TF Transform's input), evaluation, the promoter's smoke prediction and
the demo's predictions all encode rows here, so serving sees exactly what
training saw. Each column's Arrow type picks the feature list (integers and
booleans: int64_list, floats: float_list, strings and bytes: bytes_list); a null
is left out, which the schema's spec parses as a missing value.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa


class EncodeError(ValueError):
    """A column whose type has no tf.Example feature list."""


def _kind(field: pa.Field) -> str:
    t = field.type
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return "int64_list"
    if pa.types.is_floating(t):
        return "float_list"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t):
        return "bytes_list"
    raise EncodeError(f"column {field.name!r} has unsupported type {t}")


def rows_to_examples(table: pa.Table, drop: Iterable[str] = ()) -> list[bytes]:
    """Serialized tf.Examples of the rows of ``table``; nulls (and ``drop`` columns) left out."""
    from tensorflow.core.example import example_pb2

    dropped = set(drop)
    columns: list[tuple[str, str, list[Any]]] = [
        (f.name, _kind(f), table.column(f.name).to_pylist())
        for f in table.schema
        if f.name not in dropped
    ]
    out = []
    for i in range(table.num_rows):
        ex = example_pb2.Example()
        for name, kind, values in columns:
            v = values[i]
            if v is None:
                continue
            if isinstance(v, str):
                v = v.encode("utf-8")
            getattr(ex.features.feature[name], kind).value.append(v)
        out.append(ex.SerializeToString())
    return out
