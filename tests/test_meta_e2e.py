"""End to end: the shipped container.json in a real `tagserver serve`, Meta credentials from
the environment, the Graph API stood in for by the fake on loopback.

What is asserted is what Meta would receive (payload, batching), what the visitor's browser
gets (cookies, event ids), and what an operator sees (dead letters, logs without secrets).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fakes.graph import FakeGraph
from support import ServerProcess, wait_until

from tagserver.cli.main import main

PIXEL = "1122334455"
TOKEN = "EAAE2EsecretTOKENvalue0123456789"
TEST_CODE = "TEST31337"
UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
AUTH = {"Authorization": "Bearer test-key"}
DEFAULT_CONTAINER = Path(__file__).resolve().parent.parent / "container.json"

pytestmark = pytest.mark.slow


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def graph():
    with FakeGraph(token=TOKEN, pixel_ids={PIXEL}) as fake:
        yield fake


@pytest.fixture(scope="module")
def server(graph, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("meta-e2e")
    env = {
        "META_PIXEL_ID": PIXEL,
        "META_ACCESS_TOKEN": TOKEN,
        "META_TEST_EVENT_CODE": TEST_CODE,
        "TAGSERVER_META_GRAPH_URL": graph.url,
        "TAGSERVER_MAX_EVENTS_PER_REQUEST": "2500",
        "TAGSERVER_MAX_BODY_BYTES": str(8 * 1024 * 1024),
        "TAGSERVER_RETRY_BASE_SECONDS": "0.1",
        "TAGSERVER_RETRY_CAP_SECONDS": "0.5",
    }
    with ServerProcess(tmp, DEFAULT_CONTAINER, env=env) as process:
        yield process
    logs = process.logs()
    assert TOKEN not in logs
    assert "jane.doe@example.com" not in logs.lower()


def events_with(graph: FakeGraph, prefix: str) -> list[dict[str, Any]]:
    return [e for e in graph.accepted_events() if str(e.get("event_id", "")).startswith(prefix)]


def requests_with(graph: FakeGraph, prefix: str) -> list[Any]:
    return [
        r
        for r in list(graph.requests)
        if any(str(e.get("event_id", "")).startswith(prefix) for e in r.events)
    ]


def dead_letters(data_dir: Path) -> list[dict[str, Any]]:
    result = CliRunner().invoke(
        main, ["outbox", "dead-letters", "--json", "--data-dir", str(data_dir)]
    )
    assert result.exit_code == 0, result.output
    assert TOKEN not in result.output
    return json.loads(result.output)["dead_letters"]


def api_event(event_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_name": "purchase",
        "event_id": event_id,
        "page_location": "https://www.shop.test/checkout/thanks",
        "user_agent": UA,
        "ip_override": "203.0.113.7",
        "value": 10,
        "currency": "EUR",
        "user_data": {"email_address": f"{event_id}@example.com"},
        **extra,
    }


def test_an_events_api_event_reaches_meta_normalized_and_hashed(server, graph):
    event = api_event(
        "api-1",
        event_time=int(time.time()) - 120,
        page_referrer="https://www.shop.test/cart",
        value="42.50",
        currency="eur",
        transaction_id="T-9001",
        items=[{"item_id": "SKU-7", "price": 21.25, "quantity": 2}],
        user_id="customer-7",
        user_data={
            "email_address": " Jane.Doe@Example.com",
            "phone_number": "+44 (0)20 7946 0958",
            "address": {
                "first_name": "Jane",
                "last_name": "Doe",
                "city": "London",
                "postal_code": "SW1A 1AA",
                "country": "UK",
            },
        },  # fmt: skip
    )
    r = httpx.post(server.url + "/api/events", json=event, headers=AUTH)
    assert r.status_code == 200, r.text
    assert "meta_capi" in r.json()["results"][0]["tags_fired"]

    [received] = wait_until(lambda: events_with(graph, "api-1"), timeout=10)
    assert received == {
        "event_name": "Purchase",
        "event_time": event["event_time"],
        "event_id": "api-1",
        "action_source": "website",
        "event_source_url": "https://www.shop.test/checkout/thanks",
        "referrer_url": "https://www.shop.test/cart",
        "user_data": {
            "em": [sha("jane.doe@example.com")],
            "ph": [sha("442079460958")],
            "fn": [sha("jane")],
            "ln": [sha("doe")],
            "ct": [sha("london")],
            "zp": [sha("sw1a1aa")],
            "country": [sha("gb")],
            "external_id": [sha("customer-7")],
            "client_ip_address": "203.0.113.7",
            "client_user_agent": UA,
        },
        "custom_data": {
            "value": 42.5,
            "currency": "EUR",
            "contents": [{"id": "SKU-7", "quantity": 2, "item_price": 21.25}],
            "content_ids": ["SKU-7"],
            "num_items": 2,
            "content_type": "product",
            "order_id": "T-9001",
        },
    }
    [request] = requests_with(graph, "api-1")
    assert request.path == f"/v25.0/{PIXEL}/events"
    assert request.query["access_token"] == TOKEN
    assert request.body["test_event_code"] == TEST_CODE


def collector(
    http: httpx.Client, event_id: str, consent: str = "granted", ua: str = UA
) -> httpx.Response:
    """One collector.js hit (a purchase after an ad click) from a visitor without cookies."""
    body = {
        "pid": f"page-{event_id}-0001",
        "consent": {"ad_storage": consent},
        "user": {"email": "Jane.Doe@Example.com", "country": "US"},
        "events": [
            {
                "name": "purchase",
                "id": event_id,
                "params": {"value": 19.99, "currency": "USD", "transaction_id": f"O-{event_id}"},
                "page": {"page_location": "https://www.shop.test/done?fbclid=IwAR0Zz_e2e-1",
                         "page_referrer": "https://www.facebook.com/"},
            }
        ],
    }  # fmt: skip
    headers = {
        "content-type": "text/plain;charset=UTF-8",
        "origin": "https://www.shop.test",
        "user-agent": ua,
        "x-forwarded-for": "198.51.100.23",  # the peer (127.0.0.1) is a trusted proxy
        "x-forwarded-proto": "https",
        "host": "sgtm.shop.test",
    }
    return http.post("/collect", content=json.dumps(body), headers=headers)


def test_a_collector_hit_reaches_meta_with_cookies_ip_and_the_same_event_id(server, graph):
    with httpx.Client(base_url=server.url) as http:
        r = collector(http, "col-1")
    assert r.status_code == 200, r.text
    answered = r.json()["events"][0]
    assert answered["event_id"] == "col-1"  # the id the browser Pixel must use too
    cookies = {h.split("=", 1)[0]: h.split(";", 1)[0].split("=", 1)[1]
               for h in r.headers.get_list("set-cookie")}  # fmt: skip

    [received] = wait_until(lambda: events_with(graph, "col-1"), timeout=10)
    user = received["user_data"]
    assert received["event_name"] == "Purchase"
    assert received["event_source_url"] == "https://www.shop.test/done?fbclid=IwAR0Zz_e2e-1"
    assert user["em"] == [sha("jane.doe@example.com")]
    assert user["country"] == [sha("us")]
    assert user["client_ip_address"] == "198.51.100.23"
    assert user["client_user_agent"] == UA
    assert user["fbp"] == cookies["_fbp"]  # what the browser stores is what Meta gets
    assert user["fbc"] == cookies["_fbc"] and user["fbc"].endswith(".IwAR0Zz_e2e-1")
    assert received["custom_data"]["order_id"] == "O-col-1"


def test_no_ad_storage_consent_or_a_bot_sends_nothing(server, graph):
    with httpx.Client(base_url=server.url) as http:
        assert collector(http, "col-denied", consent="denied").status_code == 200
        bot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
        assert collector(http, "col-bot", ua=bot).status_code == 200
        assert collector(http, "col-ok").status_code == 200
    wait_until(lambda: events_with(graph, "col-ok"), timeout=10)
    assert events_with(graph, "col-denied") == [] and events_with(graph, "col-bot") == []


def test_2500_events_arrive_in_3_requests(server, graph):
    events = [api_event(f"bulk-{i}") for i in range(2500)]
    r = httpx.post(server.url + "/api/events", json={"events": events}, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 2500
    wait_until(lambda: len(events_with(graph, "bulk-")) >= 2500, timeout=30)
    received = [e["event_id"] for e in events_with(graph, "bulk-")]
    assert sorted(received) == sorted(f"bulk-{i}" for i in range(2500))  # each exactly once
    sizes = sorted(len(r.events) for r in requests_with(graph, "bulk-"))
    assert sizes == [500, 1000, 1000]


def test_one_refused_event_of_500_is_dead_lettered_and_499_delivered(server, graph):
    graph.reject = {"b500-250": 2804019}
    try:
        events = [api_event(f"b500-{i}") for i in range(500)]
        r = httpx.post(server.url + "/api/events", json={"events": events}, headers=AUTH)
        assert r.status_code == 200, r.text
        letters = wait_until(
            lambda: [d for d in dead_letters(server.data_dir) if "b500-" in d["dedup_id"]],
            timeout=20,
        )
        wait_until(lambda: len(events_with(graph, "b500-")) >= 499, timeout=10)
    finally:
        graph.reject = {}
    delivered = [e["event_id"] for e in events_with(graph, "b500-")]
    assert len(delivered) == 499 and len(set(delivered)) == 499
    assert "b500-250" not in delivered
    [letter] = letters
    assert letter["dedup_id"] == "Purchase:b500-250"
    assert letter["code"] == "100/2804019"
    assert letter["status"] == 400
    assert "event b500-250 was refused" in letter["error"]
    assert letter["trace"]  # Meta's fbtrace_id, for a support ticket
    assert letter["payload"]["event_id"] == "b500-250"
    assert letter["destination"].startswith(f"meta:{PIXEL}:")
    assert TOKEN not in json.dumps(letter)
