"""End to end: the shipped container.json in a real `tagserver serve`, TikTok, Pinterest and
Snapchat credentials from the environment, each API stood in for by a fake on loopback.

Events come from the events API, collector.js hits and GA4 hits; what is asserted is what each
vendor receives, the click-id cookies the browser gets, and the dead letter of a refused event.
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
from fakes.capi import FakePinterest, FakeSnapchat, FakeTikTok
from support import ServerProcess, app_client, wait_until

from tagserver.cli.main import main

TT_PIXEL, PIN_ACCOUNT, SNAP_PIXEL = (
    "CABC123DEF456",
    "549755885175",
    "1ec32188-754e-4be2-8e55-c949a984a39f",
)
TT_TOKEN, PIN_TOKEN, SNAP_TOKEN = "ttSECRETtoken0001", "pinSECRETtoken0002", "snapSECRETtoken0003"
UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
AUTH = {"Authorization": "Bearer test-key"}
DEFAULT_CONTAINER = Path(__file__).resolve().parent.parent / "container.json"

pytestmark = pytest.mark.slow


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def fakes():
    with (
        FakeTikTok(token=TT_TOKEN, pixel_code=TT_PIXEL) as tt,
        FakePinterest(token=PIN_TOKEN) as pin,
        FakeSnapchat(token=SNAP_TOKEN) as snap,
    ):
        yield tt, pin, snap


@pytest.fixture(scope="module")
def server(fakes, tmp_path_factory):
    tt, pin, snap = fakes
    env = {
        "TIKTOK_PIXEL_CODE": TT_PIXEL, "TIKTOK_ACCESS_TOKEN": TT_TOKEN,
        "PINTEREST_AD_ACCOUNT_ID": PIN_ACCOUNT, "PINTEREST_ACCESS_TOKEN": PIN_TOKEN,
        "SNAPCHAT_PIXEL_ID": SNAP_PIXEL, "SNAPCHAT_ACCESS_TOKEN": SNAP_TOKEN,
        "TAGSERVER_TIKTOK_API_URL": tt.url, "TAGSERVER_PINTEREST_API_URL": pin.url,
        "TAGSERVER_SNAPCHAT_API_URL": snap.url,
        "TAGSERVER_RETRY_BASE_SECONDS": "0.1", "TAGSERVER_RETRY_CAP_SECONDS": "0.5",
    }  # fmt: skip
    tmp = tmp_path_factory.mktemp("vendors-e2e")
    with ServerProcess(tmp, DEFAULT_CONTAINER, env=env) as process:
        yield process
    logs = process.logs()
    for token in (TT_TOKEN, PIN_TOKEN, SNAP_TOKEN):
        assert token not in logs
    assert "jane.doe@example.com" not in logs.lower()


def received(fake: Any, event_id: str) -> list[dict[str, Any]]:
    return [e for e in fake.accepted_events() if e.get("event_id") == event_id]


def api_event(event_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_name": "purchase", "event_id": event_id,
        "page_location": "https://www.shop.test/checkout/thanks",
        "user_agent": UA, "ip_override": "203.0.113.7", "value": 10, "currency": "EUR",
        "user_data": {"email_address": f"{event_id}@example.com"}, **extra,
    }  # fmt: skip


def test_an_events_api_purchase_reaches_all_three_normalized(server, fakes):
    tt, pin, snap = fakes
    event = api_event(
        "api-1", event_time=int(time.time()) - 60, value="42.50", transaction_id="T-9",
        items=[{"item_id": "SKU-7", "price": 21.25, "quantity": 2}],
        user_data={"email_address": " Jane.Doe@Example.com", "phone_number": "+44 20 7946 0958",
                   "address": {"first_name": "Jane", "country": "UK"}},
        **{"x-tt-ck-ttclid": "E.C.P.click1", "x-sc-ck-sccid": "snapclick1"},
    )  # fmt: skip
    r = httpx.post(server.url + "/api/events", json=event, headers=AUTH)
    assert r.status_code == 200, r.text
    fired = set(r.json()["results"][0]["tags_fired"])
    assert {"tiktok_events", "pinterest_capi", "snapchat_capi"} <= fired

    [t] = wait_until(lambda: received(tt, "api-1"), timeout=10)
    assert t["event"] == "Purchase" and t["event_time"] == event["event_time"]
    assert t["user"]["email"] == [sha("jane.doe@example.com")]
    assert t["user"]["phone"] == [sha("+442079460958")]
    assert t["user"]["first_name"] == sha("jane") and t["user"]["country"] == "gb"
    assert t["user"]["ttclid"] == "E.C.P.click1"
    assert t["properties"]["value"] == 42.5 and t["properties"]["order_id"] == "T-9"
    [request] = [r for r in tt.requests if any(e["event_id"] == "api-1" for e in r.events)]
    assert request.headers["access-token"] == TT_TOKEN
    assert request.body["event_source_id"] == TT_PIXEL

    [p] = wait_until(lambda: received(pin, "api-1"), timeout=10)
    assert p["event_name"] == "checkout" and p["custom_data"]["value"] == "42.5"
    assert p["user_data"]["ph"] == [sha("442079460958")]
    assert p["user_data"]["country"] == [sha("gb")]

    [s] = wait_until(lambda: received(snap, "api-1"), timeout=10)
    assert s["event_name"] == "PURCHASE" and s["action_source"] == "WEB"
    assert s["user_data"]["em"] == [sha("jane.doe@example.com")]
    assert s["user_data"]["sc_click_id"] == "snapclick1"
    assert s["custom_data"]["currency"] == "EUR"


def collector_hit(http: httpx.Client, event_id: str, query: str, consent: str = "granted"):
    body = {
        "pid": f"page-{event_id}-0001", "consent": {"ad_storage": consent},
        "user": {"email": "Jane.Doe@Example.com"},
        "events": [{"name": "purchase", "id": event_id,
                    "params": {"value": 5, "currency": "USD"},
                    "page": {"page_location": f"https://www.shop.test/landing?{query}"}}],
    }  # fmt: skip
    headers = {
        "content-type": "text/plain;charset=UTF-8", "origin": "https://www.shop.test",
        "user-agent": UA, "x-forwarded-for": "198.51.100.23", "x-forwarded-proto": "https",
        "host": "sgtm.shop.test",
    }  # fmt: skip
    return http.post("/collect", content=json.dumps(body), headers=headers)


def set_cookies(response: httpx.Response) -> dict[str, str]:
    return {h.split("=", 1)[0]: h for h in response.headers.get_list("set-cookie")}


def test_a_collector_hit_sets_the_click_id_cookies_and_each_vendor_gets_its_own(server, fakes):
    tt, pin, snap = fakes
    query = "ttclid=E.C.P.Zz9&epik=dj0yJnU9Zz&ScCid=sc-Zz9"
    with httpx.Client(base_url=server.url) as http:
        r = collector_hit(http, "col-1", query)
        assert r.status_code == 200, r.text
        cookies = set_cookies(r)
        assert cookies["ttclid"].startswith("ttclid=E.C.P.Zz9; Max-Age=2592000; Domain=shop.test")
        assert cookies["_epik"].startswith("_epik=dj0yJnU9Zz;")
        assert cookies["_scclid"].startswith("_scclid=sc-Zz9;")
        assert all("HttpOnly" not in cookies[c] for c in ("ttclid", "_epik", "_scclid"))
        denied = collector_hit(http, "col-2", query, consent="denied")
        assert not {"ttclid", "_epik", "_scclid"} & set(set_cookies(denied))
    [t] = wait_until(lambda: received(tt, "col-1"), timeout=10)
    [p] = wait_until(lambda: received(pin, "col-1"), timeout=10)
    [s] = wait_until(lambda: received(snap, "col-1"), timeout=10)
    assert t["user"]["ttclid"] == "E.C.P.Zz9" and t["user"]["ip"] == "198.51.100.23"
    assert p["user_data"]["click_id"] == "dj0yJnU9Zz"
    assert s["user_data"]["sc_click_id"] == "sc-Zz9"
    assert received(tt, "col-2") == []  # no ad_storage: the tags do not fire


def test_a_ga4_hit_reaches_each_vendor(server, fakes):
    tt, pin, snap = fakes
    query = (
        "v=2&tid=G-TEST123&cid=555.1700000000&en=page_view&_p=1&ep.event_id=ga4-1"
        "&dl=https%3A%2F%2Fwww.shop.test%2F%3Fttclid%3DE.C.P.ga4&dr=&ul=en-us"
    )
    headers = {"host": "sgtm.shop.test", "user-agent": UA, "x-forwarded-for": "198.51.100.9",
               "origin": "https://www.shop.test", "x-forwarded-proto": "https"}  # fmt: skip
    r = httpx.post(server.url + "/g/collect?" + query, headers=headers)
    assert r.status_code == 204, r.text
    assert "ttclid=E.C.P.ga4" in r.headers.get("set-cookie", "")
    [t] = wait_until(lambda: received(tt, "ga4-1"), timeout=10)
    assert t["event"] == "Pageview" and t["user"]["ttclid"] == "E.C.P.ga4"
    [p] = wait_until(lambda: received(pin, "ga4-1"), timeout=10)
    assert p["event_name"] == "page_visit"
    [s] = wait_until(lambda: received(snap, "ga4-1"), timeout=10)
    assert s["event_name"] == "PAGE_VIEW"


def dead_letters(data_dir: Path) -> list[dict[str, Any]]:
    result = CliRunner().invoke(
        main, ["outbox", "dead-letters", "--json", "--data-dir", str(data_dir)]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["dead_letters"]


@pytest.mark.parametrize("vendor", ["tiktok", "pinterest", "snapchat"])
def test_one_refused_event_of_a_batch_is_dead_lettered_and_the_rest_delivered(
    server, fakes, vendor
):
    fake = dict(zip(("tiktok", "pinterest", "snapchat"), fakes, strict=True))[vendor]
    prefix = f"iso-{vendor}-"
    fake.reject = {f"{prefix}7": "this event is refused"}
    try:
        events = [api_event(f"{prefix}{i}") for i in range(20)]
        r = httpx.post(server.url + "/api/events", json={"events": events}, headers=AUTH)
        assert r.status_code == 200, r.text
        letters = wait_until(
            lambda: [d for d in dead_letters(server.data_dir)
                     if d["destination"].startswith(vendor) and prefix in d["dedup_id"]],
            timeout=20,
        )  # fmt: skip
        wait_until(lambda: len([e for e in fake.received_ids() if e.startswith(prefix)]) >= 19)
    finally:
        fake.reject = {}
    delivered = [e for e in fake.received_ids() if e.startswith(prefix)]
    assert sorted(delivered) == sorted(f"{prefix}{i}" for i in range(20) if i != 7)
    [letter] = letters
    assert letter["payload"]["event_id"] == f"{prefix}7"
    assert "this event is refused" in letter["error"]
    assert not any(t in json.dumps(letter) for t in (TT_TOKEN, PIN_TOKEN, SNAP_TOKEN))


def test_without_credentials_each_tag_runs_dry_and_preview_shows_the_exact_body(tmp_path):
    """The shipped container with no TIKTOK_*/PINTEREST_*/SNAPCHAT_* variables: nothing is
    sent, and preview shows each vendor's body, hashed, with the reason."""

    container = json.loads(DEFAULT_CONTAINER.read_text())
    container.pop("$schema", None)
    options = {"preview_password": "pw-preview-1", "preview_store": str(tmp_path / "p.sqlite3")}
    with app_client(tmp_path, container, **options) as c:
        c.post("/preview/login", data={"password": "pw-preview-1"}, follow_redirects=False)
        session = c.post("/preview/sessions", data={"name": "dry"},
                         headers={"Accept": "application/json"}).json()  # fmt: skip
        r = c.post(
            "/api/events",
            json=api_event("dry-1", user_data={"email_address": "Jane.Doe@Example.com"}),
            headers={**AUTH, "X-Tagserver-Preview": session["token"]},
        )
        assert r.status_code == 200, r.text
        [hit] = wait_until(lambda: c.get(f"/preview/api/s/{session['id']}/hits").json()["hits"])
        detail = c.get(f"/preview/api/s/{session['id']}/hits/{hit['id']}").json()
    tags = {t["tag"]: t for t in detail["events"][0]["tags"]}
    expected = {"tiktok_events": ("pixel_code and access_token", "user", "email"),
                "pinterest_capi": ("ad_account_id and access_token", "user_data", "em"),
                "snapchat_capi": ("pixel_id and access_token", "user_data", "em")}  # fmt: skip
    for name, (missing, user_key, email_key) in expected.items():
        assert tags[name]["status"] == "dry_run"
        [dry] = tags[name]["dry_run"]
        assert dry["reason"] == f"no {missing}, so nothing is sent"
        [body_event] = dry["payload"]["data"]
        assert body_event[user_key][email_key] == [sha("jane.doe@example.com")]
        assert body_event["event_id"] == "dry-1"
        assert tags[name]["outgoing"] == []
    assert "Jane.Doe@Example.com" not in json.dumps(detail["events"][0]["tags"])
