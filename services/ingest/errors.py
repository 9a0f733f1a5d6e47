"""ingest's exceptions; each knows its HTTP status (mapped once, in app.py)."""

from __future__ import annotations


class IngestError(Exception):
    """Root of every error ingest raises on purpose."""

    status_code = 500


class BodyTooLarge(IngestError):
    status_code = 413


class NotReady(IngestError):
    status_code = 503


class UnknownStream(IngestError):
    """A request named a stream this ingest does not serve."""

    status_code = 404
