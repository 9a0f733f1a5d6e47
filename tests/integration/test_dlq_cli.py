"""`ctrain dlq list|show|redrive` against a real broker and Redis: letters of the three
dead-letter topics listed by reason, one shown with its payload, selected ones sent back
to their source topics, audited, and a letter redriven twice counted once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from ctrain import dlq
from ctrain.cli import main
from shared import topics
from shared.events import DeadLetter, DlqSource, EventDeadLetter, WindowDeadLetter
from shared.kafka import ensure_topics, read_to_end
from shared.settings import CommonSettings

pytestmark = pytest.mark.integration


def letters(u: str) -> list[DeadLetter | WindowDeadLetter | EventDeadLetter]:
    def ex(offset: int, reason: str, payload: str, topic: str = topics.EXAMPLES) -> DeadLetter:
        return DeadLetter(
            id=f"dlq-{u}-{offset}",
            reason=reason,
            message=f"{reason} at {offset}",
            source=DlqSource(topic=topic, partition=0, offset=offset),
            payload=payload,
            source_key=f"k{offset}",
        )

    return [
        ex(3, "missing_feature", '{"fare": 1.0}'),
        ex(4, "missing_feature", '{"fare": 2.0}'),
        ex(9, "not_json", "nope"),
        ex(1, "not_json", "posted", topic="http"),
        WindowDeadLetter(
            id=f"wdlq-{u}",
            reason="ShardUnreadable",
            message="cannot read",
            source=DlqSource(topic=topics.WINDOWS, partition=1, offset=5),
            payload='{"event_type": "window_closed", "window_id": "w-1"}',
            window_id="w-1",
            stream="taxi",
        ),
        EventDeadLetter(
            id=f"edlq-{u}",
            reason="invalid_event",
            message="not a ModelCandidate",
            source=DlqSource(topic=topics.CANDIDATES, partition=0, offset=2),
            payload="{}",
            service="promoter",
            group_id="ctrain-promoter",
        ),
    ]


def out_json(capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_list_show_redrive_audit_and_count_once(
    kafka: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = CommonSettings(kafka_bootstrap=kafka, kafka_idempotent=False, redis_url=redis_url)
    asyncio.run(ensure_topics(common, partitions=1))
    u = tmp_path.name[-8:]
    ls = letters(u)

    async def produce() -> None:
        p = AIOKafkaProducer(bootstrap_servers=kafka)
        await p.start()
        queue = {
            DeadLetter: topics.EXAMPLES_DLQ,
            WindowDeadLetter: topics.WINDOWS_DLQ,
            EventDeadLetter: topics.EVENTS_DLQ,
        }
        for letter in [*ls, ls[0]]:  # the first one twice: a retried dead-lettering
            await p.send_and_wait(queue[type(letter)], letter.to_bytes())
        await p.stop()

    asyncio.run(produce())
    monkeypatch.setenv("CTRAIN_KAFKA_BOOTSTRAP", kafka)
    monkeypatch.setenv("CTRAIN_KAFKA_IDEMPOTENT", "false")
    monkeypatch.setenv("CTRAIN_REDIS_URL", redis_url)
    monkeypatch.setenv("CTRAIN_DEV_STATE_DIR", str(tmp_path / "dev"))
    asyncio.run(Redis.from_url(redis_url).delete(dlq.REDRIVEN, dlq.AUDIT))

    assert main(["dlq", "list", "-o", "json"]) == 0
    listed = out_json(capsys)
    counts = {(r["queue"], r["reason"]): r["count"] for r in listed["by_reason"]}
    assert counts == {
        ("examples", "missing_feature"): 2,
        ("examples", "not_json"): 2,
        ("windows", "ShardUnreadable"): 1,
        ("events", "invalid_event"): 1,
    }  # the letter written twice is one letter
    assert main(["dlq", "show", f"wdlq-{u}", "-o", "json"]) == 0
    shown = out_json(capsys)
    assert shown["queue"] == "windows" and shown["payload"] == ls[4].payload

    # Redrive by reason: back to the source topic with their keys, audited.
    assert main(["dlq", "redrive", "--reason", "missing_feature", "--why", "schema fixed"]) == 0
    assert "2 sent" in capsys.readouterr().out
    back = asyncio.run(read_to_end(kafka, topics.EXAMPLES))
    assert sorted((r.key, r.value) for r in back) == [
        (b"k3", b'{"fare": 1.0}'),
        (b"k4", b'{"fare": 2.0}'),
    ]
    # Again: skipped; forced: sent, yet counted once per letter.
    assert main(["dlq", "redrive", "--reason", "missing_feature", "--why", "again"]) == 0
    assert "0 sent, 2 skipped" in capsys.readouterr().out
    assert main(["dlq", "redrive", f"dlq-{u}-3", "--force", "--why", "once more"]) == 0
    capsys.readouterr()
    assert len(asyncio.run(read_to_end(kafka, topics.EXAMPLES))) == 3
    done = asyncio.run(dlq.redriven(Redis.from_url(redis_url)))
    assert len(done) == 2 and done[f"dlq-{u}-3"]["times"] == 2
    assert main(["dlq", "list", "--reason", "missing_feature", "-o", "json"]) == 0
    assert all(r["redriven"] for r in out_json(capsys)["letters"])
    trail = asyncio.run(dlq.audit(Redis.from_url(redis_url)))
    assert [(a["letter_id"], a["why"]) for a in reversed(trail)] == [
        (f"dlq-{u}-3", "schema fixed"),
        (f"dlq-{u}-4", "schema fixed"),
        (f"dlq-{u}-3", "once more"),
    ]

    # A window letter by id, to ctrain.windows keyed by its stream; an offset range.
    assert main(["dlq", "redrive", f"wdlq-{u}", "--why", "shard restored"]) == 0
    [w] = asyncio.run(read_to_end(kafka, topics.WINDOWS))
    assert w.key == b"taxi" and w.value == ls[4].payload.encode()
    assert main(["dlq", "redrive", "--queue", "events", "--from-offset", "0", "--to-offset",
                 "5", "--dry-run"]) == 0  # fmt: skip
    assert f"would send edlq-{u} -> ctrain.candidates" in capsys.readouterr().out

    # An HTTP line has no source topic: the operator names one.
    capsys.readouterr()
    assert main(["dlq", "redrive", f"dlq-{u}-1", "--why", "x"]) == 2
    assert "--to" in capsys.readouterr().out
    assert main(["dlq", "redrive", f"dlq-{u}-1", "--why", "x", "--to", topics.EXAMPLES]) == 0
    # Redrive without a selection or a reason why is refused.
    assert main(["dlq", "redrive", "--why", "all of it"]) == 2
    assert main(["dlq", "redrive", "--reason", "not_json"]) == 2
