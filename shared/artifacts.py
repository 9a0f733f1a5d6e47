"""The artifact store: local paths, or any ``tf.io.gfile`` URI, with atomic writes.

Local writes go to a temporary sibling and are renamed into place, so a reader
never sees half a file. Object stores (gs://, s3://) make an object visible only
once its upload completes, which is the same guarantee.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _gfile() -> Any:
    import tensorflow as tf  # only for remote URIs: TF is heavy to import

    return tf.io.gfile


class ArtifactStore:
    """Joins paths under the root and writes files atomically."""

    def __init__(self, root: str) -> None:
        self.root = root.removeprefix("file://").rstrip("/") or "/"
        self.remote = _is_remote(self.root)
        if not self.remote:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def uri(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def exists(self, uri: str) -> bool:
        return _gfile().exists(uri) if self.remote else os.path.exists(uri)

    def read_bytes(self, uri: str) -> bytes:
        if self.remote:
            with _gfile().GFile(uri, "rb") as f:
                return bytes(f.read())
        return Path(uri).read_bytes()

    def write_bytes(self, uri: str, data: bytes) -> None:
        if self.remote:
            with _gfile().GFile(uri, "wb") as f:
                f.write(data)
            return
        with self.open_atomic(uri) as tmp:
            Path(tmp).write_bytes(data)

    @contextmanager
    def open_atomic(self, uri: str) -> Iterator[str]:
        """Yield a local temp path; on success it becomes ``uri`` atomically.

        For a remote root the temp file is uploaded once complete.
        """
        if self.remote:
            fd, tmp = tempfile.mkstemp(prefix=".ctrain-")
            os.close(fd)
            try:
                yield tmp
                _gfile().copy(tmp, uri, overwrite=True)
            finally:
                os.unlink(tmp)
            return
        dest = Path(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
        try:
            yield str(part)
            with open(part, "rb") as f:
                os.fsync(f.fileno())
            os.replace(part, dest)
        finally:
            if part.exists():
                part.unlink()

    def temp_path(self, uri: str) -> str:
        """A local path to write ``uri``'s content to before :meth:`publish_file`."""
        if self.remote:
            fd, tmp = tempfile.mkstemp(prefix=".ctrain-")
            os.close(fd)
            return tmp
        dest = Path(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        return str(dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp")

    def publish_file(self, tmp: str, uri: str) -> None:
        """Make the finished local file ``tmp`` visible as ``uri`` in one step."""
        if self.remote:
            try:
                _gfile().copy(tmp, uri, overwrite=True)
            finally:
                os.unlink(tmp)
        else:
            os.replace(tmp, uri)

    def listdir(self, uri: str) -> list[str]:
        if self.remote:
            return [p.rstrip("/") for p in _gfile().listdir(uri)]
        p = Path(uri)
        return sorted(x.name for x in p.iterdir()) if p.is_dir() else []

    def remove_tree(self, uri: str) -> None:
        if self.remote:
            _gfile().rmtree(uri)
        else:
            shutil.rmtree(uri, ignore_errors=True)
