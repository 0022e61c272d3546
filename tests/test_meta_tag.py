"""The `meta_capi` tag: mapping, refusal checks, match quality, dry run, and secrets.

Most tests fire the real tag with a real request context and read what it produced; the last
ones go through the app (events API + preview) and read what a user sees there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import pytest
from engine import run_event
from prometheus_client import REGISTRY
from support import app_client, minimal_container, wait_until
from tagserver.tags.meta_capi import MetaCapiTag
from tagserver.tags.meta_capi.checks import MetaRefusal

from tagserver.event import RequestContext
from tagserver.plugins import FireContext, TagRejected
from tagserver.settings import Settings

TOKEN = "EAAGm0PX4ZCpsBAtagTOKENsecret987"
PIXEL = "1234567890"
NOW = int(time.time())
UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 Safari/605.1.15"
SETTINGS = Settings()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def request(cookies: dict[str, str] | None = None) -> RequestContext:
    return RequestContext.from_scope(
        method="POST",
        url="https://sgtm.shop.test/collect",
        path="/collect",
        query={},
        headers={"user-agent": UA},
        cookies=cookies or {},
        peer_ip="198.51.100.4",
        scheme="https",
        settings=SETTINGS,
    )


def purchase(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_name": "purchase",
        "event_id": "order-1001",
        "event_time": NOW - 30,
        "page_location": "https://www.shop.test/checkout/done",
        "page_referrer": "https://www.shop.test/checkout",
        "ip_override": "203.0.113.7",
        "user_agent": UA,
        "value": 59.9,
        "currency": "eur",
        "transaction_id": "T-1001",
        "items": [
            {"item_id": "SKU-1", "item_name": "Shirt", "price": 19.95, "quantity": 2},
            {"item_name": "Gift card", "price": "20"},
        ],
        "user_id": "cust-42",
        "user_data": {
            "email_address": " Jane.Doe@Example.com ",
            "phone_number": "(650) 555-1212",
            "gender": "Female",
            "date_of_birth": "1990-07-04",
            "address": {
                "first_name": "Jané",
                "last_name": "Doe-Smith",
                "city": "San Francisco",
                "region": "California",
                "postal_code": "94105-1234",
                "country": "United States",
            },
        },
    }
    event.update(overrides)
    return event


def fire(
    event: dict[str, Any],
    params: dict[str, Any] | None = None,
    cookies: dict[str, str] | None = None,
) -> tuple[list[Any], FireContext]:
    tag = MetaCapiTag("meta", {}, SETTINGS)
    resolved = {"api_version": "v25.0", "action_source": "website", "external_id_hashing": "sha256"}
    resolved.update(params or {})
    ctx = FireContext(request=request(cookies), settings=SETTINGS, tag_name="meta")
    return tag.fire(event, resolved, ctx), ctx


def sent(event: dict[str, Any], params: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    """The server event the tag would send (dry run)."""
    outgoing, ctx = fire(event, params, **kw)
    assert outgoing == []
    return ctx.dry_runs[0]["payload"]["data"][0]


def refused(event: dict[str, Any], params: dict[str, Any] | None = None) -> str:
    with pytest.raises(TagRejected) as info:
        fire(event, params)
    return str(info.value)


# -- mapping ------------------------------------------------------------------------------------


def test_a_purchase_maps_to_a_fully_hashed_server_event():
    server = sent(purchase())
    assert server["event_name"] == "Purchase"
    assert server["event_time"] == NOW - 30
    assert server["event_id"] == "order-1001"
    assert server["action_source"] == "website"
    assert server["event_source_url"] == "https://www.shop.test/checkout/done"
    assert server["referrer_url"] == "https://www.shop.test/checkout"
    assert server["user_data"] == {
        "em": [sha("jane.doe@example.com")],
        "ph": [sha("16505551212")],  # national number completed with the address country
        "fn": [sha("jané")],
        "ln": [sha("doesmith")],
        "ge": [sha("f")],
        "db": [sha("19900704")],
        "ct": [sha("sanfrancisco")],
        "st": [sha("ca")],
        "zp": [sha("94105")],
        "country": [sha("us")],
        "external_id": [sha("cust-42")],
        "client_ip_address": "203.0.113.7",
        "client_user_agent": UA,
    }
    assert server["custom_data"] == {
        "value": 59.9,
        "currency": "EUR",
        "contents": [
            {"id": "SKU-1", "quantity": 2, "item_price": 19.95},
            {"id": "Gift card", "quantity": 1, "item_price": 20},
        ],
        "content_ids": ["SKU-1", "Gift card"],
        "num_items": 3,
        "content_type": "product",
        "order_id": "T-1001",
    }


def test_no_raw_personal_data_in_the_payload_or_the_notes(caplog):
    caplog.set_level(logging.DEBUG)
    outgoing, ctx = fire(purchase(), {"pixel_id": PIXEL, "access_token": TOKEN})
    shown = json.dumps([o.payload for o in outgoing]) + repr(outgoing) + json.dumps(ctx.notes)
    shown += caplog.text
    for raw in ("jane.doe", "Jane", "Doe", "555-1212", "5551212", "San Francisco", "94105",
                "1990", "cust-42", "California", "Female"):  # fmt: skip
        assert raw.lower() not in shown.lower(), raw


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("page_view", {}, "PageView"),
        ("view_item", {}, "ViewContent"),
        ("add_to_cart", {}, "AddToCart"),
        ("add_to_wishlist", {}, "AddToWishlist"),
        ("begin_checkout", {}, "InitiateCheckout"),
        ("add_payment_info", {}, "AddPaymentInfo"),
        ("search", {}, "Search"),
        ("generate_lead", {}, "Lead"),
        ("sign_up", {}, "CompleteRegistration"),
        ("Subscribe", {}, "Subscribe"),
        ("newsletter_optin", {}, "newsletter_optin"),  # unknown names pass through
        ("newsletter_optin", {"event_name_map": {"newsletter_optin": "Subscribe"}}, "Subscribe"),
        ("page_view", {"event_name_map": {"page_view": "LandingView"}}, "LandingView"),
    ],
)
def test_event_names(name, params, expected):
    event = purchase(event_name=name, value=None, currency=None, items=None, transaction_id=None)
    assert sent(event, params)["event_name"] == expected


def test_search_term_and_configured_custom_data():
    event = purchase(event_name="search", search_term="red shoes", value=None, currency=None,
                     items=None, transaction_id=None, custom_data={"status": "ok", "empty": ""})  # fmt: skip
    custom = sent(event, {"custom_data": {"brand": "Acme", "status": "override", "none": None}})[
        "custom_data"
    ]
    assert custom == {"search_string": "red shoes", "status": "override", "brand": "Acme"}


def test_pixel_custom_data_keys_from_ga4_hits():
    event = purchase(**{"x-fb-cd-content_name": "Shirt", "x-fb-cd-predicted_ltv": 120})
    custom = sent(event)["custom_data"]
    assert custom["content_name"] == "Shirt" and custom["predicted_ltv"] == 120


def test_action_source_of_the_event_wins_over_the_tag():
    offline = purchase(action_source="physical_store", page_location=None, user_agent=None)
    assert sent(offline, {"action_source": "website"})["action_source"] == "physical_store"
    assert sent(purchase(), {"action_source": "app"})["action_source"] == "app"


def test_fbp_and_fbc_from_event_keys_win_over_cookies():
    event = purchase(
        **{"x-fb-ck-fbp": "fb.1.1700000000000.111", "x-fb-ck-fbc": "fb.1.1700000000000.AbC"}
    )
    cookies = {"_fbp": "fb.1.1600000000000.999", "_fbc": "fb.1.1600000000000.Old"}
    user = sent(event, cookies=cookies)["user_data"]
    assert user["fbp"] == "fb.1.1700000000000.111"
    assert user["fbc"] == "fb.1.1700000000000.AbC"


def test_fbp_and_fbc_from_cookies_sent_exactly_as_stored():
    cookies = {"_fbp": "fb.1.1600000000000.999.AQ-x", "_fbc": "fb.2.1600000000000.IwAR_Zz-9"}
    user = sent(purchase(), cookies=cookies)["user_data"]
    assert user["fbp"] == "fb.1.1600000000000.999.AQ-x"
    assert user["fbc"] == "fb.2.1600000000000.IwAR_Zz-9"


def test_fbc_is_built_from_fbclid_when_there_is_no_cookie():
    event = purchase(page_location="https://www.shop.co.uk/p?utm_source=fb&fbclid=IwAR1aB-c_D")
    user = sent(event)["user_data"]
    # shop.co.uk is the registrable domain (3 labels → index 2); time = event time in ms
    assert user["fbc"] == f"fb.2.{(NOW - 30) * 1000}.IwAR1aB-c_D"
    # the same event fired again builds the very same value
    assert sent(event)["user_data"]["fbc"] == user["fbc"]


def test_fbc_cookie_is_kept_for_the_same_click_and_replaced_for_a_new_one():
    cookie = {"_fbc": "fb.1.1600000000000.IwAROLD"}
    same = purchase(page_location="https://shop.test/?fbclid=IwAROLD")
    assert sent(same, cookies=cookie)["user_data"]["fbc"] == "fb.1.1600000000000.IwAROLD"
    new = purchase(page_location="https://shop.test/?fbclid=IwARNEW")
    assert sent(new, cookies=cookie)["user_data"]["fbc"] == f"fb.1.{(NOW - 30) * 1000}.IwARNEW"


def test_malformed_fbp_fbc_and_ip_are_dropped_with_a_reason():
    event = purchase(ip_override="999.1.1.1", **{"x-fb-ck-fbp": "garbage", "x-fb-ck-fbc": "fb.x"})
    outgoing, ctx = fire(event)
    user = ctx.dry_runs[0]["payload"]["data"][0]["user_data"]
    assert "fbp" not in user and "fbc" not in user and "client_ip_address" not in user
    dropped = ctx.notes["dropped_user_data"]
    assert set(dropped) >= {"fbp", "fbc", "client_ip_address"}
    assert "garbage" not in json.dumps(ctx.notes)


def test_overlong_fbclid_is_ignored():
    event = purchase(page_location="https://shop.test/?fbclid=" + "a" * 501)
    assert "fbc" not in sent(event)["user_data"]


def test_ipv4_mapped_ipv6_is_unwrapped():
    assert sent(purchase(ip_override="::ffff:203.0.113.9"))["user_data"]["client_ip_address"] == (
        "203.0.113.9"
    )


def test_unusable_values_are_dropped_and_named():
    ud = {"email_address": "not-an-email", "phone_number": "12", "gender": "x",
          "address": {"country": "Narnia", "first_name": "Ann"}}  # fmt: skip
    outgoing, ctx = fire(purchase(user_data=ud))
    user = ctx.dry_runs[0]["payload"]["data"][0]["user_data"]
    assert set(user) == {"fn", "external_id", "client_ip_address", "client_user_agent"}
    assert set(ctx.notes["dropped_user_data"]) == {"em", "ph", "ge", "country"}


def test_phone_without_address_country_uses_the_default_phone_country():
    ud = {"phone_number": "020 7946 0958"}
    assert "ph" not in sent(purchase(user_data=ud))["user_data"]
    user = sent(purchase(user_data=ud), {"default_phone_country": "GB"})["user_data"]
    assert user["ph"] == [sha("442079460958")]


def test_several_addresses_and_emails():
    ud = {"email_address": ["a@example.com", "A@example.com ", "b@example.com"],
          "address": [{"first_name": "Ann", "country": "UK", "postal_code": "SW1A 1AA"},
                      {"first_name": "Anne", "country": "US", "postal_code": "10001-0001"}]}  # fmt: skip
    user = sent(purchase(user_data=ud))["user_data"]
    assert user["em"] == [sha("a@example.com"), sha("b@example.com")]
    assert user["fn"] == [sha("ann"), sha("anne")]
    assert user["zp"] == [sha("sw1a1aa"), sha("10001")]
    assert user["country"] == [sha("gb"), sha("us")]


def test_already_hashed_user_data_passes_through():
    digest = sha("jane@example.com")
    user = sent(purchase(user_data={"sha256_email_address": digest.upper()}))["user_data"]
    assert user["em"] == [digest]


def test_external_id_raw_option():
    assert sent(purchase(), {"external_id_hashing": "raw"})["user_data"]["external_id"] == [
        "cust-42"
    ]


def test_configured_user_data_wins_over_the_event():
    params = {"user_data": {"em": "Other@Example.com", "external_id": "crm-7",
                            "client_ip_address": "192.0.2.1"}}  # fmt: skip
    user = sent(purchase(), params)["user_data"]
    assert user["em"] == [sha("other@example.com")]
    assert user["external_id"] == [sha("crm-7")]
    assert user["client_ip_address"] == "192.0.2.1"


def test_pixel_user_data_keys_at_the_top_level():
    event = purchase(user_data=None, **{"x-fb-ud-em": "x@example.com", "x-fb-ud-ct": "Paris",
                                        "x-fb-ud-external_id": "u-1"})  # fmt: skip
    user = sent(event)["user_data"]
    assert user["em"] == [sha("x@example.com")]
    assert user["ct"] == [sha("paris")]
    assert user["external_id"] == [sha("cust-42")]  # user_id comes first


def test_limited_data_use_from_the_tag_and_from_the_event():
    server = sent(purchase(), {"data_processing_options": ["LDU"]})
    assert server["data_processing_options"] == ["LDU"]
    assert server["data_processing_options_country"] == 0
    assert server["data_processing_options_state"] == 0
    params = {"data_processing_options": ["LDU"], "data_processing_options_country": 1,
              "data_processing_options_state": 1000}  # fmt: skip
    server = sent(purchase(), params)
    assert (server["data_processing_options_country"], server["data_processing_options_state"]) == (
        1,
        1000,
    )
    server = sent(purchase(data_processing_options=[]), params)
    assert server["data_processing_options"] == []
    assert "data_processing_options_country" not in server
    assert "data_processing_options" not in sent(purchase())


# -- what Meta would refuse ----------------------------------------------------------------------


def test_website_event_without_page_url_is_refused():
    assert "website events need event_source_url" in refused(purchase(page_location=None))


def test_website_event_without_user_agent_is_refused():
    assert "website events need client_user_agent" in refused(purchase(user_agent=None))


def test_event_older_than_7_days_is_refused():
    reason = refused(purchase(event_time=NOW - 8 * 86400))
    assert "8.0 days old" in reason and "older than 7 days" in reason and "2804003" in reason


def test_physical_store_events_may_be_62_days_old():
    offline = dict(action_source="physical_store", page_location=None, user_agent=None)
    assert sent(purchase(event_time=NOW - 30 * 86400, **offline))["event_time"] == NOW - 30 * 86400
    assert "older than 62 days" in refused(purchase(event_time=NOW - 63 * 86400, **offline))


def test_event_in_the_future_is_refused():
    assert "in the future" in refused(purchase(event_time=NOW + 3600))
    sent(purchase(event_time=int(time.time()) + 30))  # small clock skew is fine


def test_too_weak_customer_information_is_refused():
    event = purchase(user_data={"address": {"city": "Paris", "country": "France"}},
                     user_id=None, ip_override=None)  # fmt: skip
    reason = refused(event)
    assert "too weak to match" in reason and "client_user_agent, country, ct" in reason
    assert "2804050" in reason
    offline = purchase(action_source="phone_call", page_location=None, user_agent=None,
                       ip_override=None, user_id=None,
                       user_data={"gender": "m", "address": {"first_name": "Max"}})  # fmt: skip
    assert "only fn, ge" in refused(offline)


def test_no_customer_information_at_all_is_refused():
    offline = purchase(action_source="email", page_location=None, user_agent=None,
                       ip_override=None, user_id=None, user_data=None)  # fmt: skip
    assert "no customer information" in refused(offline)


def test_bad_currency_and_value_are_refused():
    assert "'EURO' is not an ISO 4217 code" in refused(purchase(currency="euro"))
    assert "value 'lots' is not a number" in refused(purchase(value="lots"))
    assert "Purchase events need custom_data.value and currency" in refused(purchase(value=None))


def test_event_name_over_50_characters_is_refused():
    assert "Meta allows 50" in refused(purchase(event_name="x" * 51))


def test_refusals_are_counted_by_reason():
    before = (
        REGISTRY.get_sample_value("tagserver_meta_refused_total", {"reason": "event_too_old"}) or 0
    )
    with pytest.raises(MetaRefusal):
        fire(purchase(event_time=NOW - 10 * 86400))
    after = REGISTRY.get_sample_value("tagserver_meta_refused_total", {"reason": "event_too_old"})
    assert after == before + 1


# -- Event Match Quality ------------------------------------------------------------------------


def test_match_quality_of_an_anonymous_page_view():
    event = {"event_name": "page_view", "event_id": "p1", "event_time": NOW,
             "page_location": "https://shop.test/", "ip_override": "203.0.113.7",
             "user_agent": UA}  # fmt: skip
    _, ctx = fire(event, cookies={"_fbp": "fb.1.1700000000000.42"})
    assert ctx.notes["match_keys"] == ["client_ip_address", "client_user_agent", "fbp"]
    assert ctx.notes["match_quality"] == 4.0
    assert ctx.notes["match_quality_band"] == "ok"


def test_match_quality_of_a_signed_in_purchase_is_great():
    _, ctx = fire(purchase())
    assert ctx.notes["match_quality"] == 10.0
    assert ctx.notes["match_quality_band"] == "great"
    assert "em" in ctx.notes["match_keys"] and "ph" in ctx.notes["match_keys"]


def test_match_quality_metric_per_standard_event_name_and_custom():
    def count(name: str) -> float:
        return (
            REGISTRY.get_sample_value("tagserver_meta_match_quality_count", {"event_name": name})
            or 0
        )

    purchases, customs = count("Purchase"), count("custom")
    fire(purchase())
    fire(purchase(event_name="my_special_event_1234"))
    assert count("Purchase") == purchases + 1
    assert count("custom") == customs + 1
    assert count("my_special_event_1234") == 0  # custom names never become labels


def test_match_quality_metric_counts_exactly_like_prometheus_observe():
    """The tag's shortcut past Histogram.observe's bucket search must expose the same
    buckets, count and sum as observe itself, for every possible score and any other value."""
    from prometheus_client import CollectorRegistry, Histogram
    from tagserver.tags.meta_capi.tag import _score_observer

    def exposed(observe_with_shortcut: bool) -> list[tuple[str, dict, float]]:
        registry = CollectorRegistry()
        histogram = Histogram("q", "q", ["n"], buckets=(1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
                              registry=registry)  # fmt: skip
        child = histogram.labels("Purchase")
        observe = _score_observer(child) if observe_with_shortcut else child.observe
        for score in [step / 4 for step in range(41)] + [10.0, 0.0, 3.3, 12.0, -1.0]:
            observe(score)
        return [(s.name, s.labels, s.value) for m in registry.collect() for s in m.samples
                if not s.name.endswith("_created")]  # fmt: skip

    assert exposed(True) == exposed(False)


# -- dry run and the outgoing message --------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "missing"),
    [({}, "pixel_id and access_token"), ({"pixel_id": PIXEL}, "access_token"),
     ({"access_token": TOKEN}, "pixel_id")],
)  # fmt: skip
def test_dry_run_without_pixel_or_token(params, missing):
    outgoing, ctx = fire(purchase(), {**params, "test_event_code": "TEST1"})
    assert outgoing == []
    [dry] = ctx.dry_runs
    assert dry["reason"] == f"no {missing}, so nothing is sent"
    assert dry["payload"]["test_event_code"] == "TEST1"
    assert dry["payload"]["data"][0]["event_id"] == "order-1001"
    assert TOKEN not in json.dumps(ctx.notes) and TOKEN not in json.dumps(ctx.dry_runs)


def test_outgoing_message_for_the_sender():
    params = {"pixel_id": PIXEL, "access_token": TOKEN, "test_event_code": "TEST42",
              "partner_agent": "tagserver-1"}  # fmt: skip
    [message], ctx = fire(purchase(), params)
    token_id = hashlib.sha256(TOKEN.encode()).hexdigest()[:8]
    assert message.destination == f"meta:{PIXEL}:{token_id}:TEST42:v25.0"
    assert message.route == {"pixel_id": PIXEL, "access_token": TOKEN, "api_version": "v25.0",
                             "test_event_code": "TEST42", "partner_agent": "tagserver-1"}  # fmt: skip
    assert message.dedup_id == "Purchase:order-1001"
    assert message.deadline == NOW - 30 + 7 * 86400 - 600
    assert message.payload["event_id"] == "order-1001"
    # the tag type is the name the tag is registered under: the engine sets it
    container = {"name": "m", "triggers": [{"name": "all", "event": "*"}],
                 "tags": [{"name": "meta", "type": "meta_capi", "fire_on": ["all"], "params": params}]}  # fmt: skip
    [message] = run_event(container, purchase()).outgoing
    assert message.tag_type == "meta_capi"
    visible = json.dumps([message.destination, message.payload, message.dedup_id, ctx.notes])
    assert TOKEN not in visible


def test_destination_without_test_code_and_other_version():
    [message], _ = fire(
        purchase(), {"pixel_id": PIXEL, "access_token": TOKEN, "api_version": "v26.0"}
    )
    assert message.destination.endswith(":-:v26.0")


def test_bad_pixel_id_or_version_is_refused_with_the_reason():
    assert "pixel_id 'abc' is not a number" in refused(
        purchase(), {"pixel_id": "abc", "access_token": TOKEN}
    )
    assert "api_version '25' is not like v25.0" in refused(
        purchase(), {"pixel_id": PIXEL, "access_token": TOKEN, "api_version": "25"}
    )


# -- through the app: what the events API and preview show ------------------------------------------


def meta_container(**params: Any) -> dict[str, Any]:
    return minimal_container(
        variables=[
            {
                "name": "meta_token",
                "type": "env",
                "env": "META_TEST_TOKEN",
                "secret": True,
                "default": "",
            }
        ],  # fmt: skip
        tags=[
            {
                "name": "meta",
                "type": "meta_capi",
                "fire_on": ["all"],
                "params": {"access_token": "{{meta_token}}", **params},
            }
        ],  # fmt: skip
    )


API = {"Authorization": "Bearer test-key"}


def test_events_api_says_why_an_event_was_not_sent(tmp_path):
    with app_client(tmp_path, meta_container()) as client:
        r = client.post("/api/events", headers=API,
                        json={"event_name": "purchase", "value": 5, "currency": "EUR",
                              "user_data": {"email_address": "a@example.com"}})  # fmt: skip
        assert r.status_code == 200
        reason = r.json()["results"][0]["tags_not_fired"]["meta"]
        assert reason == (
            "not sent: website events need event_source_url, and this event has no page_location"
        )


def test_preview_shows_the_dry_run_payload_and_match_quality_without_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("META_TEST_TOKEN", TOKEN)
    container = meta_container(custom_data={"coupon": "{{event.coupon}}"})
    with app_client(tmp_path, container, preview_password="pw",
                    preview_store=str(tmp_path / "preview.sqlite3")) as client:  # fmt: skip
        assert client.post("/preview/login", data={"password": "pw"},
                           follow_redirects=False).status_code in (302, 303)  # fmt: skip
        session = client.post("/preview/sessions", data={"name": "meta"},
                              headers={"Accept": "application/json"}).json()  # fmt: skip
        event = {"event_name": "purchase", "event_id": "o-9", "value": 12, "currency": "usd",
                 "coupon": "SPRING", "page_location": "https://shop.test/done",
                 "user_agent": UA, "ip_override": "203.0.113.50",
                 "user_data": {"email_address": "Buyer@Example.com"}}  # fmt: skip
        r = client.post("/api/events", json=event,
                        headers={**API, "X-Tagserver-Preview": session["token"]})  # fmt: skip
        result = r.json()["results"][0]
        assert result["tags_fired"] == []  # nothing was sent: the caller is told why
        assert result["tags_not_fired"]["meta"] == "dry run: no pixel_id, so nothing is sent"

        def detail() -> Any:
            listing = client.get(f"/preview/api/s/{session['id']}/hits").json()["hits"]
            if not listing:
                return None
            return client.get(f"/preview/api/s/{session['id']}/hits/{listing[0]['id']}")

        page = wait_until(detail, timeout=5)
        tag = page.json()["events"][0]["tags"][0]
        assert tag["status"] == "dry_run"
        assert tag["reason"] == "dry run: no pixel_id, so nothing is sent"
        payload = tag["dry_run"][0]["payload"]["data"][0]
        assert payload["user_data"]["em"] == [sha("buyer@example.com")]
        assert payload["custom_data"] == {"value": 12, "currency": "USD", "coupon": "SPRING"}
        assert tag["notes"]["match_keys"] == ["em", "client_ip_address", "client_user_agent"]
        assert tag["notes"]["match_quality"] == 5.5
        assert TOKEN not in page.text
        assert "Buyer@Example.com" not in json.dumps(tag)


def test_odd_types_from_the_events_api_are_refused_not_crashing():
    assert "is not an ISO 4217 code" in refused(purchase(custom_data={"currency": ["USD"]}))
    assert "is not a number" in refused(purchase(custom_data={"value": {"amount": 5}}))
    assert "is not a number" in refused(purchase(custom_data={"value": True}))


# -- robustness: whatever a client lets through, the tag answers with a result, never a crash --

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
KEYS = ["event_name", "event_id", "event_time", "page_location", "page_referrer", "ip_override",
        "user_agent", "value", "currency", "items", "transaction_id", "search_term", "user_id",
        "user_data", "action_source", "opt_out", "custom_data", "data_processing_options",
        "x-fb-ck-fbp", "x-fb-ck-fbc", "x-fb-ud-em", "x-fb-cd-content_name"]  # fmt: skip
user_data_values = st.fixed_dictionaries(
    {},
    optional={
        "email_address": json_values, "phone_number": json_values, "gender": json_values,
        "date_of_birth": json_values,
        "address": json_values | st.dictionaries(
            st.sampled_from(["first_name", "last_name", "city", "region", "postal_code", "country"]),
            json_values, max_size=6),
    },
)  # fmt: skip


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    event=st.dictionaries(st.sampled_from(KEYS), json_values, max_size=12),
    user=user_data_values,
    params=st.dictionaries(
        st.sampled_from(["custom_data", "user_data", "event_name_map", "default_phone_country",
                         "data_processing_options", "data_processing_options_country"]),
        json_values, max_size=3),
)  # fmt: skip
def test_any_event_gives_a_payload_or_a_reason(event, user, params):
    event = dict(event, user_data=user) if user else event
    try:
        outgoing, ctx = fire(event, {**params, "pixel_id": PIXEL, "access_token": TOKEN})
    except TagRejected as exc:
        assert str(exc)
        return
    [message] = outgoing
    json.dumps(message.payload)  # JSON-ready
    assert TOKEN not in json.dumps(message.payload)
