"""schemathesis against the promoter's own OpenAPI schema: no input yields a 5xx."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shared.kafka import ensure_topics
from shared.settings import CommonSettings
from tests.integration.support import ingest_env, start_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TOKENS = {"tok-admin": {"identity": "root", "role": "admin"}}


@pytest.mark.timeout(600)
def test_no_server_errors(kafka: str, redis_url: str, tmp_path: Path) -> None:
    asyncio.run(ensure_topics(CommonSettings(kafka_bootstrap=kafka, kafka_idempotent=False)))
    env = ingest_env(
        kafka,
        redis_url,
        tmp_path,
        CTRAIN_PROMOTER_TOKENS=json.dumps(TOKENS),
        CTRAIN_SERVING_GRPC="127.0.0.1:1",
        CTRAIN_SERVING_BASE=str(tmp_path / "serving"),
    )
    svc = start_service("promoter", env, tmp_path / "promoter.log")
    svc.wait_healthy(path="/livez")  # no serving here: /healthz says so (503)
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert exe, "schemathesis is in the dev extra"
    try:
        out = subprocess.run(
            [
                exe,
                "run",
                f"{svc.url}/openapi.json",
                "--checks",
                "not_a_server_error",
                "-H",
                "Authorization: Bearer tok-admin",
                "--max-examples",
                "25",
                "--workers",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=500,
        )
        assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
        m = re.search(r"(\d+) generated, (\d+) passed", out.stdout)
        assert m and int(m.group(1)) > 100 and m.group(1) == m.group(2), out.stdout[-3000:]
        assert re.search(r"Tested: 7", out.stdout), out.stdout[-3000:]
    finally:
        svc.proc.send_signal(signal.SIGTERM)
        svc.proc.wait(timeout=60)
