"""The collector client, collector.js and /demo over HTTP: what a page and its visitor see."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from support import ServerProcess, app_client, minimal_container

ORIGIN = "https://www.shop.test"
PAGE = {
    "page_location": "https://www.shop.test/product/mug?color=blue",
    "page_referrer": "https://www.google.com/",
    "page_title": "Mug – Shop",
    "language": "en-GB",
    "screen_resolution": "1920x1080",
}


def container(**client: Any) -> dict[str, Any]:
    return minimal_container(
        clients=[{"name": "collector", "type": "collector", **({"params": client} if client else {})}],
        tags=[
            {
                "name": "log_all",
                "type": "log",
                "fire_on": ["all"],
                # the log tag masks user_data; these fields show what the client built
                "params": {"fields": {
                    "email": "{{event.user_data.email_address}}",
                    "phone": "{{event.user_data.phone_number}}",
                    "city": "{{event.user_data.address.city}}",
                    "first_name": "{{event.user_data.address.first_name}}",
                    "country": "{{event.user_data.address.country}}",
                }},
            }
        ],
    )  # fmt: skip


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with app_client(tmp_path, container()) as c:
        yield c


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.INFO, logger="tagserver.tag.log")

    def lines() -> list[dict[str, Any]]:
        return [json.loads(r.getMessage()) for r in caplog.records if r.name == "tagserver.tag.log"]

    return lines


def hit(events: list[dict[str, Any]] | None = None, **envelope: Any) -> str:
    body = {"pid": "3f2b8c1e-1d2f-4c4e-9a51-3f7a2b8c9d10", "ts": None, **envelope}
    body["events"] = (
        events if events is not None else [{"name": "page_view", "id": "ev-1", "page": PAGE}]
    )
    return json.dumps(body)


def post(
    client: TestClient, body: str | bytes, url: str = "/collect", **headers: str
) -> httpx.Response:
    return client.post(
        url,
        content=body,
        headers={"content-type": "text/plain;charset=UTF-8", "origin": ORIGIN, **headers},
    )


def set_cookies(response: httpx.Response) -> dict[str, str]:
    out = {}
    for header in response.headers.get_list("set-cookie"):
        name = header.split("=", 1)[0]
        out[name] = header
    return out


def cookie_value(header: str) -> str:
    return header.split(";", 1)[0].split("=", 1)[1]


# -- the happy path -------------------------------------------------------------------------------


def test_page_view_becomes_an_event_with_page_data_and_visitor_ids(
    client: TestClient, logged: Any
) -> None:
    response = post(client, hit())
    assert response.status_code == 200, response.text
    assert response.json() == {
        "accepted": 1, "rejected": 0,
        "events": [{"index": 0, "accepted": True, "event_name": "page_view", "event_id": "ev-1"}],
    }  # fmt: skip
    jar = set_cookies(response)
    assert set(jar) == {"_fbp", "tagserver_cid"}
    [line] = logged()
    event = line["event"]
    for key, value in PAGE.items():
        assert event[key] == value
    assert event["page_hostname"] == "www.shop.test" and event["page_path"] == "/product/mug"
    assert event["x-fb-ck-fbp"] == cookie_value(jar["_fbp"])
    assert event["client_id"] == cookie_value(jar["tagserver_cid"])
    assert event["action_source"] == "website" and event["event_id"] == "ev-1"
    assert event["user_agent"] and event["ip_override"]


def test_event_params_user_data_and_consent(client: TestClient, logged: Any) -> None:
    user = {"email": "Jane@Example.com", "phone": 442079460958, "first_name": "Jane",
            "city": "London", "country": "GB", "external_id": "cust-42"}  # fmt: skip
    consent = {"ad_storage": "granted", "analytics_storage": True}
    events = [{"name": "purchase", "id": "p-1", "page": PAGE,
               "params": {"value": "12.50", "currency": "EUR", "transaction_id": 981,
                          "items": [{"item_id": "MUG-1", "price": 12.5}], "coupon": "X"}}]  # fmt: skip
    response = post(client, hit(events, user=user, consent=consent))
    assert response.status_code == 200, response.text
    [line] = logged()
    event = line["event"]
    assert (
        event["value"] == 12.5 and event["currency"] == "EUR" and event["transaction_id"] == "981"
    )
    assert event["items"] == [{"item_id": "MUG-1", "price": 12.5}] and event["coupon"] == "X"
    assert event["user_id"] == "cust-42"
    assert event["consent"] == {"ad_storage": "granted", "analytics_storage": "granted"}
    assert set(event["user_data"]) == {"email_address", "phone_number", "address"}
    assert set(event["user_data"]["address"]) == {"first_name", "city", "country"}
    assert line["fields"] == {"email": "Jane@Example.com", "phone": "442079460958", "city": "London",
                              "first_name": "Jane", "country": "GB"}  # fmt: skip


def test_server_fills_event_id_when_page_sends_none(client: TestClient, logged: Any) -> None:
    response = post(client, hit([{"name": "a", "page": PAGE}, {"name": "b", "page": PAGE}]))
    ids = [row["event_id"] for row in response.json()["events"]]
    assert all(ids) and ids[0] != ids[1]
    assert [line["event_id"] for line in logged()] == ids


def test_every_event_of_the_hit_gets_the_visitor_ids(client: TestClient, logged: Any) -> None:
    events = [{"name": "page_view", "page": {**PAGE, "page_location": "https://www.shop.test/?fbclid=AbC123"}},
              {"name": "view_item", "page": PAGE}]  # fmt: skip
    response = post(client, hit(events))
    fbc = cookie_value(set_cookies(response)["_fbc"])
    assert fbc.endswith(".AbC123")
    for line in logged():
        assert line["event"]["x-fb-ck-fbc"] == fbc and line["event"]["x-fb-ck-fbp"]


def test_returning_visitor_keeps_cookies_and_fbc(client: TestClient, logged: Any) -> None:
    location = {**PAGE, "page_location": "https://www.shop.test/?fbclid=AbC123"}
    first = set_cookies(post(client, hit([{"name": "page_view", "page": location}])))
    fbp, fbc, cid = (cookie_value(first[n]) for n in ("_fbp", "_fbc", "tagserver_cid"))
    client.cookies.clear()
    client.cookies.update({"_fbp": fbp, "_fbc": fbc, "tagserver_cid": cid})
    again = set_cookies(
        post(client, hit([{"name": "page_view", "page": location}], pid="other-page-1234567"))
    )
    assert cookie_value(again["_fbp"]) == fbp and cookie_value(again["_fbc"]) == fbc
    assert cookie_value(again["tagserver_cid"]) == cid
    assert logged()[-1]["event"]["x-fb-ck-fbc"] == fbc


def test_preview_token_is_removed_from_page_urls(client: TestClient, logged: Any) -> None:
    page = {**PAGE, "page_location": "https://www.shop.test/?a=1&tagserver_preview=SECRET&b=2",
            "page_referrer": "https://www.shop.test/?tagserver_preview=SECRET"}  # fmt: skip
    post(
        client, hit([{"name": "page_view", "page": page}]), url="/collect?tagserver_preview=SECRET"
    )
    event = logged()[0]["event"]
    assert event["page_location"] == "https://www.shop.test/?a=1&b=2"
    assert event["page_referrer"] == "https://www.shop.test/"


def test_one_bad_event_does_not_sink_the_others(client: TestClient, logged: Any) -> None:
    response = post(
        client,
        hit([{"name": "ok", "page": PAGE}, {"name": "bad", "params": {"ip_override": "1.2.3.4"}}]),
    )
    assert response.status_code == 200
    rows = response.json()["events"]
    assert rows[0]["accepted"] and not rows[1]["accepted"]
    assert rows[1]["reason"] == "events[1].params.ip_override: set by the server, not by the page"
    assert [line["event_name"] for line in logged()] == ["ok"]


# -- cookies over HTTP ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "domain"),
    [
        ("http://sgtm.shop.example.co.uk/collect", "example.co.uk"),
        ("http://127.0.0.1:8080/collect", None),
        ("http://localhost:8080/collect", None),
    ],
)
def test_cookie_domain_follows_the_host(client: TestClient, url: str, domain: str | None) -> None:
    origin = url.rsplit("/", 1)[0].replace("sgtm.", "www.")
    jar = set_cookies(post(client, hit(), url=url, origin=origin))
    for header in jar.values():
        assert ("; Domain=" + domain + ";" in header) if domain else ("Domain=" not in header)
        assert "; Path=/;" in header and "SameSite=Lax" in header and "Secure" not in header


def test_https_sets_secure(client: TestClient) -> None:
    jar = set_cookies(post(client, hit(), url="https://sgtm.shop.test/collect"))
    assert all(h.endswith("; Secure") or h.endswith("; Secure; HttpOnly") for h in jar.values())


def test_consent_denied_sets_no_ad_cookies(client: TestClient, logged: Any) -> None:
    client.cookies.update({"_fbp": "fb.1.1690000000000.1234"})
    page = {**PAGE, "page_location": "https://www.shop.test/?fbclid=AbC123"}
    response = post(
        client, hit([{"name": "page_view", "page": page}], consent={"ad_storage": "denied"})
    )
    assert set(set_cookies(response)) == {"tagserver_cid"}
    event = logged()[0]["event"]
    assert "x-fb-ck-fbp" not in event and "x-fb-ck-fbc" not in event
    response = post(client, hit(consent={"ad_storage": "denied", "analytics_storage": "denied"}))
    assert "set-cookie" not in response.headers
    assert "client_id" not in logged()[-1]["event"]


def test_set_cookies_off(tmp_path: Path) -> None:
    with app_client(tmp_path, container(set_cookies=False)) as c:
        response = post(c, hit())
    assert response.status_code == 200 and "set-cookie" not in response.headers


def test_parallel_first_hits_get_one_fbp(tmp_path: Path) -> None:
    """A real server; a new visitor's page fires 8 hits at once, none with a cookie yet."""
    body = hit([{"name": "page_view", "page": PAGE}], ts=None)

    async def burst(url: str, body: str) -> list[httpx.Response]:
        async with httpx.AsyncClient() as http:
            return await asyncio.gather(
                *(
                    http.post(url, content=body, headers={"x-forwarded-proto": "https"})
                    for _ in range(8)
                )
            )

    with ServerProcess(tmp_path, container(), workers=2) as server:
        responses = asyncio.run(burst(server.url + "/collect", body))
        assert {r.status_code for r in responses} == {200}
        values = {cookie_value(set_cookies(r)["_fbp"]) for r in responses}
        cids = {cookie_value(set_cookies(r)["tagserver_cid"]) for r in responses}
        assert len(values) == 1 and len(cids) == 1
        # the peer is 127.0.0.1, a trusted proxy: its X-Forwarded-Proto makes the cookies Secure
        assert all("; Secure" in set_cookies(r)["_fbp"] for r in responses)
        # another page (another visitor) gets another value
        other = asyncio.run(burst(server.url + "/collect", body.replace("3f2b8c1e", "99999999")))
        assert cookie_value(set_cookies(other[0])["_fbp"]) not in values


