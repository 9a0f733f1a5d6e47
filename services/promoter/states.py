"""The candidate state machine: which action may move a candidate from which state."""

from __future__ import annotations

from typing import Literal

State = Literal[
    "pending_approval",
    "approved",
    "promoting",
    "serving",
    "rejected",
    "failed",
    "superseded",
    "rolled_back",
]
Action = Literal[
    "await_approval",
    "approve",
    "auto",
    "reject",
    "promote",
    "served",
    "fail",
    "supersede",
    "roll_back",
    "retire",
    "restore",
]

# action -> states it may start from -> state it leads to
TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "await_approval": (("new",), "pending_approval"),
    "auto": (("new",), "approved"),
    "approve": (("pending_approval", "rejected"), "approved"),  # from rejected: admin override
    "reject": (("new", "pending_approval", "approved"), "rejected"),
    "promote": (("approved", "promoting"), "promoting"),
    "served": (("promoting",), "serving"),
    "fail": (("promoting", "approved"), "failed"),
    "supersede": (("new", "pending_approval", "approved"), "superseded"),
    "roll_back": (("serving",), "rolled_back"),
    "retire": (("serving",), "superseded"),  # a newer version took the stable label
    "restore": (("rolled_back", "superseded"), "serving"),  # a rollback's target
}


def next_state(current: str, action: str) -> str | None:
    """The state ``action`` leads to from ``current``, or None if not allowed."""
    sources, target = TRANSITIONS[action]
    return target if current in sources else None
