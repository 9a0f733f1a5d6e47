"""Arrow rows -> serialized ``tf.train.Example`` (nulls left out), for serving calls."""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa


def rows_to_examples(table: pa.Table, drop: Iterable[str] = ()) -> list[bytes]:
    import tensorflow as tf

    skip = set(drop)
    out: list[bytes] = []
    for row in table.to_pylist():
        feats = {}
        for k, v in row.items():
            if v is None or k in skip:
                continue
            if isinstance(v, bool | int):
                feats[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))
            elif isinstance(v, float):
                feats[k] = tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
            else:
                feats[k] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(v).encode()]))
        out.append(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
    return out