# -- CORS -----------------------------------------------------------------------------------------


def test_same_site_origin_gets_a_credentialed_grant(client: TestClient) -> None:
    response = post(client, hit(), origin="https://www.shop.test")
    assert response.headers["access-control-allow-origin"] == "https://www.shop.test"
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "Origin" in response.headers["vary"]


@pytest.mark.parametrize("origin", ["https://evil.test", "https://shop.test.evil.test", "null"])
def test_foreign_origin_gets_no_grant(client: TestClient, origin: str) -> None:
    response = post(client, hit(), origin=origin)
    assert "access-control-allow-origin" not in response.headers


def test_configured_origins(tmp_path: Path) -> None:
    with app_client(tmp_path, container(), allowed_origins="https://shop.other.test") as c:
        assert post(c, hit(), origin="https://shop.other.test").headers[
            "access-control-allow-origin"
        ]
        assert (
            "access-control-allow-origin"
            not in post(c, hit(), origin="https://www.shop.test").headers
        )


def test_preflight(client: TestClient) -> None:
    ok = client.options(
        "/collect",
        headers={"origin": ORIGIN, "access-control-request-method": "POST",
                 "access-control-request-headers": "content-type, x-evil"},
    )  # fmt: skip
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    assert ok.headers["access-control-allow-credentials"] == "true"
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert ok.headers["access-control-allow-headers"] == "content-type"
    refused = client.options("/collect", headers={"origin": "https://evil.test"})
    assert refused.status_code == 403 and "evil.test" in refused.json()["error"]
    assert "access-control-allow-origin" not in refused.headers


