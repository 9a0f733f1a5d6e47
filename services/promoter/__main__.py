"""``python -m services.promoter``: run the promoter until SIGTERM."""

from __future__ import annotations

from services.promoter.app import create_app
from services.promoter.settings import load_settings
from shared.logging import setup_logging
from shared.serve import serve


def main() -> None:
    common, settings = load_settings()
    setup_logging("promoter", common.log_level, common.log_json)
    serve(create_app(common, settings), settings.http_host, settings.http_port)


if __name__ == "__main__":
    main()
