"""``python -m services.trigger``: run the trigger service until SIGTERM."""

from __future__ import annotations

import logging
import sys

from services.trigger.app import create_app
from services.trigger.settings import load_settings
from shared.logging import setup_logging
from shared.serve import serve
from shared.settings import SettingsError


def main() -> None:
    common, settings = load_settings()
    setup_logging("trigger", common.log_level, common.log_json)
    try:
        app = create_app(common, settings)
    except SettingsError as e:
        logging.getLogger("services.trigger").critical("cannot start: %s", e)
        sys.exit(2)
    serve(app, settings.http_host, settings.http_port)


if __name__ == "__main__":
    main()