def test_errors_carry_the_grant_so_the_page_can_read_them(client: TestClient) -> None:
    response = post(client, b"not json")
    assert response.status_code == 400
    assert response.headers["access-control-allow-origin"] == ORIGIN


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"", 400, "empty body"),
        (b"{not json", 400, "not valid JSON"),
        (b'{"events": [{"name": "\xff"}]}', 400, "not valid UTF-8"),
        (b'{"events": [{"name": "\\ud800"}]}', 400, "not valid JSON"),
        (b"[]", 400, "expected a JSON object"),
        (b'{"events": []}', 400, "the list is empty"),
        (b'{"events": {}}', 400, "events: required, a list"),
        (b'{"events": [1, "x"]}', 400, "no valid event"),
        (b'{"evil": 1, "events": [{"name": "a"}]}', 400, "unknown field 'evil'"),
        (b'{"events": [{"name": "a\\u0000b"}]}', 400, "control characters"),
        (
            b'{"events": [{"name": "a", "params": {"k": "x\\u001b[31m"}}]}',
            400,
            "control characters",
        ),
        (
            b'{"consent": {"ad_storage": "maybe"}, "events": [{"name": "a"}]}',
            400,
            "consent.ad_storage",
        ),
        (
            b'{"consent": {"foo": "granted"}, "events": [{"name": "a"}]}',
            400,
            "unknown consent type",
        ),
        (b'{"user": {"ssn": "1"}, "events": [{"name": "a"}]}', 400, "user.ssn: unknown field"),
        (
            b'{"user": {"email": ["a"]}, "events": [{"name": "a"}]}',
            400,
            "user.email: expected a string",
        ),
        (b'{"user": "x", "events": [{"name": "a"}]}', 400, "user: expected an object"),
        (b'{"ts": "now", "events": [{"name": "a"}]}', 400, "ts: expected a number"),
        (b'{"pid": 5, "events": [{"name": "a"}]}', 400, "pid: expected a string"),
        (b'{"events": [{"name": "a", "params": {"value": "abc"}}]}', 400, "is not a number"),
        (
            b'{"events": [{"name": "a", "params": {"items": [1]}}]}',
            400,
            "items: expected a list of objects",
        ),
        (
            b'{"events": [{"name": "a", "page": {"page_title": 5}}]}',
            400,
            "page_title: expected a string",
        ),
        (b'{"events": [{"name": "a", "page": {"screen_resolution": "big"}}]}', 400, "WIDTHxHEIGHT"),
        (b'{"events": [{"name": "a", "id": "has space"}]}', 400, "events[0].id"),
        (
            b'{"events": [{"name": "a", "params": {"x": ' + b"[" * 10 + b"]" * 10 + b"}}]}",
            400,
            "nested deeper",
        ),
    ],
)
def test_bad_input_gets_a_4xx_with_a_reason(
    client: TestClient, body: bytes, status: int, reason: str
) -> None:
    response = post(client, body)
    assert response.status_code == status, response.text
    assert reason in response.json()["error"]
    assert "set-cookie" not in response.headers


