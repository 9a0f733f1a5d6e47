from __future__ import annotations

import pytest

from services.promoter.auth import TokenBook
from services.promoter.errors import Forbidden, Unauthorized
from services.promoter.states import TRANSITIONS, next_state

pytestmark = pytest.mark.unit
BOOK = TokenBook(
    {
        "t-view": {"identity": "vera", "role": "viewer"},
        "t-appr": {"identity": "alice", "role": "approver"},
        "t-admin": {"identity": "root", "role": "admin"},
    }
)


def test_tokens_map_to_identity_and_role() -> None:
    who = BOOK.identify("Bearer t-appr")
    assert who.name == "alice" and who.role == "approver"
    with pytest.raises(Unauthorized, match="missing"):
        BOOK.identify(None)
    with pytest.raises(Unauthorized, match="unknown"):
        BOOK.identify("Bearer t-app")
    with pytest.raises(Unauthorized):
        BOOK.identify("Basic dXNlcg==")


def test_roles_are_ordered() -> None:
    TokenBook.require(BOOK.identify("Bearer t-admin"), "approver")
    with pytest.raises(Forbidden, match="vera has role viewer; this action needs approver"):
        TokenBook.require(BOOK.identify("Bearer t-view"), "approver")
    with pytest.raises(Forbidden):
        TokenBook.require(BOOK.identify("Bearer t-appr"), "admin")


def test_unknown_role_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="unknown role"):
        TokenBook({"x": {"identity": "eve", "role": "god"}})


@pytest.mark.parametrize(
    ("state", "action", "expected"),
    [
        ("new", "await_approval", "pending_approval"),
        ("pending_approval", "approve", "approved"),
        ("approved", "promote", "promoting"),
        ("promoting", "served", "serving"),
        ("serving", "roll_back", "rolled_back"),
        ("serving", "retire", "superseded"),
        ("pending_approval", "supersede", "superseded"),
        ("rejected", "approve", "approved"),
        ("serving", "approve", None),
        ("rejected", "reject", None),
        ("failed", "promote", None),
    ],
)
def test_transitions(state: str, action: str, expected: str | None) -> None:
    assert next_state(state, action) == expected


def test_terminal_states_have_no_way_out_but_restore() -> None:
    leaving = {s for sources, _ in TRANSITIONS.values() for s in sources}
    assert "failed" not in leaving
