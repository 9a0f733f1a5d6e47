"""A service reads each topic in a consumer group of its own (docs/architecture.md,
"Consumer groups"): a member joining one group must not make the consumers of the
service's other topics rejoin."""

from __future__ import annotations

from typing import Any

import pytest

from shared.kafka import batches_of_events, make_router, one_event_at_a_time, topic_group
from shared.settings import CommonSettings

pytestmark = pytest.mark.unit


def test_each_subscriber_of_a_service_has_the_group_of_its_topic() -> None:
    router = make_router(CommonSettings(kafka_bootstrap="127.0.0.1:1"))

    @one_event_at_a_time(router, "ctrain.candidates", "ctrain-promoter")
    async def candidates(msg: Any) -> None: ...

    @one_event_at_a_time(router, "ctrain.quality", "ctrain-promoter")
    async def quality(msg: Any) -> None: ...

    @batches_of_events(router, "ctrain.labels", "ctrain-promoter", 10)
    async def labels(msg: Any) -> None: ...

    groups = sorted(s.group_id for s in router.broker.subscribers)
    assert groups == [
        "ctrain-promoter.ctrain.candidates",
        "ctrain-promoter.ctrain.labels",
        "ctrain-promoter.ctrain.quality",
    ]
    assert topic_group("ctrain-trigger", "ctrain.validations") == (
        "ctrain-trigger.ctrain.validations"
    )
