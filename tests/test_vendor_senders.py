"""The TikTok, Pinterest and Snapchat senders against their fakes (real HTTP on loopback):
delivery, a refused event isolated, throttling, outages and refused tokens — and the token
never in what the sender reports."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx
import pytest
from fakes.capi import FakePinterest, FakeSnapchat, FakeTikTok
from tagserver.tags.pinterest_capi import PinterestCapiTag
from tagserver.tags.snapchat_capi import SnapchatCapiTag
from tagserver.tags.tiktok_events import TikTokEventsTag

from tagserver.event import RequestContext
from tagserver.plugins import Delivery, FireContext, Message
from tagserver.settings import Settings

TOKEN = "vendorTOKENsecret-0123456789"
UA = "Mozilla/5.0 (X11; Linux x86_64)"
VENDORS = {
    "tiktok": (FakeTikTok, TikTokEventsTag, "tiktok_api_url",
               {"pixel_code": "CABC123DEF456", "access_token": TOKEN, "api_version": "v1.3"}),
    "pinterest": (FakePinterest, PinterestCapiTag, "pinterest_api_url",
                  {"ad_account_id": "549755885175", "access_token": TOKEN}),
    "snapchat": (FakeSnapchat, SnapchatCapiTag, "snapchat_api_url",
                 {"pixel_id": "1ec32188-754e-4be2-8e55-c949a984a39f", "access_token": TOKEN}),
}  # fmt: skip


@pytest.fixture(params=list(VENDORS))
def vendor(request: pytest.FixtureRequest) -> Any:
    fake_class, tag_class, setting, params = VENDORS[request.param]
    with fake_class(token=TOKEN) as fake:
        settings = Settings.from_env({}, **{setting: fake.url})
        yield fake, tag_class, settings, params


def built(tag_class: Any, settings: Settings, params: dict[str, Any], count: int) -> tuple:
    """Messages as the outbox hands them over, built by the tag itself, and their route."""
    ctx_request = RequestContext.from_scope(
        method="POST", url="https://sgtm.shop.test/api/events", path="/api/events", query={},
        headers={}, cookies={}, peer_ip="127.0.0.1", scheme="https", settings=settings,
    )  # fmt: skip
    tag = tag_class("t", {}, settings)
    defaults = {p.name: p.default for p in tag_class.params if p.default is not None}
    out, route = [], {}
    for i in range(count):
        event = {"event_name": "purchase", "event_id": f"ev-{i}", "event_time": int(time.time()),
                 "page_location": "https://www.shop.test/done", "ip_override": "203.0.113.7",
                 "user_agent": UA, "value": 10 + i, "currency": "EUR",
                 "user_data": {"email_address": f"user{i}@example.com"}}  # fmt: skip
        ctx = FireContext(request=ctx_request, settings=settings, tag_name="t")
        [outgoing] = tag.fire(event, {**defaults, **params}, ctx)
        route = outgoing.route
        out.append(Message(i + 1, outgoing.destination, outgoing.payload, outgoing.dedup_id, 0,
                           time.time()))  # fmt: skip
    return out, route


async def send(tag_class: Any, settings: Settings, route: dict[str, Any], batch: list[Message]
               ) -> list[Delivery]:  # fmt: skip
    async with httpx.AsyncClient() as http:
        return await tag_class.sender_class(http, settings).send(route, batch)


def shown(deliveries: list[Delivery]) -> str:
    return json.dumps([d.__dict__ for d in deliveries], default=str)


async def test_a_batch_is_delivered_in_one_request(vendor: Any) -> None:
    fake, tag_class, settings, params = vendor
    batch, route = built(tag_class, settings, params, 5)
    results = await send(tag_class, settings, route, batch)
    assert [r.outcome for r in results] == ["delivered"] * 5
    assert len(fake.requests) == 1 and fake.received_ids() == [f"ev-{i}" for i in range(5)]
    assert TOKEN not in shown(results)


async def test_a_refused_event_is_isolated_the_rest_delivered(vendor: Any) -> None:
    fake, tag_class, settings, params = vendor
    fake.reject = {"ev-5": "this event is refused"}
    batch, route = built(tag_class, settings, params, 12)
    results = await send(tag_class, settings, route, batch)
    assert [r.outcome for r in results].count("delivered") == 11
    assert results[5].outcome == "permanent" and "this event is refused" in results[5].error
    assert sorted(fake.received_ids()) == sorted(f"ev-{i}" for i in range(12) if i != 5)


async def test_throttling_waits_at_least_a_minute_and_stops_calling(vendor: Any) -> None:
    fake, tag_class, settings, params = vendor
    fake.mode = "throttle"
    batch, route = built(tag_class, settings, params, 4)
    results = await send(tag_class, settings, route, batch)
    assert {r.outcome for r in results} == {"retry"}
    assert all(r.retry_after is not None and r.retry_after >= 60 for r in results)
    assert len(fake.requests) == 1  # no splitting, no tight loop


async def test_an_outage_is_retried(vendor: Any) -> None:
    fake, tag_class, settings, params = vendor
    fake.mode = "outage"
    batch, route = built(tag_class, settings, params, 3)
    results = await send(tag_class, settings, route, batch)
    assert {r.outcome for r in results} == {"retry"} and len(fake.requests) == 1


async def test_a_refused_token_is_never_retried_nor_shown(
    vendor: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake, tag_class, settings, params = vendor
    fake.mode = "invalid_token"
    batch, route = built(tag_class, settings, params, 3)
    with caplog.at_level(logging.DEBUG):
        results = await send(tag_class, settings, route, batch)
    assert {r.outcome for r in results} == {"permanent"} and len(fake.requests) == 1
    assert TOKEN not in shown(results) and TOKEN not in caplog.text
    assert any(r.levelno == logging.ERROR for r in caplog.records)  # an operator must act


async def test_an_unreachable_vendor_is_retried_without_the_token(vendor: Any) -> None:
    fake, tag_class, settings, params = vendor
    batch, route = built(tag_class, settings, params, 2)
    fake.stop()
    results = await send(tag_class, settings, route, batch)
    assert {r.outcome for r in results} == {"retry"} and TOKEN not in shown(results)
