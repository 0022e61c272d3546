"""The events API client: auth, limits, per-event validation, and no 5xx for any body."""

import ipaddress
import json
import logging
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import app_client, minimal_container

from tagserver.toolkit.events import EventError, check_event

AUTH = {"Authorization": "Bearer test-key"}


def test_auth(tmp_path):
    with app_client(tmp_path, minimal_container()) as client:
        assert client.post("/api/events", json={"event_name": "e"}).status_code == 401
        wrong = client.post(
            "/api/events", json={"event_name": "e"}, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
        basic = client.post(
            "/api/events", json={"event_name": "e"}, headers={"Authorization": "Basic test-key"}
        )
        assert basic.status_code == 401
        assert client.post("/api/events", json={"event_name": "e"}, headers=AUTH).status_code == 200
    with app_client(tmp_path, minimal_container(), api_keys="") as client:
        disabled = client.post("/api/events", json={"event_name": "e"}, headers=AUTH)
        assert disabled.status_code == 401 and "TAGSERVER_API_KEYS" in disabled.json()["error"]


def test_several_keys_and_key_never_echoed(tmp_path):
    with app_client(tmp_path, minimal_container(), api_keys="first-key, second-key") as client:
        ok = client.post(
            "/api/events", json={"event_name": "e"}, headers={"Authorization": "Bearer second-key"}
        )
        assert ok.status_code == 200 and "second-key" not in ok.text


def test_bad_requests_get_clear_4xx(tmp_path):
    with app_client(
        tmp_path, minimal_container(), max_body_bytes=2000, max_events_per_request=3
    ) as client:
        assert client.get("/nowhere").status_code == 404
        assert "no client claims" in client.get("/nowhere").json()["error"]
        assert client.get("/api/events", headers=AUTH).status_code == 405
        not_json = client.post("/api/events", content=b"event_name=purchase", headers=AUTH)
        assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]
        too_big = client.post("/api/events", content=b"{" + b" " * 3000 + b"}", headers=AUTH)
        assert too_big.status_code == 413 and "limit" in too_big.json()["error"]
        too_many = client.post(
            "/api/events", json={"events": [{"event_name": "e"}] * 4}, headers=AUTH
        )
        assert too_many.status_code == 413 and "limit of 3" in too_many.json()["error"]
        wrong_shape = client.post("/api/events", json=[1, 2], headers=AUTH)
        assert wrong_shape.status_code == 400
        empty = client.post("/api/events", json={"events": []}, headers=AUTH)
        assert empty.status_code == 400 and "empty" in empty.json()["error"]


def test_per_event_rejection_names_the_field(tmp_path):
    events = [
        {"event_name": "ok"},
        {"event_name": 5},
        {"event_name": "e", "value": "ten"},
        {"event_name": "e", "user_data": "a@b.c"},
        {"event_name": "e", "ip_override": "999.1.1.1"},
        {"event_name": "e", "event_time": "yesterday"},
        {"event_name": "e", "items": "SKU"},
        {"event_name": "e", "consent": {"ad_storage": "maybe"}},
        "not an object",
    ]
    with app_client(tmp_path, minimal_container()) as client:
        body = client.post("/api/events", json={"events": events}, headers=AUTH).json()
    assert body["accepted"] == 1 and body["rejected"] == 8
    reasons = [r.get("reason", "") for r in body["results"]]
    assert reasons[0] == "" and body["results"][0]["accepted"] is True
    for index, field in enumerate(
        [
            "event_name",
            "value",
            "user_data",
            "ip_override",
            "event_time",
            "items",
            "consent.ad_storage",
        ],
        start=1,
    ):
        assert reasons[index].startswith(field), (index, reasons[index])
    assert reasons[8] == "expected an object, got str"


def test_text_fields_are_strings_of_bounded_length(tmp_path):
    events = [
        {"event_name": "e", "event_id": 42, "transaction_id": 7, "currency": None},
        {"event_name": "e", "currency": 978},
        {"event_name": "e", "page_title": "t" * 8193},
        {"event_name": "e", "client_id": True},
        {"event_name": "e", "page_title": "t" * 8192, "search_term": ["shoes"]},
    ]
    with app_client(tmp_path, minimal_container()) as client:
        body = client.post("/api/events", json={"events": events}, headers=AUTH).json()
    first, *rejected = body["results"]
    assert first["accepted"] is True and first["event_id"] == "42"
    assert [r["reason"] for r in rejected] == [
        "currency: expected a string, got int",
        "page_title: longer than 8192 characters",
        "client_id: expected a string, got bool",
        "search_term: expected a string, got list",
    ]