def test_too_many_events(tmp_path: Path) -> None:
    with app_client(tmp_path, container(), max_events_per_request=3) as c:
        response = post(c, hit([{"name": "a"}] * 4))
        assert (
            response.status_code == 413 and "more than the limit of 3" in response.json()["error"]
        )
        assert post(c, hit([{"name": "a"}] * 3)).status_code == 200


def test_absurd_strings(client: TestClient) -> None:
    huge = json.dumps({"events": [{"name": "a", "params": {"x": "y" * 10_000_000}}]})
    response = post(client, huge)
    assert response.status_code == 413 and "over the limit" in response.json()["error"]
    long = hit([{"name": "a", "params": {"x": "y" * 9000}}])
    assert "longer than 8192" in post(client, long).json()["error"]
    assert "longer than 100" in post(client, hit([{"name": "n" * 101}])).json()["error"]


def test_get_is_refused(client: TestClient) -> None:
    response = client.get("/collect", headers={"origin": ORIGIN})
    assert response.status_code == 405 and response.headers["allow"] == "POST, OPTIONS"


def test_configured_path(tmp_path: Path) -> None:
    with app_client(tmp_path, container(path="/t/e")) as c:
        assert post(c, hit(), url="/t/e").status_code == 200
        assert post(c, hit()).status_code == 404


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {"name": st.text(max_size=20) | json_values},
    optional={
        "id": json_values,
        "params": json_values,
        "page": st.dictionaries(st.sampled_from(list(PAGE) + ["x"]), json_values),
    },
)
envelope = st.fixed_dictionaries(
    {"events": st.lists(event_like, max_size=4) | json_values},
    optional={"pid": json_values, "ts": json_values, "consent": json_values, "user": json_values},
)


