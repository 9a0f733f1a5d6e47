"""Bearer tokens mapped to an identity and a role, compared in constant time."""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from services.promoter.errors import Forbidden, Unauthorized

Role = Literal["viewer", "approver", "admin"]
RANK: dict[str, int] = {"viewer": 0, "approver": 1, "admin": 2}


@dataclass(frozen=True)
class Identity:
    name: str
    role: Role


class TokenBook:
    """``{"<token>": {"identity": "alice", "role": "approver"}, ...}`` from a file or JSON."""

    def __init__(self, entries: dict[str, dict[str, str]]) -> None:
        self._entries: list[tuple[bytes, Identity]] = []
        for token, who in entries.items():
            role = who.get("role", "")
            if role not in RANK:
                raise ValueError(f"token for {who.get('identity')!r}: unknown role {role!r}")
            self._entries.append((token.encode(), Identity(who["identity"], role)))  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str = "", inline: str = "") -> TokenBook:
        if path:
            return cls(json.loads(Path(path).read_text()))
        return cls(json.loads(inline) if inline else {})

    def identify(self, header: str | None) -> Identity:
        if not header or not header.lower().startswith("bearer "):
            raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
        given = header[7:].strip().encode()
        found: Identity | None = None
        # Compare against every entry so the time taken does not reveal a prefix match.
        for token, who in self._entries:
            if hmac.compare_digest(token, given):
                found = who
        if found is None:
            raise Unauthorized("unknown bearer token")
        return found

    @staticmethod
    def require(who: Identity, role: Role) -> None:
        if RANK[who.role] < RANK[role]:
            raise Forbidden(f"{who.name} has role {who.role}; this action needs {role}")
