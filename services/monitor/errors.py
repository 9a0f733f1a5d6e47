"""monitor's exceptions; each maps to one HTTP status and one consume outcome (app.py)."""

from __future__ import annotations

from shared.consume import Outage


class MonitorError(Exception):
    """Root of every error the monitor raises on purpose."""

    status_code = 500


class NotFound(MonitorError):
    status_code = 404


class BadRequest(MonitorError):
    status_code = 400


class ServingError(MonitorError):
    """TF Serving refused a scoring request (no such model, label or signature)."""

    status_code = 502


class ServingUnavailable(ServingError, Outage):
    """TF Serving did not answer: the window is held and scored when it is back."""

    status_code = 503


class WindowUnreadable(MonitorError):
    """A window's shard or offsets file cannot be read: dead-lettered at once."""

    retryable = False
    dlq_reason = "window_unreadable"
