"""Run an ASGI app under uvicorn with ctrain's shutdown contract.

uvicorn re-raises SIGTERM after its graceful shutdown, so the process would die
by the signal even when it drained cleanly. Our services exit 0 after a clean
drain (the orchestrator then knows nothing was lost), so the handlers here only
start the shutdown.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Generator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import uvicorn


class _Server(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(sig: int, frame: FrameType | None) -> None:
            self.handle_exit(sig, frame)

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def serve(app: Any, host: str, port: int, graceful_timeout: int = 30) -> None:
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, timeout_graceful_shutdown=graceful_timeout
    )
    _Server(config).run()


async def livez(_: Any) -> Any:
    """Liveness: the process serves requests. Not /healthz: a Redis, broker or serving
    outage makes a service unready (it holds its records) but restarting it cannot help."""
    from starlette.responses import JSONResponse

    return JSONResponse({"status": "alive"})


def answer_outages_with_503(app: Any) -> None:
    """A request that meets an outage (Redis, the broker, serving unreachable) gets 503
    naming it, not a 500: the caller may try again, nothing was wrong with the request."""
    from starlette.responses import JSONResponse

    from shared.consume import OUTAGE_TYPES, outage_of

    async def unavailable(_: Any, exc: Exception) -> Any:
        return JSONResponse(
            {"error": "DependencyUnavailable", "detail": f"try again: {outage_of(exc)}"}, 503
        )

    for kind in OUTAGE_TYPES:
        app.add_exception_handler(kind, unavailable)


def service_routes(
    app: Any,
    registry: Any,
    ready: Any,
    root_error: type[Exception],
    ok: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
) -> None:
    """What every service's app serves besides its own API: ``/metrics``, ``/livez``,
    ``/healthz`` (503 naming what is down, from ``ready()``; when up, ``ok`` or what
    ``ok()`` says now), outages as 503, and its root exception as ``{"error",
    "detail"}`` with the class's (or the instance's) ``status_code``."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    from shared.lease import Fenced
    from shared.metrics import metrics_endpoint

    app.add_route("/metrics", metrics_endpoint(registry), methods=["GET"])
    app.add_route("/livez", livez, methods=["GET"])
    answer_outages_with_503(app)

    async def error(_: Request, exc: Exception) -> JSONResponse:
        status = int(getattr(exc, "status_code", 500))
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status)

    app.add_exception_handler(root_error, error)

    async def deposed(_: Request, exc: Exception) -> JSONResponse:
        # The lease moved while this replica acted on a request: nothing was written
        # (the write carried the old token); asked again, the new leader acts.
        return JSONResponse({"error": "NotLeader", "detail": f"try again: {exc}"}, 503)

    app.add_exception_handler(Fenced, deposed)

    async def healthz(_: Request) -> JSONResponse:
        reason = await ready()
        if reason:
            return JSONResponse({"status": "down", "reason": reason}, 503)
        extra = ok() if callable(ok) else ok
        return JSONResponse({"status": "ok", **(extra or {})})

    app.add_route("/healthz", healthz, methods=["GET"], include_in_schema=False)


DOCS_ASSETS = "/docs-assets"


def service_app(title: str, lifespan: Any, description: str | None = None) -> Any:
    """A service's FastAPI app whose ``/docs`` needs no network: the Swagger UI scripts and
    styles come from the ``swagger-ui-bundle`` wheel, served by the app itself (FastAPI's
    default page loads them from a CDN, which a cluster without internet never reaches).
    ``/redoc`` is off for the same reason."""
    import swagger_ui_bundle
    from fastapi import FastAPI
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from starlette.requests import Request

    app = FastAPI(
        title=title,
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description=description or "",
    )
    app.mount(
        DOCS_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets"
    )

    async def docs(_: Request) -> Any:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{title} — API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )

    app.add_route("/docs", docs, methods=["GET"], include_in_schema=False)
    return app
