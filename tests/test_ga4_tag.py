"""Tag `ga4`: events rebuilt into GA4 `/g/collect` hits and forwarded to Google.

Unit: gtag.js fixture hits parsed by the GA4 client rebuild to hits that parse back to the
same event data (personal data aside, which is never sent). End to end: the shipped
container.json in a real `tagserver serve`, a fake vendor on loopback standing in for Google.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
import pytest
from fakes.vendor import Answer, FakeVendor, Received
from support import ServerProcess, app_client, minimal_container, wait_until
from tagserver.clients.ga4_params import parse_hit
from tagserver.tags.ga4 import Ga4Sender, Ga4Tag, request_parts

from tagserver.event import RequestContext
from tagserver.plugins import Delivery, FireContext, Message, TagRejected
from tagserver.settings import Settings

FIXTURES = Path(__file__).parent / "fixtures" / "ga4"
DEFAULT_CONTAINER = Path(__file__).resolve().parent.parent / "container.json"
UA = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Safari/605.1.15"
)
VISITOR_IP = "203.0.113.77"
GTAG_SAFE = "-_.!~*'()"
# keys the request fills, and personal data: never part of the rebuilt hit
NOT_ROUND_TRIPPED = {"user_data", "ip_override", "user_agent", "event_time", "x-ga-_uip"}
PII = [
    "jane", "doe", "example.com", "6505551212", "555-1212", "menlo", "94025", "secret-fbp",
    "fb.1.1718", "x-fb", "user_data", "em=", "ph=",
]  # fmt: skip


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def request_context(ip: str = VISITOR_IP, ua: str = UA) -> RequestContext:
    return RequestContext(
        method="POST", url="https://sgtm.shop.test/g/collect", path="/g/collect", query={},
        headers={"user-agent": ua}, cookies={}, ip=ip, is_https=True, host="sgtm.shop.test",
    )  # fmt: skip


def fire(event: dict[str, Any], **params: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tag's one message for `event`: (payload, notes)."""
    settings = Settings.from_env({}, ga4_collect_url="http://127.0.0.1:9/g/collect")
    tag = Ga4Tag("ga4", params, settings)
    ctx = FireContext(request=request_context(), settings=settings, tag_name="ga4")
    [message] = tag.fire(event, params, ctx)
    return message.payload, ctx.notes


def parsed_events(name: str) -> list[dict[str, Any]]:
    """The fixture's events as the GA4 client makes them, with what the hit adds."""
    data = fixture(name)
    events = parse_hit(data["query"].encode(), data["body"].encode(), max_events=50).events
    for index, event in enumerate(events):
        event.setdefault("event_id", f"{name}-{index}")
        event.update(ip_override=VISITOR_IP, user_agent=data["headers"]["user-agent"])
        event["event_time"] = int(time.time())
    return events


def reparse(query: str, body: bytes) -> list[dict[str, Any]]:
    return parse_hit(query.encode(), body, max_events=50).events


def comparable(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in NOT_ROUND_TRIPPED}


@pytest.mark.parametrize(
    "name", ["page_view", "batch_3_events", "purchase_3_items", "consent_denied", "client_hints"]
)
def test_a_gtag_hit_rebuilds_to_the_same_event_data(name: str) -> None:
    events = parsed_events(name)
    payloads = [fire(event)[0] for event in events]
    assert all(p["params"]["_uip"] == VISITOR_IP for p in payloads)
    assert all(p["ua"] == fixture(name)["headers"]["user-agent"] for p in payloads)
    # each event alone (query only), and all of them batched as gtag.js does
    for event, payload in zip(events, payloads, strict=True):
        [again] = reparse(*request_parts([payload["params"]]))
        assert comparable(again) == comparable(event)
    query, body = request_parts([p["params"] for p in payloads])
    assert [comparable(e) for e in reparse(query, body)] == [comparable(e) for e in events]


def test_purchase_carries_items_values_and_consent_as_received() -> None:
    [event] = parsed_events("purchase_3_items")
    params = fire(event)[0]["params"]
    assert params["v"] == "2" and params["tid"] == "G-TEST123" and params["en"] == "purchase"
    assert params["cid"] == "1234567890.1718000000" and params["uid"] == "customer-42"
    assert params["pr2"] == (
        "idSKU456~nmGreen Socks~brAcme~caApparel~c2Men~vaGreen~pr4.99~qt1~k0material~v0cotton"
        "~k1size~v1M"
    )
    assert params["epn.value"] == "72.96" and params["ep.transaction_id"] == "T-1001"
    assert (params["gcs"], params["gcd"], params["npa"], params["dma"]) == (
        "G111", "13t3t3t3t5l1", "0", "0"
    )  # fmt: skip
    assert params["up.membership"] == "gold" and params["upn.lifetime_orders"] == "7"


