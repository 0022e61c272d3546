"""Whose IP address and user agent an event carries: the visitor's for hits from a browser,
never a calling backend's for server-to-server events (unless the container says so)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fakes.graph import FakeGraph
from prometheus_client import REGISTRY
from starlette.testclient import TestClient
from support import NO_GA4, app_client, minimal_container, wait_until, write_container

from tagserver.settings import Settings
from tagserver.web.app import create_app

PIXEL = "1122334455"
TOKEN = "EAAE2EsecretTOKENvalue0123456789"
AUTH = {"Authorization": "Bearer test-key"}
BACKEND_IP = "198.51.100.77"  # the calling server's address, as the app sees it
BACKEND_UA = "Python-urllib/3.11"
DEFAULT_CONTAINER = Path(__file__).resolve().parent.parent / "container.json"
STORE_PURCHASE = {
    "event_name": "purchase",
    "event_id": "order-1",
    "value": 12.5,
    "currency": "EUR",
    "action_source": "physical_store",
    "user_data": {"email_address": "jane@example.com"},
}


def meta_container(**client_params: Any) -> dict[str, Any]:
    client: dict[str, Any] = {"name": "backend", "type": "events_api"}
    if client_params:
        client["params"] = client_params
    return minimal_container(
        clients=[client],
        tags=[{"name": "meta", "type": "meta_capi", "fire_on": ["all"],
               "params": {"pixel_id": PIXEL, "access_token": TOKEN}}],
    )  # fmt: skip


@contextmanager
def backend_client(
    tmp_path: Path, container: dict[str, Any], **settings: Any
) -> Iterator[TestClient]:
    """The app seen from a backend at BACKEND_IP (a real address, unlike TestClient's)."""
    options = {
        "container": str(write_container(tmp_path, container)),
        "data_dir": str(tmp_path / "data"),
        "api_keys": "test-key",
        "ga4_collect_url": NO_GA4,
        "retry_base_seconds": 0.05,
        **settings,
    }
    app = create_app(Settings.from_env({}, **options))  # core and plugin settings by name
    with TestClient(app, base_url="http://sgtm.shop.test", client=(BACKEND_IP, 40000)) as c:
        yield c


def post(client: TestClient, *events: dict[str, Any], **headers: str) -> Any:
    return client.post(
        "/api/events",
        json={"events": list(events)},
        headers={**AUTH, "User-Agent": BACKEND_UA, **headers},
    )


def test_the_calling_backend_is_not_sent_to_meta_as_the_customer(tmp_path):
    with (
        FakeGraph(token=TOKEN, pixel_ids={PIXEL}) as graph,
        backend_client(tmp_path, meta_container(), meta_graph_url=graph.url) as client,
    ):
        customer = {**STORE_PURCHASE, "event_id": "order-2", "ip_override": "203.0.113.9",
                    "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"}  # fmt: skip
        r = post(client, STORE_PURCHASE, customer)
        assert r.status_code == 200, r.text
        first, second = r.json()["results"]
        assert first["tags_fired"] == ["meta"]
        [warning] = first["warnings"]
        assert warning.startswith("no ip_override or user_agent:")
        assert "calling server's are not used" in warning
        assert "warnings" not in second
        wait_until(lambda: len(graph.accepted_events()) == 2, timeout=15)
    sent = {e["event_id"]: e["user_data"] for e in graph.accepted_events()}
    assert "client_ip_address" not in sent["order-1"]
    assert "client_user_agent" not in sent["order-1"]
    assert BACKEND_IP not in json.dumps(sent) and "Python-urllib" not in json.dumps(sent)
    assert sent["order-2"]["client_ip_address"] == "203.0.113.9"
    assert sent["order-2"]["client_user_agent"].endswith("Firefox/128.0")


def test_a_container_may_opt_in_to_the_request_ip_and_user_agent(tmp_path):
    container = meta_container(use_request_ip_and_user_agent=True)
    with (
        FakeGraph(token=TOKEN, pixel_ids={PIXEL}) as graph,
        backend_client(tmp_path, container, meta_graph_url=graph.url) as client,
    ):
        r = post(client, STORE_PURCHASE, **{"User-Agent": "Mozilla/5.0 (relayed) Safari/605.1"})
        assert r.status_code == 200 and "warnings" not in r.json()["results"][0]
        wait_until(lambda: graph.accepted_events(), timeout=15)
    [event] = graph.accepted_events()
    assert event["user_data"]["client_ip_address"] == BACKEND_IP
    assert event["user_data"]["client_user_agent"] == "Mozilla/5.0 (relayed) Safari/605.1"


def test_preview_shows_that_the_event_has_no_customer_ip_or_user_agent(tmp_path):
    settings = {"preview_password": "pw", "preview_store": str(tmp_path / "preview.sqlite3")}
    with backend_client(tmp_path, minimal_container(), **settings) as client:
        client.post("/preview/login", data={"password": "pw"}, follow_redirects=False)
        session = client.post(
            "/preview/sessions", data={"name": "t"}, headers={"Accept": "application/json"}
        ).json()
        r = post(client, STORE_PURCHASE, **{"X-Tagserver-Preview": session["token"]})
        assert r.status_code == 200
        url = f"/preview/api/s/{session['id']}/hits"
        [hit] = wait_until(lambda: client.get(url).json()["hits"])
        detail = client.get(f"{url}/{hit['id']}").json()
    [line] = [c for c in detail["console"] if c["level"] == "warning"]
    assert line["message"].startswith("event 0: no ip_override or user_agent:")
    variables = detail["events"][0]["variables"]
    assert variables["client_ip"] is None and variables["user_agent"] is None
    assert variables["user_agent.is_bot"] is False


# -- bot detection is about the visitor's agent (the default container's `bots` trigger)


@pytest.mark.parametrize("caller", ["Python-urllib/3.11", "Java/17.0.2", "curl/8.5.0"])
def test_default_container_does_not_take_a_backend_for_a_bot(tmp_path, caller):
    with app_client(tmp_path, json.loads(DEFAULT_CONTAINER.read_text())) as client:
        r = client.post("/api/events", json=STORE_PURCHASE, headers={**AUTH, "User-Agent": caller})
    [result] = r.json()["results"]
    not_fired = result["tags_not_fired"]  # without credentials the tag runs dry: not blocked
    assert "meta_capi" in result["tags_fired"] or not_fired["meta_capi"].startswith("dry run:")
    assert not not_fired.get("meta_capi", "").startswith("blocked"), not_fired


def test_default_container_still_blocks_a_bot_customer_and_a_bot_visitor(tmp_path):
    bot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
    page = {"page_location": "https://www.shop.test/", "page_title": "Shop"}
    before = blocked("meta_capi")
    with app_client(tmp_path, json.loads(DEFAULT_CONTAINER.read_text())) as client:
        api = client.post(
            "/api/events",
            json={**STORE_PURCHASE, "user_agent": bot},
            headers={**AUTH, "User-Agent": "Java/17.0.2"},
        )
        assert api.json()["results"][0]["tags_not_fired"]["meta_capi"] == (
            "blocked by trigger 'bots'"
        )
        # a hit from the visitor's own browser: the request's agent is the visitor's
        hit = {"pid": "3f2b8c1e", "events": [{"name": "page_view", "id": "pv-1", "page": page}]}
        collect = client.post(
            "/collect",
            content=json.dumps(hit),
            headers={"content-type": "text/plain", "origin": "https://www.shop.test",
                     "user-agent": "Python-urllib/3.11"},
        )  # fmt: skip
        assert collect.status_code < 300, collect.text
        wait_until(lambda: blocked("meta_capi") == before + 2)  # the customer and the visitor


def blocked(tag: str) -> float:
    labels = {"tag": tag, "status": "blocked"}
    return REGISTRY.get_sample_value("tagserver_tag_results_total", labels) or 0.0
