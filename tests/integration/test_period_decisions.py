"""Decisions do not depend on partitions or arrival order: the same stream, cut over 1, 3
and 4 partitions and delivered in different interleavings, gives the same judged periods
(real TFDV on resampled taxi trips, real Redis) and the same trigger decisions."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry
from pyarrow import csv
from redis.asyncio import Redis

from ctrain.synth import Segment, arrival_orders, resample, write_windows
from services.trigger import policy as pol
from services.trigger.core import Trigger, TriggerConfig
from services.trigger.metrics import TriggerMetrics
from services.validator import checks
from services.validator.core import Validator, ValidatorConfig
from services.validator.index import RedisWindowIndex
from services.validator.metrics import ValidatorMetrics
from services.validator.schemas import SchemaStore
from shared.artifacts import ArtifactStore
from shared.events import Event, WindowClosed, WindowValidated
from shared.schema import example_spec, load_schema
from shared.shard import arrow_schema
from tests.conftest import ROOT, TAXI_CSV, TAXI_SCHEMA
from tests.integration.test_trigger_core import ScriptedBackend

pytestmark = pytest.mark.integration
CARD = "Credit Card"
# A step change in the share of card payments, and falling volume after it: the small
# periods are judged together once they add up to the validator's minimum.
PLAN = [Segment(900, 0.25)] * 5 + [Segment(900, 0.5)] * 4 + [Segment(90, 0.5)] * 4


@pytest.fixture(scope="module")
def periods() -> list[pa.Table]:
    schema = arrow_schema(example_spec(load_schema(TAXI_SCHEMA)))
    table = csv.read_csv(TAXI_CSV, convert_options=csv.ConvertOptions(strings_can_be_null=True))
    table = table.select(schema.names).cast(schema)
    rng = np.random.default_rng(11)
    return [resample(table, "payment_type", CARD, seg, rng) for seg in PLAN]


async def judge_and_decide(
    redis_url: str, root: Path, events: list[WindowClosed], partitions: int, tag: str
) -> tuple[list[WindowValidated], list[pol.Decision]]:
    redis = Redis.from_url(redis_url)
    store = ArtifactStore(str(root))

    async def ends(topic: str) -> dict[int, int]:
        return {p: 10**9 for p in range(partitions)}

    v = Validator(
        store=store,
        schemas=SchemaStore(store, str(TAXI_SCHEMA)),
        index=RedisWindowIndex(redis),
        metrics=ValidatorMetrics(CollectorRegistry()),
        config=ValidatorConfig(
            min_examples=200,
            model=f"m-{tag}",
            defaults=checks.Defaults(
                skew_linf=0.1, ignore=frozenset({"trip_start_timestamp", "trip_start_month"})
            ),
        ),
        redis=redis,
        end_offsets=ends,
    )
    published: list[Event] = []

    async def publish(e: Event) -> None:
        published.append(e)

    trigger = Trigger(
        redis=redis,
        store=store,
        backend=ScriptedBackend(),
        metrics=TriggerMetrics(CollectorRegistry()),
        config=TriggerConfig(
            model=f"m-{tag}",
            module_path=str(ROOT / "examples/taxi/model.py"),
            schema_path=str(TAXI_SCHEMA),
            policy=pol.Policy(
                consecutive=2,
                cooldown_s=0,
                min_train_examples=1500,
                min_eval_examples=800,
                clock="event",
                post_change_share=0,  # the training choice is not what this tests
            ),
        ),
        publish=publish,
    )
    judged: list[WindowValidated] = []
    decisions: list[pol.Decision] = []
    for ev in events:
        await v.handle(ev)
        # now=0: the grace time never runs out; completeness comes from the partitions alone.
        out = await v.assemble(ev.stream, ev, now=0.0)
        await v.sent(ev.stream, [r.window_id for r in out])
        for r in out:
            judged.append(r)
            d = await trigger.on_validation(r)
            if d is not None:
                decisions.append(d)
        await asyncio.gather(*trigger.followers.values())
    await redis.aclose()
    return judged, decisions


def summary(judged: list[WindowValidated], decisions: list[pol.Decision]) -> list[Any]:
    periods = [
        (
            r.window_start,
            r.window_end,
            r.example_count,
            r.verdict,
            r.complete,
            sorted(
                (f.name, k, round(d.value, 9))
                for f in r.features
                for k, d in (("drift", f.drift), ("skew", f.skew))
                if d is not None and d.value is not None
            ),
        )
        for r in judged
    ]
    # Run and candidate ids hash the model name, which differs per configuration here.
    taken = [
        (
            d.take,
            d.trigger,
            d.guard,
            d.train_examples,
            d.eval_examples,
            re.sub(r"(run|cand)-[0-9a-f]+", r"\1-*", d.reason),
        )
        for d in decisions
    ]
    return [periods, taken]


def test_same_decisions_whatever_the_partitions_and_arrival_order(
    redis_url: str, tmp_path: Path, periods: list[pa.Table]
) -> None:
    schema = arrow_schema(example_spec(load_schema(TAXI_SCHEMA)))
    results = []
    for partitions, seed in [(1, 0), (3, 1), (4, 2), (3, 3)]:
        tag = f"{tmp_path.name}-{partitions}-{seed}"
        root = tmp_path / tag
        events = write_windows(
            periods, root, f"s-{tag}", schema, 86_400, partitions=partitions, seed=seed
        )
        events = arrival_orders(events, seed)
        judged, decisions = asyncio.run(judge_and_decide(redis_url, root, events, partitions, tag))
        results.append(summary(judged, decisions))
    first = results[0]
    whole = [p for p in first[0] if (p[1] - p[0]).days == 1]
    # Every period judged once, in event-time order, complete, with all its examples.
    assert [p[0] for p in whole] == sorted(p[0] for p in whole)
    assert [p[2] for p in whole] == [seg.size for seg in PLAN]
    assert all(p[4] for p in first[0])
    # The small periods after the shift are measured together and still show it.
    groups = [p for p in first[0] if (p[1] - p[0]).days > 1]
    assert [(g[2], g[3]) for g in groups] == [(270, "skew")]
    # One run, on examples not windows, then the trigger waits for the candidate's fate.
    taken = [d for d in first[1] if d[0]]
    assert [(d[1], d[3], d[4]) for d in taken] == [("skew", 1800, 900)]
    assert all(d[2] == "disarmed" for d in first[1][first[1].index(taken[0]) + 1 :])
    for other in results[1:]:
        assert other == first
