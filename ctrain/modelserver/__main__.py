"""``python -m ctrain.modelserver --model_config_file=... --port=8500 --rest_api_port=8501``."""

from __future__ import annotations

import os


def _run() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    from ctrain.modelserver.server import main

    return main()


if __name__ == "__main__":
    raise SystemExit(_run())