def test_no_personal_data_is_ever_in_the_payload() -> None:
    [event] = parsed_events("purchase_3_items")
    event.update({
        "email": "jane.doe@example.com",
        "phone_number": "+16505551212",
        "first_name": "Jane",
        "x-fb-ck-fbp": "fb.1.1718000000000.secret-fbp",
        "x-fb-ud-em": "jane@example.com",
        "x-fb-cd-content_type": "product",
        "x-ga-em": "tv.1~em.abcdef",
        "contact": "write to jane.doe@example.com",
        "page_location": "https://www.shop.test/thanks?order=1&mail=jane.doe%40example.com",
        "page_referrer": "https://www.shop.test/login?email=jane.doe@example.com",
        "custom_data": {"customer_email": "jane.doe@example.com", "order_size": 3},
    })  # fmt: skip
    event["items"][0]["buyer"] = "jane.doe@example.com"
    payload, notes = fire(event, event_parameters={"em": "jane@example.com", "campaign": "x"})
    sent = json.dumps(payload).lower()
    for text in PII:
        assert text not in sent, text
    params = payload["params"]
    assert params["dl"] == "https://www.shop.test/thanks?order=1"
    assert params["epn.order_size"] == "3" and params["ep.campaign"] == "x"
    assert {"dl", "dr", "ep.contact", "ep.em", "em", "ep.email"} <= set(
        notes["not_sent_personal_data"]
    )


def test_the_server_decides_uip_and_a_preview_token_never_leaves() -> None:
    [event] = parse_hit(
        b"v=2&tid=G-X1&cid=1.2&en=page_view&_uip=192.0.2.1&tagserver_preview=tok123&gtm=4e1",
        b"",
        max_events=1,
    ).events
    event["ip_override"] = VISITOR_IP
    params = fire(event)[0]["params"]
    assert params["_uip"] == VISITOR_IP and params["gtm"] == "4e1"
    assert "tok123" not in json.dumps(params)


def test_events_from_other_clients_use_the_common_keys() -> None:
    event = {
        "event_name": "purchase", "event_id": "order-9", "client_id": "555.1718000000",
        "user_id": "u-9", "value": 10, "currency": "USD", "transaction_id": "9",
        "items": [{"item_id": "A", "price": 5, "quantity": 2}], "ip_override": "2001:db8:1:2::7",
        "user_agent": "POS/1.0", "consent": {"ad_storage": "granted", "analytics_storage": "denied"},
    }  # fmt: skip
    payload, _ = fire(event, measurement_id="G-OTHER1", redact_ip=True)
    params = payload["params"]
    assert (params["tid"], params["cid"], params["uid"], params["en"]) == (
        "G-OTHER1", "555.1718000000", "u-9", "purchase"
    )  # fmt: skip
    assert params["pr1"] == "idA~pr5~qt2" and params["epn.value"] == "10"
    assert params["ep.event_id"] == "order-9" and params["cu"] == "USD"
    assert params["gcs"] == "G110"  # derived from the event's consent
    assert params["_uip"] == "2001:db8:1::"  # redacted: the first 48 bits kept
    assert payload["ua"] == "POS/1.0"


def test_redact_ip_zeroes_the_last_ipv4_octet() -> None:
    [event] = parsed_events("page_view")
    assert fire(event, redact_ip=True)[0]["params"]["_uip"] == "203.0.113.0"


@pytest.mark.parametrize(
    ("event", "params", "reason"),
    [
        ({"event_name": "e", "client_id": "1.2"}, {}, "no measurement id"),
        ({"event_name": "e"}, {"measurement_id": "G-X1"}, "no client_id"),
        ({"event_name": "e", "client_id": "1.2"}, {"measurement_id": "G X"}, "is not like"),
        ({"event_name": "e", "client_id": "1.2"}, {"measurement_id": "G-X1", "endpoint": "ftp://x"}, "endpoint"),
    ],
)  # fmt: skip
def test_unsendable_events_are_rejected_with_a_reason(event, params, reason) -> None:
    with pytest.raises(TagRejected, match=reason):
        fire(event, **params)


