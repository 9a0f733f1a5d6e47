"""``python -m services.ingest``: run the ingest service until SIGTERM."""

from __future__ import annotations

import uvicorn

from services.ingest.app import create_app
from services.ingest.settings import load_settings
from shared.logging import setup_logging


def main() -> None:
    common, settings = load_settings()
    setup_logging("ingest", common.log_level, common.log_json)
    app = create_app(common, settings)
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
