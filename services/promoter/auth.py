"""Bearer tokens mapped to an identity and a role, compared in constant time."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from services.promoter.errors import Forbidden, Unauthorized

Role = Literal["viewer", "approver", "admin"]
RANK: dict[str, int] = {"viewer": 0, "approver": 1, "admin": 2}


@dataclass(frozen=True)
class Identity:
    name: str
    role: Role
    expires: float | None = None  # epoch seconds; None: never


class TokenBook:
    """``{"<token>": {"identity": "alice", "role": "approver", "expires": "2027-01-31T00:00:00Z"}}``
    from a file or JSON; ``expires`` (ISO 8601, optional) ends a token's validity."""

    def __init__(
        self, entries: dict[str, dict[str, str]], clock: Callable[[], float] = time.time
    ) -> None:
        self._entries: list[tuple[bytes, Identity]] = []
        self.clock = clock
        for token, who in entries.items():
            role = who.get("role", "")
            if role not in RANK:
                raise ValueError(f"token for {who.get('identity')!r}: unknown role {role!r}")
            expires = None
            if who.get("expires"):
                try:
                    expires = datetime.fromisoformat(who["expires"]).timestamp()
                except ValueError as e:
                    raise ValueError(
                        f"token for {who.get('identity')!r}: expires {who['expires']!r} is not "
                        "an ISO 8601 time"
                    ) from e
            ident = Identity(who["identity"], role, expires)  # type: ignore[arg-type]
            self._entries.append((token.encode(), ident))

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
        if found.expires is not None and self.clock() >= found.expires:
            at = datetime.fromtimestamp(found.expires).astimezone().isoformat(timespec="seconds")
            raise Unauthorized(f"the token of {found.name} expired at {at}; ask for a new one")
        return found

    @staticmethod
    def require(who: Identity, role: Role) -> None:
        if RANK[who.role] < RANK[role]:
            raise Forbidden(f"{who.name} has role {who.role}; this action needs {role}")
