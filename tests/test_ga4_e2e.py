"""End to end: a GA4-fed site. The shipped container.json in a real `tagserver serve`, gtag.js
hits at /g/collect, the Meta tag sending to the fake Graph API on loopback.

Asserted is what Meta receives (a `Purchase` with value, currency, contents, order id, the
visitor's IP and user agent), what the browser gets (204, cookies), and what an operator sees
in preview when consent stops the tag.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fakes.graph import FakeGraph
from support import ServerProcess, wait_until

PIXEL = "5566778899"
TOKEN = "EAAG4ga4e2eSECRETtoken0123456789"
PREVIEW_PASSWORD = "ga4-e2e-preview-pw"
UA = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Safari/605.1.15"
)
VISITOR_IP = "203.0.113.77"
ORIGIN = "https://www.shop.test"
GTAG_SAFE = "-_.!~*'()"  # what encodeURIComponent leaves as is
DEFAULT_CONTAINER = Path(__file__).resolve().parent.parent / "container.json"

pytestmark = pytest.mark.slow


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def enc(pairs: list[tuple[str, str]]) -> str:
    """Encode like gtag.js (encodeURIComponent)."""
    return "&".join(k + "=" + quote(v, safe=GTAG_SAFE) for k, v in pairs)


def shared_query(gcs: str = "G111", cid: str = "1234567890.1718000000") -> str:
    return enc(
        [("v", "2"), ("tid", "G-TEST123"), ("gtm", "45je46h0v9"), ("_p", "1718010555000"),
         ("gcs", gcs), ("gcd", "13t3t3t3t5l1" if gcs == "G111" else "13p3p3p3p5l1"),
         ("npa", "0"), ("dma", "0"), ("cid", cid), ("uid", "customer-42"), ("ul", "en-us"),
         ("sr", "1920x1080"), ("_s", "9"), ("sid", "1718010000"), ("sct", "3"), ("seg", "1"),
         ("dl", "https://www.shop.test/checkout/thank-you?fbclid=IwAR0ga4E2E"),
         ("dr", "https://www.shop.test/checkout"), ("dt", "Thank you")]
    )  # fmt: skip


def purchase_line(event_id: str, order: str) -> str:
    return enc(
        [("en", "purchase"), ("_c", "1"), ("_et", "4100"), ("cu", "EUR"),
         ("pr1", "idSKU123~nmBlue Shirt~brAcme~caApparel~vaBlue~pr19.99~qt2~cpSALE10"),
         ("pr2", "idSKU456~nmGreen Socks~brAcme~pr4.99~qt1~k0material~v0cotton"),
         ("pr3", "idSKU789~nmRed Cap~brAcme~pr25~qt1"),
         ("ep.transaction_id", order), ("ep.coupon", "SUMMER"), ("epn.value", "72.96"),
         ("epn.tax", "11.65"), ("epn.shipping", "4.99"), ("ep.event_id", event_id),
         ("ep.em", "Jane.Doe@Example.com"), ("ep.ph", "+1 (650) 555-1212"), ("up.fn", "Jane")]
    )  # fmt: skip


def batched_purchase(event_id: str, order: str) -> bytes:
    """The batch gtag.js sends at the end of a checkout: an engagement ping and the purchase."""
    lines = [enc([("en", "scroll"), ("epn.percent_scrolled", "90"), ("_et", "5300")]),
             purchase_line(event_id, order)]  # fmt: skip
    return "\r\n".join(lines).encode()


def send(http: httpx.Client, query: str, body: bytes, **headers: str) -> httpx.Response:
    return http.post(
        "/g/collect?" + query,
        content=body,
        headers={
            "host": "sgtm.shop.test",  # the site's tagging subdomain, as the proxy passes it
            "user-agent": UA,
            "x-forwarded-for": VISITOR_IP,  # the server trusts its loopback "proxy"
            "origin": ORIGIN,
            "content-type": "text/plain;charset=UTF-8",
            **headers,
        },
    )


def meta_events(graph: FakeGraph, event_id: str) -> list[dict[str, Any]]:
    return [e for e in graph.accepted_events() if e.get("event_id") == event_id]


def attempted(graph: FakeGraph, event_id: str) -> bool:
    """Did any request (accepted or not) carry this event?"""
    return any(e.get("event_id") == event_id for r in list(graph.requests) for e in r.events)


def cookie_values(response: httpx.Response) -> dict[str, str]:
    return {
        h.split("=", 1)[0]: h.split(";", 1)[0].split("=", 1)[1]
        for h in response.headers.get_list("set-cookie")
    }


@pytest.fixture(scope="module")
def graph():
    with FakeGraph(token=TOKEN, pixel_ids={PIXEL}) as fake:
        yield fake


@pytest.fixture(scope="module")
def server(graph, tmp_path_factory):
    env = {
        "META_PIXEL_ID": PIXEL,
        "META_ACCESS_TOKEN": TOKEN,
        "TAGSERVER_META_GRAPH_URL": graph.url,
        "TAGSERVER_PREVIEW_PASSWORD": PREVIEW_PASSWORD,
        "TAGSERVER_RETRY_BASE_SECONDS": "0.1",
        "TAGSERVER_RETRY_CAP_SECONDS": "0.5",
    }
    with ServerProcess(tmp_path_factory.mktemp("ga4-e2e"), DEFAULT_CONTAINER, env=env) as process:
        yield process
    logs = process.logs()
    assert TOKEN not in logs
    assert "jane.doe@example.com" not in logs.lower()


def test_batched_ga4_purchase_reaches_meta_as_a_purchase(server, graph):
    with httpx.Client(base_url=server.url) as http:
        r = send(http, shared_query(), batched_purchase("ga4-purchase-1", "T-1001"))
    assert r.status_code == 204, r.text
    assert r.content == b""
    assert r.headers["access-control-allow-origin"] == ORIGIN
    cookies = cookie_values(r)

    [received] = wait_until(lambda: meta_events(graph, "ga4-purchase-1"), timeout=15)
    assert received["event_name"] == "Purchase"
    assert received["action_source"] == "website"
    assert received["event_source_url"] == (
        "https://www.shop.test/checkout/thank-you?fbclid=IwAR0ga4E2E"
    )
    assert abs(received["event_time"] - time.time()) < 60

    custom = received["custom_data"]
    assert custom["value"] == 72.96
    assert custom["currency"] == "EUR"
    assert custom["order_id"] == "T-1001"
    assert custom["contents"] == [
        {"id": "SKU123", "quantity": 2, "item_price": 19.99},
        {"id": "SKU456", "quantity": 1, "item_price": 4.99},
        {"id": "SKU789", "quantity": 1, "item_price": 25},
    ]
    assert custom["content_ids"] == ["SKU123", "SKU456", "SKU789"]
    assert custom["num_items"] == 4

    user = received["user_data"]
    assert user["client_ip_address"] == VISITOR_IP
    assert user["client_user_agent"] == UA
    assert user["em"] == [sha("jane.doe@example.com")]
    assert user["ph"] == [sha("16505551212")]
    assert user["fn"] == [sha("jane")]
    assert user["fbp"] == cookies["_fbp"]  # what the browser stores is what Meta gets
    assert user["fbc"] == cookies["_fbc"] and user["fbc"].endswith(".IwAR0ga4E2E")

    # the scroll line of the same batch is no Meta event: only the purchase went out
    sent = [e for e in graph.accepted_events() if e["user_data"].get("fbp") == cookies["_fbp"]]
    assert [e["event_name"] for e in sent] == ["Purchase"]


def test_a_vendor_outage_does_not_hold_up_the_answer(server, graph):
    graph.mode = "outage"
    try:
        with httpx.Client(base_url=server.url) as http:
            started = time.perf_counter()
            r = send(http, shared_query(cid="777.1718000000"), batched_purchase("ga4-late", "T-2"))
            elapsed = time.perf_counter() - started
        assert r.status_code == 204
        assert elapsed < 1.0  # answered from the outbox commit, not after Meta
        wait_until(lambda: attempted(graph, "ga4-late"), timeout=10)  # Meta was down then
    finally:
        graph.mode = "ok"
    [received] = wait_until(lambda: meta_events(graph, "ga4-late"), timeout=15)
    assert received["custom_data"]["order_id"] == "T-2"


def test_consent_denied_sends_nothing_and_preview_says_why(server, graph):
    with httpx.Client(base_url=server.url) as http:
        login = http.post("/preview/login", data={"password": PREVIEW_PASSWORD})
        assert login.status_code in (200, 303), login.text
        session = http.post("/preview/sessions", headers={"accept": "application/json"}).json()

        denied = send(
            http,
            shared_query(gcs="G100", cid="888.1718000000"),
            batched_purchase("ga4-denied", "T-3"),
            **{"x-tagserver-preview": session["token"]},
        )
        assert denied.status_code == 204
        assert "_fbp" not in cookie_values(denied)  # ad_storage denied: no Meta cookie either
        # a granted purchase sent afterwards is the sign that the queue has been worked through
        granted = send(http, shared_query(cid="999.1718000000"), batched_purchase("ga4-ok", "T-4"))
        assert granted.status_code == 204
        wait_until(lambda: meta_events(graph, "ga4-ok"), timeout=15)
        assert not attempted(graph, "ga4-denied")

        def traced():
            hits = http.get(f"/preview/api/s/{session['id']}/hits").json()["hits"]
            return hits[0] if hits else None

        listed = wait_until(traced, timeout=10)
        trace = http.get(f"/preview/api/s/{session['id']}/hits/{listed['id']}").json()

    purchase = next(e for e in trace["events"] if e["event"]["event_name"] == "purchase")
    assert purchase["event"]["consent"]["ad_storage"] == "denied"
    meta = next(t for t in purchase["tags"] if t["type"] == "meta_capi")
    assert meta["status"] == "no_consent"
    assert meta["reason"] == "consent: ad_storage is denied"
    assert meta["outgoing"] == []
    assert "cookie _fbp: not set: ad_storage denied" in [c["message"] for c in trace["console"]]
