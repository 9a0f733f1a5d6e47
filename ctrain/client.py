"""HTTP clients of the services' APIs, shared by the CLI, ``ctrain demo`` and the tests.

Addresses come from ``CTRAIN_<SERVICE>_URL`` or the dev stack's state file; the
approval API's bearer token from ``CTRAIN_TOKEN`` or, on a dev stack, from its
tokens file (the first token holding the role a call needs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import orjson

ROLES = ("viewer", "approver", "admin")


class ApiError(RuntimeError):
    """A service answered with an error; the message is the service's own."""

    def __init__(self, status: int, detail: str, url: str) -> None:
        super().__init__(f"{status} from {url}: {detail}")
        self.status = status
        self.detail = detail


def service_url(name: str, state: dict[str, Any] | None = None) -> str:
    env = os.environ.get(f"CTRAIN_{name.upper()}_URL")
    if env:
        return env.rstrip("/")
    if state is None:
        from ctrain import devstack

        state = devstack.load_state()
    for p in (state or {}).get("procs", []):
        if p["name"] == name:
            return str(p["address"])
    raise RuntimeError(
        f"no {name} address: start the dev stack (`ctrain dev up`) or set CTRAIN_{name.upper()}_URL"
    )


def token_for(role: str, state: dict[str, Any] | None = None) -> str:
    """A token with at least ``role``: ``CTRAIN_TOKEN`` wins, else the dev tokens file."""
    env = os.environ.get("CTRAIN_TOKEN")
    if env:
        return env
    if state is None:
        from ctrain import devstack

        state = devstack.load_state()
    path = (state or {}).get("tokens_file")
    if not path or not Path(path).is_file():
        raise RuntimeError("no API token: set CTRAIN_TOKEN (the approval API needs a bearer token)")
    tokens: dict[str, dict[str, str]] = orjson.loads(Path(path).read_bytes())
    need = ROLES.index(role)
    # The least powerful token that suffices: viewing never borrows the admin's.
    ranked = sorted(tokens.items(), key=lambda kv: ROLES.index(kv[1].get("role", "viewer")))
    for tok, who in ranked:
        if ROLES.index(who.get("role", "viewer")) >= need:
            return tok
    raise RuntimeError(f"the tokens file {path} holds no token with role {role!r}")


def _detail(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:500] or r.reason_phrase
    if isinstance(body, dict):
        for key in ("detail", "reason", "error"):
            if key in body:
                return str(body[key])
    return str(body)[:500]


class _Api:
    def __init__(self, base: str, token: str | None = None, timeout: float = 30) -> None:
        self.base = base.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=timeout)

    def call(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kw: Any) -> Any:
        r = self.http.request(method, path, **kw)
        if r.status_code not in ok:
            raise ApiError(r.status_code, _detail(r), f"{method} {self.base}{path}")
        return r.json()

    def close(self) -> None:
        self.http.close()


class PromoterClient(_Api):
    """The approval API (``/docs`` on the promoter)."""

    def candidates(self, state: str | None = None, model: str | None = None) -> list[Any]:
        params = {k: v for k, v in (("state", state), ("model", model)) if v}
        return list(self.call("GET", "/v1/candidates", params=params)["candidates"])

    def candidate(self, cid: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/v1/candidates/{cid}"))

    def approve(self, cid: str, reason: str) -> dict[str, Any]:
        return dict(self.call("POST", f"/v1/candidates/{cid}/approve", json={"reason": reason}))

    def reject(self, cid: str, reason: str) -> dict[str, Any]:
        return dict(self.call("POST", f"/v1/candidates/{cid}/reject", json={"reason": reason}))

    def rollback(self, model: str, reason: str, version: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"reason": reason}
        if version is not None:
            body["version"] = version
        return dict(self.call("POST", f"/v1/models/{model}/rollback", json=body))

    def audit(self, count: int = 100) -> list[Any]:
        return list(self.call("GET", "/v1/audit", params={"count": count})["entries"])

    def model(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.call("GET", f"/v1/models/{name}"))
        except ApiError as e:
            if e.status == 404:
                return None
            raise


def _model(model: str | None, **params: Any) -> dict[str, Any]:
    return {**params, **({"model": model} if model else {})}


class TriggerClient(_Api):
    """The trigger's API; ``model`` may be left out where the trigger trains one model."""

    def decisions(self, count: int = 20, model: str | None = None) -> list[Any]:
        params = _model(model, count=count)
        return list(self.call("GET", "/v1/decisions", params=params)["decisions"])

    def runs(self, count: int = 10, model: str | None = None) -> list[Any]:
        return list(self.call("GET", "/v1/runs", params=_model(model, count=count))["runs"])

    def state(self, model: str | None = None) -> dict[str, Any]:
        return dict(self.call("GET", "/v1/state", params=_model(model)))

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/v1/runs/{run_id}"))

    def train(self, reason: str, model: str | None = None) -> dict[str, Any]:
        return dict(
            self.call(
                "POST", "/v1/trigger", ok=(202, 409), json={"reason": reason}, params=_model(model)
            )
        )


class ValidatorClient(_Api):
    def windows(self, stream: str, limit: int = 20) -> list[Any]:
        params: dict[str, Any] = {"stream": stream, "limit": limit}
        return list(self.call("GET", "/v1/windows", params=params)["windows"])


class MonitorClient(_Api):
    def quality(self, model: str, limit: int = 20) -> list[Any]:
        params: dict[str, Any] = {"model": model, "limit": limit}
        return list(self.call("GET", "/v1/quality", params=params)["windows"])


def monitor(state: dict[str, Any] | None = None) -> MonitorClient:
    return MonitorClient(service_url("monitor", state))


def promoter(role: str = "viewer", state: dict[str, Any] | None = None) -> PromoterClient:
    return PromoterClient(service_url("promoter", state), token_for(role, state))


def trigger(state: dict[str, Any] | None = None) -> TriggerClient:
    return TriggerClient(service_url("trigger", state))


def validator(state: dict[str, Any] | None = None) -> ValidatorClient:
    return ValidatorClient(service_url("validator", state))
