"""Batching tag types linger before a batch far from full: messages arriving at a modest rate
reach the vendor in fewer requests, each exactly once, and a lone one is not held for longer
than `batch_linger_seconds`. Asserted on what the fake vendor receives, on both outboxes."""

from __future__ import annotations

import asyncio
import time

import pytest
from fakes.vendor import FakeVendor

from tagserver.delivery.dispatch import Dispatcher
from tagserver.delivery.outbox_backend import OutboxBackend, open_outbox
from tagserver.plugins import Delivery, Message, Outgoing, Registry, Sender, Tag
from tagserver.settings import Settings, SettingsError


class ListSender(Sender):
    """Posts a batch as one JSON list: the vendor sees how messages were grouped."""

    async def send(self, route: dict, batch: list[Message]) -> list[Delivery]:
        response = await self.http.post(route["url"], json=[m.payload for m in batch])
        outcome = "delivered" if response.status_code == 200 else "retry"
        return [Delivery(outcome, status=response.status_code) for _ in batch]


class ListTag(Tag):
    type_name = "list_test"
    batch_size = 50
    sender_class = ListSender


def message(n: int, url: str) -> Outgoing:
    return Outgoing("list:1", {"n": n}, f"m{n}", "list_test", route={"url": url})


def delivered(vendor: FakeVendor) -> list[int]:
    return [item["n"] for r in vendor.accepted for item in r.json()]


async def running(tmp_path, backend: dict, **settings: float) -> tuple[OutboxBackend, Dispatcher]:
    config = Settings(data_dir=str(tmp_path), **backend, **settings)
    outbox = open_outbox(config)
    await outbox.start()
    dispatcher = Dispatcher(outbox, Registry(tags={"list_test": ListTag}), config)
    await dispatcher.start()
    return outbox, dispatcher


async def wait_for(vendor: FakeVendor, count: int, timeout: float = 15.0) -> float:
    """Seconds until the vendor has accepted `count` messages."""
    started = time.monotonic()
    while len(delivered(vendor)) < count and time.monotonic() - started < timeout:
        await asyncio.sleep(0.005)
    return time.monotonic() - started


@pytest.fixture
def vendor():
    with FakeVendor() as v:
        yield v


async def test_messages_at_a_modest_rate_share_requests_and_each_arrives_once(
    tmp_path, outbox_backend, vendor
):
    outbox, dispatcher = await running(tmp_path, outbox_backend, batch_linger_seconds=0.05)
    try:
        for n in range(60):  # ~200 hits/s, one message each, each put stored before the next
            await outbox.put([message(n, vendor.url + "/batch")])
            await asyncio.sleep(0.005)
        await wait_for(vendor, 60)
        await asyncio.sleep(0.2)  # a second copy would have arrived by now
    finally:
        await dispatcher.close()
        await outbox.close()
    assert sorted(delivered(vendor)) == list(range(60))  # each exactly once
    assert len(vendor.accepted) <= 15  # one request per message without lingering


async def test_a_lone_message_waits_no_longer_than_the_linger(tmp_path, outbox_backend, vendor):
    outbox, dispatcher = await running(tmp_path, outbox_backend, batch_linger_seconds=0.3)
    try:
        await asyncio.sleep(0.2)  # an idle lane
        await outbox.put([message(1, vendor.url + "/batch")])
        waited = await wait_for(vendor, 1)
    finally:
        await dispatcher.close()
        await outbox.close()
    assert delivered(vendor) == [1]
    assert 0.25 <= waited <= 0.3 + 1.0  # it lingered, then went (slack for a loaded machine)


async def test_a_backlog_of_full_batches_does_not_linger(tmp_path, outbox_backend, vendor):
    outbox, dispatcher = await running(tmp_path, outbox_backend, batch_linger_seconds=1.0)
    try:
        # 800 messages = 16 full batches: lingering before each claim would take 4 s at least
        await outbox.put([message(n, vendor.url + "/batch") for n in range(800)])
        waited = await wait_for(vendor, 800)
    finally:
        await dispatcher.close()
        await outbox.close()
    assert sorted(delivered(vendor)) == list(range(800))
    assert waited < 3.0  # the first claim lingered (an idle lane); full ones went at once


def test_the_linger_is_bounded():
    assert Settings.from_env({"TAGSERVER_BATCH_LINGER_SECONDS": "0"}).batch_linger_seconds == 0
    with pytest.raises(SettingsError, match="BATCH_LINGER_SECONDS"):
        Settings.from_env({"TAGSERVER_BATCH_LINGER_SECONDS": "5"})
