"""``python -m services.validator``: run the validator until SIGTERM."""

from __future__ import annotations

from services.validator.app import create_app
from services.validator.settings import load_settings
from shared.logging import setup_logging
from shared.serve import serve


def main() -> None:
    common, settings = load_settings()
    setup_logging("validator", common.log_level, common.log_json)
    serve(create_app(common, settings), settings.http_host, settings.http_port)


if __name__ == "__main__":
    main()
