"""Run an ASGI app under uvicorn with ctrain's shutdown contract.

uvicorn re-raises SIGTERM after its graceful shutdown, so the process would die
by the signal even when it drained cleanly. Our services exit 0 after a clean
drain (the orchestrator then knows nothing was lost), so the handlers here only
start the shutdown.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Generator
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
