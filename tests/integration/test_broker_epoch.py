"""The dev stack's epoch record on a real broker: written once, and judged only by a
service that saw it (the restart that loses it: tests/e2e/test_dev_broker.py)."""

from __future__ import annotations

import asyncio

import pytest

from services.promoter.errors import ServingUnavailable
from services.promoter.serving import ServingFleet, replicas
from shared import kafka as k
from shared.settings import CommonSettings

pytestmark = pytest.mark.integration


def test_the_epoch_is_written_once_and_a_broker_without_one_is_never_judged(kafka: str) -> None:
    common = CommonSettings(kafka_bootstrap=kafka, kafka_idempotent=False)

    async def go() -> tuple[bool, bool, str | None]:
        first = await k.write_epoch(common)
        again = await k.write_epoch(common)
        epoch = k.BrokerEpoch(common)
        try:
            return first, again, await epoch.lost()
        finally:
            await epoch.close()

    first, again, lost = asyncio.run(go())
    assert (first, again, lost) == (True, False, None)


def test_an_unreachable_broker_is_health_s_to_report_not_the_epoch_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    epoch = k.BrokerEpoch(CommonSettings(kafka_bootstrap="127.0.0.1:1"))
    epoch.seen = True

    async def down(topic: str) -> dict[int, int]:
        raise ConnectionError("broker down")

    monkeypatch.setattr(epoch.offsets, "end_offsets", down)
    assert asyncio.run(epoch.lost()) is None


def test_replicas_that_cannot_be_named_are_an_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def no_such_host(*a: object, **kw: object) -> list[object]:
        raise socket.gaierror(-2, "Name or service not known")  # no lookup leaves the host

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    with pytest.raises(ServingUnavailable, match=r"cannot resolve dns:///serving-pods:8500"):
        replicas("dns:///serving-pods:8500")
    with pytest.raises(ServingUnavailable, match="no model server in ''"):
        ServingFleet("").clients()
