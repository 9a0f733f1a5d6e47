"""trigger's exceptions; each knows its HTTP status (mapped once, by shared.serve)."""

from __future__ import annotations


class TriggerError(Exception):
    """Root of every error the trigger raises on purpose."""

    status_code = 500


class UnknownModel(TriggerError):
    """A request named no model of this trigger (404), or none where several run (400)."""

    def __init__(self, detail: str, status: int) -> None:
        super().__init__(detail)
        self.status_code = status
