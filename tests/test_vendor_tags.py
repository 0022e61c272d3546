"""The TikTok, Pinterest and Snapchat tags: normalization tables (with pre-hashed input), event
names, refusal checks, dry run, and the token kept out of what a user sees."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pytest
from tagserver.tags.pinterest_capi import PinterestCapiTag
from tagserver.tags.snapchat_capi import SnapchatCapiTag
from tagserver.tags.tiktok_events import TikTokEventsTag

from tagserver.event import RequestContext
from tagserver.plugins import FireContext, TagRejected
from tagserver.settings import Settings

SETTINGS = Settings()
NOW = int(time.time())
UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 Safari/605.1.15"
SNAP_PIXEL = "1ec32188-754e-4be2-8e55-c949a984a39f"
TOKEN = "vendorTOKENsecret-0123456789"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def request(cookies: dict[str, str] | None = None) -> RequestContext:
    return RequestContext.from_scope(
        method="POST", url="https://sgtm.shop.test/collect", path="/collect", query={},
        headers={"user-agent": UA}, cookies=cookies or {}, peer_ip="198.51.100.4",
        scheme="https", settings=SETTINGS,
    )  # fmt: skip


def event(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_name": "purchase",
        "event_id": "order-1001",
        "event_time": NOW - 30,
        "page_location": "https://www.shop.test/done",
        "ip_override": "203.0.113.7",
        "user_agent": UA,
        "currency": "eur",
        "items": [{"item_id": "SKU-1", "price": 19.95, "quantity": 2}],
    }
    base.update(overrides)
    return base


def fire(tag_class: Any, ev: dict[str, Any], params: dict[str, Any] | None = None,
         cookies: dict[str, str] | None = None) -> tuple[list[Any], FireContext]:  # fmt: skip
    tag = tag_class("t", {}, SETTINGS)
    defaults = {p.name: p.default for p in tag_class.params if p.default is not None}
    ctx = FireContext(request=request(cookies), settings=SETTINGS, tag_name="t")
    return tag.fire(ev, {**defaults, **(params or {})}, ctx), ctx


def dry(tag_class: Any, ev: dict[str, Any], **kw: Any) -> dict[str, Any]:
    outgoing, ctx = fire(tag_class, ev, **kw)
    assert outgoing == []
    assert ctx.dry_runs is not None
    return ctx.dry_runs[0]["payload"]["data"][0]  # type: ignore[no-any-return]


def with_user(**user_data: Any) -> dict[str, Any]:
    return event(user_data=user_data)


# -- normalization tables ------------------------------------------------------------------------

TIKTOK_TABLE = [
    ({"email_address": " Jane.Doe@Example.COM "}, "email", [sha("jane.doe@example.com")]),
    ({"phone_number": "+1 (213) 373-4253"}, "phone", [sha("+12133734253")]),
    ({"phone_number": "+86 138 0000 0000"}, "phone", [sha("13800000000")]),  # China: no 86
    ({"phone_number": "(213) 373-4253", "address": {"country": "US"}}, "phone",
     [sha("+12133734253")]),
    ({"address": {"first_name": "Mary Ann"}}, "first_name", sha("maryann")),
    ({"address": {"postal_code": "SW1A 1AA", "country": "GB"}}, "zip_code", sha("sw1a1aa")),
    ({"address": {"city": "San Francisco"}}, "city", "sanfrancisco"),  # unhashed
    ({"address": {"country": "United States"}}, "country", "us"),
    ({"sha256_email_address": sha("jane@example.com").upper()}, "email",
     [sha("jane@example.com")]),  # pre-hashed: passed through, never hashed twice
    ({"email_address": sha("x@y.z")}, "email", [sha("x@y.z")]),
]  # fmt: skip


@pytest.mark.parametrize(("user_data", "key", "expected"), TIKTOK_TABLE)
def test_tiktok_normalization(user_data, key, expected):
    assert dry(TikTokEventsTag, with_user(**user_data))["user"][key] == expected


def test_tiktok_external_id_keeps_case_and_is_hashed():
    user = dry(TikTokEventsTag, event(user_id=" Cust-42 "))["user"]
    assert user["external_id"] == [sha("Cust-42")]


PINTEREST_TABLE = [
    ({"email_address": " Jane.Doe@Example.COM "}, "em", [sha("jane.doe@example.com")]),
    ({"phone_number": "+44 (0)20 7946 0958"}, "ph", [sha("442079460958")]),
    ({"gender": "Non-binary"}, "ge", [sha("n")]),
    ({"gender": "Female"}, "ge", [sha("f")]),
    ({"date_of_birth": "1997-12-26"}, "db", [sha("19971226")]),
    ({"address": {"city": "Menlo Park"}}, "ct", [sha("menlopark")]),
    ({"address": {"region": "California", "country": "US"}}, "st", [sha("ca")]),
    ({"address": {"postal_code": "94025-1234", "country": "US"}}, "zp", [sha("94025")]),
    ({"address": {"country": "USA"}}, "country", [sha("us")]),
    ({"email_address": [sha("a@b.co"), "B@C.co"]}, "em", [sha("a@b.co"), sha("b@c.co")]),
    ({"sha256_phone_number": sha("16505551212")}, "ph", [sha("16505551212")]),
]  # fmt: skip


@pytest.mark.parametrize(("user_data", "key", "expected"), PINTEREST_TABLE)
def test_pinterest_normalization(user_data, key, expected):
    assert dry(PinterestCapiTag, with_user(**user_data))["user_data"][key] == expected


SNAP_TABLE = [
    ({"email_address": "Person@Example.com"}, "em",
     ["542d240129883c019e106e3b1b2d3f3cb3537c43c425364de8e951d5a3083345"]),  # Snap's example
    ({"phone_number": "+44 844 412 4653"}, "ph",
     ["dc008fda46e2e64002cf2f82a4906236282d431c4f75e5b60bfe79fc48546383"]),  # Snap's example
    ({"phone_number": "0044 844 412 4653"}, "ph", [sha("448444124653")]),
    ({"address": {"first_name": "Raphaël"}}, "fn",
     ["e74bb89e718fe1e19c422a48382870399f8bf7ca8dfa008739e75b0be76627b7"]),  # Snap's, NFC
    ({"address": {"first_name": "Raphae\u0308l"}}, "fn",
     ["e74bb89e718fe1e19c422a48382870399f8bf7ca8dfa008739e75b0be76627b7"]),  # NFD input
    ({"address": {"region": "CA", "country": "US"}}, "st", [sha("ca")]),
    ({"sha256_email_address": sha("person@example.com")}, "em", [sha("person@example.com")]),
]  # fmt: skip


@pytest.mark.parametrize(("user_data", "key", "expected"), SNAP_TABLE)
def test_snapchat_normalization(user_data, key, expected):
    assert dry(SnapchatCapiTag, with_user(**user_data))["user_data"][key] == expected


# -- names, bodies, click ids ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag_class", "name", "expected", "field"),
    [
        (TikTokEventsTag, "page_view", "Pageview", "event"),
        (TikTokEventsTag, "purchase", "Purchase", "event"),
        (TikTokEventsTag, "generate_lead", "Lead", "event"),
        (TikTokEventsTag, "my_event", "my_event", "event"),
        (PinterestCapiTag, "purchase", "checkout", "event_name"),
        (PinterestCapiTag, "PageView", "page_visit", "event_name"),
        (PinterestCapiTag, "my_event", "custom", "event_name"),
        (SnapchatCapiTag, "add_to_cart", "ADD_CART", "event_name"),
        (SnapchatCapiTag, "begin_checkout", "START_CHECKOUT", "event_name"),
    ],
)
def test_event_names(tag_class, name, expected, field):
    ev = event(event_name=name, value=1)
    assert dry(tag_class, ev)[field] == expected


def test_event_name_map_wins():
    ev = event(event_name="newsletter")
    assert (
        dry(SnapchatCapiTag, ev, params={"event_name_map": {"newsletter": "CUSTOM_EVENT_1"}})[
            "event_name"
        ]
        == "CUSTOM_EVENT_1"
    )


def test_tiktok_body_shape_and_click_ids():
    ev = event(page_location="https://www.shop.test/p?ttclid=E.C.P.AbC123", language="en-US",
               search_term=None, transaction_id=4711)  # fmt: skip
    sent = dry(TikTokEventsTag, ev, cookies={"_ttp": "2F7h37YkS1j57AYSKTI7IHhJPYH"})
    assert sent["event_id"] == "order-1001" and isinstance(sent["event_time"], int)
    assert sent["user"]["ttclid"] == "E.C.P.AbC123"  # case kept
    assert sent["user"]["ttp"] == "2F7h37YkS1j57AYSKTI7IHhJPYH"
    assert sent["user"]["locale"] == "en-US"
    assert sent["user"]["ip"] == "203.0.113.7" and sent["user"]["user_agent"] == UA
    assert sent["properties"] == {
        "contents": [{"content_id": "SKU-1", "quantity": 2, "price": 19.95}],
        "content_type": "product", "value": 39.9, "currency": "EUR", "order_id": "4711",
    }  # fmt: skip
    assert sent["page"] == {"url": ev["page_location"]}


def test_tiktok_empty_currency_is_left_out():
    assert "currency" not in dry(TikTokEventsTag, event(currency=""))["properties"]


def test_pinterest_strings_for_money_and_epik_click_id():
    ev = event(value=42.5, page_location="https://www.shop.test/?epik=dj0yJnU9abc")
    sent = dry(PinterestCapiTag, ev)
    assert sent["custom_data"]["value"] == "42.5"
    assert sent["custom_data"]["contents"] == [
        {"id": "SKU-1", "quantity": 2, "item_price": "19.95"}
    ]
    assert sent["custom_data"]["num_items"] == 2
    assert sent["user_data"]["click_id"] == "dj0yJnU9abc"
    assert sent["action_source"] == "web"


def test_snapchat_click_id_and_cookie1():
    ev = event(value=10, page_location="https://www.shop.test/?ScCid=abc-123")
    sent = dry(SnapchatCapiTag, ev, cookies={"_scid": "8d3b7c9e-2a4f-4b1e-9f0a-1c2d3e4f5a6b"})
    assert sent["user_data"]["sc_click_id"] == "abc-123"
    assert sent["user_data"]["sc_cookie1"] == "8d3b7c9e-2a4f-4b1e-9f0a-1c2d3e4f5a6b"
    assert sent["event_id"] == "order-1001" and "event_id" not in sent["custom_data"]


# -- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag_class", "ev", "reason"),
    [
        (TikTokEventsTag, event(currency="EURO"), "not an ISO 4217 code"),
        (TikTokEventsTag, event(page_location=""), "TikTok needs the page URL"),
        (TikTokEventsTag, event(event_name="1 bad name!"), "custom event name"),
        (TikTokEventsTag, event(event_time=NOW - 9 * 86400), "days old"),
        (PinterestCapiTag, event(ip_override=None, user_agent=None), "email, or both"),
        (PinterestCapiTag, event(value="lots"), "is not a number"),
        (SnapchatCapiTag, event(event_name="newsletter"), "not a Snap standard event"),
        (SnapchatCapiTag, event(currency=""), "PURCHASE without value and currency"),
        (SnapchatCapiTag, event(page_location=None, value=1), "page_location is empty"),
    ],
)
def test_what_the_vendor_would_refuse_never_leaves(tag_class, ev, reason):
    with pytest.raises(TagRejected, match=reason):
        fire(tag_class, ev, params=_live(tag_class))


def _live(tag_class: Any) -> dict[str, Any]:
    return {
        TikTokEventsTag: {"pixel_code": "C1234567890ABCDEF", "access_token": TOKEN},
        PinterestCapiTag: {"ad_account_id": "549755885175", "access_token": TOKEN},
        SnapchatCapiTag: {"pixel_id": SNAP_PIXEL, "access_token": TOKEN},
    }[tag_class]


# -- dry run, outgoing, secrets, match quality -----------------------------------------------------


@pytest.mark.parametrize("tag_class", [TikTokEventsTag, PinterestCapiTag, SnapchatCapiTag])
def test_dry_run_then_outgoing_without_the_token_in_sight(tag_class):
    ev = event(value=10, user_data={"email_address": "jane@example.com"})
    outgoing, ctx = fire(tag_class, ev)
    assert outgoing == [] and ctx.dry_runs and ctx.dry_runs[0]["reason"].startswith("no ")
    assert "jane@example.com" not in json.dumps(ctx.notes) + json.dumps(ctx.dry_runs)
    outgoing, ctx = fire(tag_class, ev, params=_live(tag_class))
    [message] = outgoing
    assert message.destination.startswith(tag_class.type_name.split("_")[0])
    assert TOKEN not in message.destination and TOKEN not in json.dumps(message.payload)
    assert TOKEN not in json.dumps(ctx.notes)
    assert ctx.notes["match_quality"] >= 5.5  # email, IP + user agent
    assert "jane@example.com" not in json.dumps(message.payload)


def test_bad_ids_are_refused_with_the_reason():
    with pytest.raises(TagRejected, match="not a UUID"):
        fire(SnapchatCapiTag, event(value=1), params={"pixel_id": "123", "access_token": TOKEN})
    with pytest.raises(TagRejected, match="not a number"):
        fire(PinterestCapiTag, event(), params={"ad_account_id": "acct", "access_token": TOKEN})
