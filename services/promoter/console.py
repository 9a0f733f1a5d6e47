"""The operator console: one web page at ``/``, its own scripts and styles, and a read
proxy to the other services' APIs.

Why the promoter serves it: it already holds the tokens and roles, and it is the one
service an operator reaches (in k8s the network policy admits only its port). The page
calls the promoter's own ``/v1`` API for candidates, approvals, rollbacks and the audit
log, and ``/console/api/<service>/v1/...`` for windows, runs and quality, which the
promoter forwards (GET only, a viewer's token required) to the validator, trigger and
monitor. So the page needs one origin only, and its Content-Security-Policy allows
exactly that one: nothing is loaded from anywhere else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, Header, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from services.promoter.auth import TokenBook
from services.promoter.errors import NotFound, UpstreamNotConfigured, UpstreamUnreachable
from services.promoter.settings import PromoterSettings

ASSETS = Path(__file__).resolve().parent / "console"
# The console's own origin and nothing else; no inline script or style, no framing.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
# Headers of the upstream answer the page may see (never its cookies or hop headers).
PASSED = ("content-type",)


def upstreams(settings: PromoterSettings) -> dict[str, str]:
    return {
        "validator": settings.validator_url.rstrip("/"),
        "trigger": settings.trigger_url.rstrip("/"),
        "monitor": settings.monitor_url.rstrip("/"),
    }


class Upstreams:
    """GET requests on behalf of the console, to the services named in the settings."""

    def __init__(self, urls: dict[str, str], timeout_s: float, transport: Any = None) -> None:
        self.urls = urls
        self.client = httpx.AsyncClient(timeout=timeout_s, transport=transport)

    async def get(self, service: str, path: str, query: str) -> httpx.Response:
        if service not in self.urls:
            raise NotFound(f"the console reads {', '.join(sorted(self.urls))}, not {service!r}")
        base = self.urls[service]
        if not base:
            raise UpstreamNotConfigured(
                f"the promoter was not given the {service}'s address "
                f"(CTRAIN_PROMOTER_{service.upper()}_URL): the console cannot show its view"
            )
        if not path.startswith("v1/") or ".." in path.split("/"):
            raise NotFound(f"the console reads the {service}'s /v1/ API only, not /{path}")
        url = f"{base}/{path}" + (f"?{query}" if query else "")
        try:
            return await self.client.get(url)
        except httpx.HTTPError as e:
            raise UpstreamUnreachable(f"the {service} at {base} did not answer: {e!r}") from e

    async def close(self) -> None:
        await self.client.aclose()


def add_console(app: FastAPI, book: TokenBook, ups: Upstreams) -> None:
    """Register the page, its assets, ``/console/whoami`` and the read proxy (none of them
    in the OpenAPI document: the API stays the approval API)."""

    @app.middleware("http")
    async def console_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        path = request.url.path
        if path == "/" or path.startswith("/console"):
            response.headers.update(HEADERS)
        return response

    app.mount("/console/assets", StaticFiles(directory=ASSETS), name="console-assets")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(ASSETS / "index.html", media_type="text/html")

    @app.get("/console/whoami", include_in_schema=False)
    async def whoami(authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Who the token belongs to, so the page shows only what the role may do (the API
        refuses anyway)."""
        who = book.identify(authorization)
        return {"identity": who.name, "role": who.role, "expires": who.expires}

    @app.get("/console/api/{service}/{path:path}", include_in_schema=False)
    async def proxy(
        service: str,
        path: str,
        request: Request,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        TokenBook.require(book.identify(authorization), "viewer")
        r = await ups.get(service, path, request.url.query)
        headers = {k: v for k, v in r.headers.items() if k.lower() in PASSED}
        return Response(r.content, r.status_code, headers=headers)
