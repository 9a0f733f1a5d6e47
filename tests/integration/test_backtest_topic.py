"""``ctrain backtest --source topic`` reads the period verdicts on ctrain.validations of a
real broker, skipping what is not a validation; and the end offsets the validator
trusts idle announcements by are the broker's own."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from rich.console import Console

from ctrain import cli
from ctrain.commands import common as cli_common
from shared import topics
from shared.kafka import SourceOffsets, ensure_topics
from shared.settings import CommonSettings
from tests.unit.test_backtest_cli import _recorded

pytestmark = pytest.mark.integration


def test_backtest_from_the_topic(
    kafka: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = CommonSettings(kafka_bootstrap=kafka, kafka_idempotent=False)
    asyncio.run(ensure_topics(common, partitions=2))
    _recorded(tmp_path, "rec", [0.02] * 6 + [0.2] * 6)
    bodies = [p.read_bytes() for p in sorted((tmp_path / "validations" / "rec").glob("*/*.json"))]

    async def produce() -> dict[int, int]:
        p = AIOKafkaProducer(bootstrap_servers=kafka)
        await p.start()
        try:
            await p.send_and_wait(topics.VALIDATIONS, b"not json at all", key=b"rec")
            for body in bodies:
                await p.send_and_wait(topics.VALIDATIONS, body, key=b"rec")
        finally:
            await p.stop()
        offsets = SourceOffsets(common)
        try:
            return await offsets.end_offsets(topics.VALIDATIONS)
        finally:
            await offsets.close()

    ends = asyncio.run(produce())
    assert sorted(ends) == [0, 1] and sum(ends.values()) == len(bodies) + 1
    screen = io.StringIO()
    monkeypatch.setattr(cli_common, "console", Console(file=screen, width=200))
    monkeypatch.setenv("CTRAIN_KAFKA_BOOTSTRAP", kafka)
    monkeypatch.setenv("CTRAIN_DEV_STATE_DIR", str(tmp_path / "nodev"))
    args = ["backtest", "--stream", "rec", "--source", "topic", "-o", "json"]
    # The newest periods before evaluation (the training choice is not what this tests).
    flags = ["--min-train-examples", "2000", "--min-eval-examples", "1000",
             "--post-change-share", "0"]  # fmt: skip
    assert cli.main([*args, *flags]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["periods"]) == 12 and report["runs"][0]["index"] == 7
    assert "skipped 1 records that are not validations" in screen.getvalue()
