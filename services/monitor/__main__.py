"""``python -m services.monitor``: run the monitor until SIGTERM."""

from __future__ import annotations

from services.monitor.app import create_app
from services.monitor.settings import load_settings
from shared.logging import setup_logging
from shared.serve import serve


def main() -> None:
    common, settings = load_settings()
    setup_logging("monitor", common.log_level, common.log_json)
    serve(create_app(common, settings), settings.http_host, settings.http_port)


if __name__ == "__main__":
    main()
