"""The schema a stream is validated against: the curated file, or one inferred and versioned.

Inferred schemas live at ``<root>/schemas/<stream>/v<N>.pbtxt``; ``current``
names the version in force. ``ctrain schema export`` / ``import`` move them
through review.
"""

from __future__ import annotations

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

from shared.artifacts import ArtifactStore
from shared.schema import load_schema


class SchemaStore:
    def __init__(
        self, store: ArtifactStore, curated_path: str = "", per_stream: dict[str, str] | None = None
    ) -> None:
        self.store = store
        self.curated = load_schema(curated_path) if curated_path else None
        # A models file names each stream's own curated schema.
        self.per_stream = {s: load_schema(p) for s, p in (per_stream or {}).items()}

    def _dir(self, stream: str) -> str:
        return self.store.uri("schemas", stream)

    def current_version(self, stream: str) -> int | None:
        uri = f"{self._dir(stream)}/current"
        return int(self.store.read_bytes(uri)) if self.store.exists(uri) else None

    def load(self, stream: str) -> schema_pb2.Schema | None:
        if stream in self.per_stream:
            return self.per_stream[stream]
        if self.curated is not None:
            return self.curated
        v = self.current_version(stream)
        if v is None:
            return None
        text = self.store.read_bytes(f"{self._dir(stream)}/v{v}.pbtxt").decode()
        return text_format.Parse(text, schema_pb2.Schema())

    def save(self, stream: str, schema: schema_pb2.Schema) -> int:
        v = (self.current_version(stream) or 0) + 1
        self.store.write_bytes(
            f"{self._dir(stream)}/v{v}.pbtxt", text_format.MessageToString(schema).encode()
        )
        self.store.write_bytes(f"{self._dir(stream)}/current", str(v).encode())
        return v

    def ensure(
        self, stream: str, stats: statistics_pb2.DatasetFeatureStatisticsList
    ) -> schema_pb2.Schema:
        """The schema in force, inferring and storing v1 from ``stats`` if there is none."""
        schema = self.load(stream)
        if schema is None:
            import tensorflow_data_validation as tfdv

            # No shape inference: a feature complete in the first window may have gaps later.
            schema = tfdv.infer_schema(stats, infer_feature_shape=False)
            self.save(stream, schema)
        return schema