def test_the_tag_respects_the_consent_the_container_asks_for(tmp_path: Path) -> None:
    container = minimal_container(
        tags=[
            {"name": "ga4_strict", "type": "ga4", "fire_on": ["all"],
             "consent": ["analytics_storage"], "params": {"measurement_id": "G-X1"}},
            {"name": "ga4_pings", "type": "ga4", "fire_on": ["all"],
             "params": {"measurement_id": "G-X1"}},
        ]
    )  # fmt: skip
    event = {"event_name": "page_view", "client_id": "1.2", "consent": {"ad_storage": "denied",
             "analytics_storage": "denied"}}  # fmt: skip
    with app_client(tmp_path, container) as client:
        body = client.post(
            "/api/events", json=event, headers={"Authorization": "Bearer test-key"}
        ).json()
    [result] = body["results"]
    assert result["tags_fired"] == ["ga4_pings"]
    assert result["tags_not_fired"]["ga4_strict"] == "consent: analytics_storage is denied"


# -- end to end -----------------------------------------------------------------------------


def enc(pairs: list[tuple[str, str]]) -> str:
    return "&".join(k + "=" + quote(v, safe=GTAG_SAFE) for k, v in pairs)


def gtag_batch(cid: str, order: str, gcs: str = "G111") -> tuple[str, bytes]:
    """The batch gtag.js sends at the end of a checkout: a scroll, the purchase, a click."""
    query = enc(
        [("v", "2"), ("tid", "G-TEST123"), ("gtm", "45je46h0v9"), ("_p", "1718010555000"),
         ("gcs", gcs), ("gcd", "13t3t3t3t5l1"), ("npa", "0"), ("dma", "0"), ("cid", cid),
         ("ul", "en-us"), ("sr", "1920x1080"), ("_s", "9"), ("sid", "1718010000"), ("sct", "3"),
         ("seg", "1"), ("dl", "https://www.shop.test/checkout/thank-you"), ("dt", "Thank you")]
    )  # fmt: skip
    lines = [
        enc([("en", "scroll"), ("epn.percent_scrolled", "90"), ("_et", "5300")]),
        enc([("en", "purchase"), ("_c", "1"), ("cu", "EUR"),
             ("pr1", "idSKU123~nmBlue Shirt~pr19.99~qt2"), ("pr2", "idSKU456~nmSocks~pr4.99~qt1"),
             ("ep.transaction_id", order), ("epn.value", "44.97"), ("ep.em", "jane@example.com"),
             ("up.fn", "Jane")]),
        enc([("en", "click"), ("ep.link_url", "https://partner.test/")]),
    ]  # fmt: skip
    return query, "\r\n".join(lines).encode()


def received_events(request: Received) -> list[dict[str, Any]]:
    query = urlsplit(request.path).query
    return reparse(query, request.body)


def requests_for(vendor: FakeVendor, cid: str) -> list[Received]:
    return [r for r in vendor.received if f"cid={cid}" in r.path + r.body.decode()]


@pytest.fixture(scope="module")
def google():
    with FakeVendor() as fake:
        fake.default = Answer(204, b"")
        yield fake


@pytest.fixture(scope="module")
def server(google, tmp_path_factory):
    env = {
        "TAGSERVER_GA4_COLLECT_URL": google.url + "/g/collect",
        "TAGSERVER_RETRY_BASE_SECONDS": "0.1",
        "TAGSERVER_RETRY_CAP_SECONDS": "0.3",
    }
    with ServerProcess(tmp_path_factory.mktemp("ga4-tag"), DEFAULT_CONTAINER, env=env) as process:
        yield process
    assert "jane@example.com" not in process.logs()


def send(server: ServerProcess, query: str, body: bytes) -> httpx.Response:
    headers = {"user-agent": UA, "x-forwarded-for": VISITOR_IP, "host": "sgtm.shop.test",
               "origin": "https://www.shop.test", "content-type": "text/plain;charset=UTF-8"}  # fmt: skip
    return httpx.post(f"{server.url}/g/collect?{query}", content=body, headers=headers)