@hsettings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.binary(max_size=300) | envelope.map(lambda e: json.dumps(e).encode()))
def test_fuzzed_bodies_never_cause_a_5xx(client: TestClient, body: bytes) -> None:
    response = post(client, body)
    assert response.status_code in (200, 400, 413), response.text
    if response.status_code != 200:
        assert response.json()["error"]


# -- collector.js and /demo -----------------------------------------------------------------------


def test_collector_js_is_served_small_cached_and_gzipped(client: TestClient) -> None:
    plain = client.get("/collector.js", headers={"accept-encoding": "identity"})
    assert plain.status_code == 200
    assert plain.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "max-age=" in plain.headers["cache-control"] and plain.headers["etag"]
    assert "tagserver" in plain.text and "\n  " not in plain.text  # indentation dropped
    zipped = client.get("/collector.js", headers={"accept-encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.content == plain.content  # httpx decoded it
    size = int(zipped.headers["content-length"])
    assert size <= 3072, f"collector.js is {size} bytes gzipped"
    assert gzip.decompress(gzip.compress(plain.content)) == plain.content
    again = client.get("/collector.js", headers={"if-none-match": plain.headers["etag"]})
    assert again.status_code == 304


def test_collector_js_at_custom_path(tmp_path: Path) -> None:
    with app_client(tmp_path, container(), collector_path="/assets/app-7f3.js") as c:
        custom = c.get("/assets/app-7f3.js")
        assert custom.status_code == 200 and custom.content == c.get("/collector.js").content


def test_demo_page(client: TestClient) -> None:
    page = client.get("/demo")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for needle in ('src="/collector.js"', 'id="purchase"', 'href="/preview"', '"/collect"'):
        assert needle in page.text


def test_demo_can_be_turned_off(tmp_path: Path) -> None:
    with app_client(tmp_path, container(), demo=False) as c:
        assert c.get("/demo").status_code == 404


def test_default_container_has_the_collector() -> None:
    data = json.loads((Path(__file__).parent.parent / "container.json").read_text())
    assert {"name": "collector", "type": "collector"} in data["clients"]
