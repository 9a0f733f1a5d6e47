"""validator's exceptions: each says whether a retry can help (mapped in app.py)."""

from __future__ import annotations


class ValidatorError(Exception):
    """Root of every error the validator raises on purpose."""

    status_code = 500
    retryable = True


class ShardUnreadable(ValidatorError):
    """The window's shard is missing or corrupt: retrying the same event cannot help."""

    status_code = 422
    retryable = False


class UnknownWindow(ValidatorError):
    status_code = 404
    retryable = False


class NoBaseline(ValidatorError):
    status_code = 404
    retryable = False