@pytest.mark.slow
def test_a_batched_gtag_purchase_reaches_google_in_one_request(server, google) -> None:
    assert send(server, *gtag_batch("111.1718000000", "T-1")).status_code == 204
    [request] = wait_until(lambda: requests_for(google, "111.1718000000"), timeout=10)
    assert request.method == "POST" and urlsplit(request.path).path == "/g/collect"
    assert request.headers["user-agent"] == UA
    shared = dict(parse_qsl(urlsplit(request.path).query))
    assert (shared["v"], shared["tid"], shared["cid"], shared["_uip"]) == (
        "2", "G-TEST123", "111.1718000000", VISITOR_IP
    )  # fmt: skip
    events = received_events(request)
    assert [e["event_name"] for e in events] == ["scroll", "purchase", "click"]
    purchase = events[1]
    assert purchase["items"] == [
        {"item_id": "SKU123", "item_name": "Blue Shirt", "price": 19.99, "quantity": 2},
        {"item_id": "SKU456", "item_name": "Socks", "price": 4.99, "quantity": 1},
    ]
    assert purchase["value"] == 44.97 and purchase["transaction_id"] == "T-1"
    assert purchase["x-ga-gcs"] == "G111" and purchase["x-ga-system_properties"] == {"c": "1"}
    assert all(e["x-ga-_uip"] == VISITOR_IP for e in events)
    raw = (request.path + request.body.decode()).lower()
    assert "jane" not in raw and "example.com" not in raw and "_fbp" not in raw


@pytest.mark.slow
def test_a_failing_google_is_retried(server, google) -> None:
    google.fail(2, status=503)
    assert send(server, *gtag_batch("222.1718000000", "T-2")).status_code == 204

    def delivered() -> list[str]:
        accepted = [r for r in requests_for(google, "222.1718000000") if r.status == 204]
        return sorted(e["event_name"] for r in accepted for e in received_events(r))

    wait_until(lambda: len(delivered()) >= 3, timeout=10)
    assert delivered() == ["click", "purchase", "scroll"]  # each exactly once
    tries = requests_for(google, "222.1718000000")
    assert [r.status for r in tries[:2]] == [503, 503]
    assert len(received_events(tries[0])) == 3  # the first try was one batched request


@pytest.mark.slow
def test_denied_analytics_is_forwarded_as_a_cookieless_ping(server, google) -> None:
    assert send(server, *gtag_batch("333.1718000000", "T-3", gcs="G100")).status_code == 204
    [request] = wait_until(lambda: requests_for(google, "333.1718000000"), timeout=10)
    assert dict(parse_qsl(urlsplit(request.path).query))["gcs"] == "G100"


# -- the sender against a fake Google -------------------------------------------------------


def message(index: int, cid: str, ua: str, en: str = "page_view") -> Message:
    params = {"v": "2", "tid": "G-X1", "cid": cid, "_uip": VISITOR_IP, "en": en}
    return Message(index, "ga4:G-X1", {"params": params, "ua": ua}, f"{en}:{index}", 0, 0.0)


async def sent(vendor: FakeVendor, batch: list[Message]) -> list[Delivery]:
    async with httpx.AsyncClient() as http:
        sender = Ga4Sender(http, Settings(send_timeout_seconds=5))
        return await sender.send({"url": vendor.url + "/g/collect"}, batch)


async def test_the_sender_batches_per_visitor_and_classifies_answers() -> None:
    with FakeVendor() as vendor:
        vendor.default = Answer(204, b"")
        batch = [message(1, "1.1", "UA-1"), message(2, "2.2", "UA-2"), message(3, "1.1", "UA-1")]
        results = await sent(vendor, batch)
        assert [r.outcome for r in results] == ["delivered"] * 3
        first, second = vendor.received
        assert (first.headers["user-agent"], second.headers["user-agent"]) == ("UA-1", "UA-2")
        assert len(received_events(first)) == 2 and len(received_events(second)) == 1

        vendor.then(Answer(400, b"bad hit"))
        [refused] = await sent(vendor, [message(4, "1.1", "UA-1")])
        assert refused.outcome == "permanent" and refused.error == "HTTP 400 from GA4: bad hit"
        vendor.throttle(1, retry_after=3)
        [throttled, untried] = await sent(vendor, [message(5, "5.5", "A"), message(6, "6.6", "B")])
        assert throttled.outcome == "retry" and throttled.retry_after == 3
        assert untried.outcome == "retry"  # Google said slow down: not called again now
        assert len(vendor.received) == 4
    [down] = await sent(vendor, [message(7, "7.7", "A")])  # nobody listens any more
    assert down.outcome == "retry"
