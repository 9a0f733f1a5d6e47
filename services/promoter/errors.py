"""promoter's exceptions; each maps to one HTTP status (registered once, in app.py)."""

from __future__ import annotations

from shared.consume import Outage


class PromoterError(Exception):
    """Root of every error the promoter raises on purpose."""

    status_code = 500


class Unauthorized(PromoterError):
    status_code = 401


class Forbidden(PromoterError):
    status_code = 403


class NotFound(PromoterError):
    status_code = 404


class Conflict(PromoterError):
    """The action is not allowed in the candidate's current state (the message names it)."""

    status_code = 409


class ServingError(PromoterError):
    """TF Serving refused or failed a step of a promotion."""

    status_code = 502


class ServingUnavailable(ServingError, Outage):
    """TF Serving did not answer (down, restarting, paused): an outage, not a refusal.
    A promotion waits for it and resumes where it stopped; nothing is failed for it."""

    status_code = 503


class Ambiguous(PromoterError):
    """An id prefix names several candidates; the message lists them."""

    status_code = 400


class UpstreamNotConfigured(PromoterError):
    """The console asked for a service whose URL the promoter was not given."""

    status_code = 503


class UpstreamUnreachable(PromoterError):
    """The console's request to another ctrain service got no answer."""

    status_code = 502
