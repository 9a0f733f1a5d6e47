"""The feature spec ingest checks examples against, derived from a TFMD schema."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2


class FeatureKind(StrEnum):
    INT = "INT"
    FLOAT = "FLOAT"
    BYTES = "BYTES"


class SchemaError(ValueError):
    """The schema file is missing, unparsable or describes no usable feature."""


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    name: str
    kind: FeatureKind
    required: bool


@dataclass(frozen=True)
class ExampleSpec:
    features: tuple[FeatureSpec, ...]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.features)

    def __getitem__(self, name: str) -> FeatureSpec:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)


_KINDS = {
    schema_pb2.INT: FeatureKind.INT,
    schema_pb2.FLOAT: FeatureKind.FLOAT,
    schema_pb2.BYTES: FeatureKind.BYTES,
}


def load_schema(path: str | Path) -> schema_pb2.Schema:
    p = Path(path)
    if not p.is_file():
        raise SchemaError(f"schema file {p} does not exist (set CTRAIN_SCHEMA)")
    try:
        return text_format.Parse(p.read_text(), schema_pb2.Schema())
    except text_format.ParseError as e:
        raise SchemaError(f"schema file {p} is not a valid TFMD schema: {e}") from e


def example_spec(schema: schema_pb2.Schema, optional: Iterable[str] = ()) -> ExampleSpec:
    """Scalar features; ``required`` where presence.min_fraction is 1, except the
    ``optional`` ones (a model's label features when its labels arrive on their own
    stream).

    A feature absent from serving data (schema environments) is checked by the
    validator, not here: ingest admits whatever the schema types allow.
    """
    optional = frozenset(optional)
    specs = []
    for f in schema.feature:
        if f.type not in _KINDS:
            raise SchemaError(f"feature {f.name!r} has unsupported type {f.type}")
        required = f.presence.min_fraction >= 1.0 and f.name not in optional
        specs.append(FeatureSpec(f.name, _KINDS[f.type], required))
    if not specs:
        raise SchemaError("schema declares no features")
    return ExampleSpec(tuple(specs))


def without_comparators(schema: schema_pb2.Schema) -> schema_pb2.Schema:
    """The schema for anomaly checks: drift/skew are measured separately, for every feature."""
    s = schema_pb2.Schema()
    s.CopyFrom(schema)
    for f in s.feature:
        f.ClearField("drift_comparator")
        f.ClearField("skew_comparator")
    return s