def test_offline_event_time_and_customer_ip_and_user_agent_win(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tagserver.tag.log")
    events = [
        {
            "event_name": "purchase",
            "event_time": "2026-11-20T10:00:00Z",
            "action_source": "physical_store",
            "ip_override": "198.51.100.4",
            "user_agent": "POS/1.0",
        },
        {"event_name": "purchase", "event_time": 1764000000},
    ]
    with app_client(tmp_path, minimal_container()) as client:
        body = client.post(
            "/api/events", json={"events": events}, headers={**AUTH, "User-Agent": "crm-sync/2"}
        ).json()
    assert body["accepted"] == 2
    lines = [
        json.loads(r.getMessage())["event"] for r in caplog.records if r.name == "tagserver.tag.log"
    ]
    assert lines[0]["event_time"] == int(datetime(2026, 11, 20, 10, tzinfo=UTC).timestamp())
    # (the log tag masks the address's host part)
    assert lines[0]["ip_override"] == "198.51.100.0" and lines[0]["user_agent"] == "POS/1.0"
    assert lines[0]["action_source"] == "physical_store"
    assert lines[1]["event_time"] == 1764000000
    # the calling server's own agent and address are not the customer's
    assert "user_agent" not in lines[1] and "ip_override" not in lines[1]


def test_event_ids_are_kept_or_derived_deterministically(tmp_path):
    body = {"events": [{"event_name": "a", "event_id": "order-1"}, {"event_name": "b"}]}
    with app_client(tmp_path, minimal_container()) as client:
        first = client.post("/api/events", json=body, headers=AUTH).json()["results"]
        again = client.post("/api/events", json=body, headers=AUTH).json()["results"]
    assert first[0]["event_id"] == "order-1"
    assert first[1]["event_id"] and first[1]["event_id"] == again[1]["event_id"]


def test_healthz_names_the_container(tmp_path):
    with app_client(tmp_path, minimal_container(name="shop", version="7")) as client:
        body = client.get("/healthz").json()
    assert body["status"] == "ok"
    assert body["container"]["name"] == "shop" and body["container"]["version"] == "7"
    assert len(body["container"]["hash"]) == 12


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=15), children, max_size=5)
    ),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "event_name": json_values | st.text(max_size=20),
        "value": json_values,
        "event_time": json_values
        | st.integers(0, 4_000_000_000)
        | st.sampled_from(["2026-01-01", "2026-13-45T99"]),
        "user_data": json_values,
        "items": json_values,
        "consent": json_values,
        "ip_override": json_values | st.sampled_from(["::1", "1.2.3.4", "abc"]),
        "event_id": json_values,
    },
)
bodies = (
    st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | event_like.map(lambda v: json.dumps(v).encode())
    | st.lists(event_like, max_size=5).map(lambda v: json.dumps({"events": v}).encode())
)


def test_fuzz_events_api_never_answers_5xx(tmp_path):
    with app_client(tmp_path, minimal_container()) as client:

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(body=bodies)
        def check(body):
            response = client.post("/api/events", content=body, headers=AUTH)
            assert response.status_code < 500, (body, response.text)
            assert "error" in response.json() or "results" in response.json()

        check()


octets = st.integers(0, 300).map(str) | st.sampled_from(["", "00", "01", "007", "1 ", "٣", "x"])
address_like = (
    st.lists(octets, min_size=3, max_size=5).map(".".join)
    | st.ip_addresses().map(str)
    | st.text(alphabet="0123456789.:abcdef% \n/", max_size=24)
)


@settings(max_examples=500, deadline=None)
@given(ip=address_like)
def test_ip_override_is_accepted_exactly_when_ipaddress_parses_it(ip):
    """`check_event` tells most IPv4 addresses by a pattern: it must agree with `ipaddress`."""
    try:
        ipaddress.ip_address(ip)
        valid = True
    except ValueError:
        valid = False
    try:
        check_event({"event_name": "e", "ip_override": ip}, 1_800_000_000)
        accepted = True
    except EventError as exc:
        assert str(exc) == f"ip_override: {ip[:60]!r} is not an IP address"
        accepted = False
    assert accepted == valid, ip
