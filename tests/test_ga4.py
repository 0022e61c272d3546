"""The GA4 client: gtag.js hits parsed into event data, and the /g/collect endpoint over HTTP."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import app_client, minimal_container, wait_until
from tagserver.clients.ga4_params import HitParseError, parse_hit

FIXTURES = Path(__file__).parent / "fixtures" / "ga4"
ORIGIN = "https://www.shop.test"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def expected_events(fx: dict[str, Any]) -> list[dict[str, Any]]:
    shared = fx.get("shared", {})
    return [{**shared, **event} for event in fx["expected"]]


def ga4_container(**params: Any) -> dict[str, Any]:
    client: dict[str, Any] = {"name": "ga4", "type": "ga4"}
    if params:
        client["params"] = params
    return minimal_container(clients=[client])


def logged_events(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The events the container's `log` tag wrote, in order: what an operator sees."""
    lines = [r.getMessage() for r in caplog.records if r.name == "tagserver.tag.log"]
    return [json.loads(line)["event"] for line in lines]


def send(client, fx: dict[str, Any], **headers: str):
    url = "/g/collect?" + fx["query"]
    all_headers = {**fx["headers"], **headers}
    if fx["method"] == "GET":
        return client.get(url, headers=all_headers)
    return client.post(url, content=fx["body"].encode(), headers=all_headers)


def cookies_set(response) -> dict[str, str]:
    """Set-Cookie headers by cookie name (whole header value)."""
    out = {}
    for header in response.headers.get_list("set-cookie"):
        out[header.split("=", 1)[0]] = header
    return out


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="tagserver.tag.log")
    return caplog


# -- parsing: the fixtures, in the exact shape gtag.js sends ----------------------------------


@pytest.mark.parametrize(
    "name", ["page_view", "batch_3_events", "purchase_3_items", "consent_denied", "client_hints"]
)
def test_fixture_parses_into_expected_event_data(name):
    fx = fixture(name)
    parsed = parse_hit(fx["query"].encode(), fx["body"].encode(), max_events=500)
    assert parsed.events == expected_events(fx)
    assert parsed.skipped == 0
    assert parsed.warnings == []


def test_batch_lines_may_be_separated_by_bare_newlines():
    fx = fixture("batch_3_events")
    body = fx["body"].replace("\r\n", "\n") + "\n"
    parsed = parse_hit(fx["query"].encode(), body.encode(), max_events=500)
    assert [e["event_name"] for e in parsed.events] == ["view_item", "scroll", "add_to_cart"]
    assert parsed.lines == 3


def test_line_parameters_win_over_shared_ones():
    parsed = parse_hit(b"en=shared&dt=Page&cu=USD", b"cu=EUR\nen=own", max_events=10)
    assert [(e["event_name"], e["currency"], e["page_title"]) for e in parsed.events] == [
        ("shared", "EUR", "Page"),
        ("own", "USD", "Page"),
    ]


@pytest.mark.parametrize(
    ("gcs", "gcd", "npa", "expected"),
    [
        ("G100", None, None, {"ad_storage": "denied", "analytics_storage": "denied"}),
        ("G101", None, None, {"ad_storage": "denied", "analytics_storage": "granted"}),
        ("G110", None, None, {"ad_storage": "granted", "analytics_storage": "denied"}),
        ("G111", None, None, {"ad_storage": "granted", "analytics_storage": "granted"}),
        # gcd: default p (denied) updated to granted (r); ad_personalization denied by update (u)
        (
            None,
            "13r3r3r3u5l1",
            None,
            {
                "ad_storage": "granted",
                "analytics_storage": "granted",
                "ad_user_data": "granted",
                "ad_personalization": "denied",
            },
        ),
        # gcs wins for the two signals it carries; l = not set
        ("G100", "13v3v3l3l5l1", None, {"ad_storage": "denied", "analytics_storage": "denied"}),
        (
            "G111",
            None,
            "1",
            {
                "ad_storage": "granted",
                "analytics_storage": "granted",
                "ad_personalization": "denied",
            },
        ),  # fmt: skip
        ("junk", None, None, None),
    ],
)
def test_consent_from_gcs_gcd_and_npa(gcs, gcd, npa, expected):
    query = "en=page_view" + "".join(
        f"&{k}={v}" for k, v in (("gcs", gcs), ("gcd", gcd), ("npa", npa)) if v
    )
    event = parse_hit(query.encode(), b"", max_events=1).events[0]
    assert event.get("consent") == expected


def test_user_data_plain_forms_are_moved_into_user_data():
    query = (
        "en=sign_up&ep.email=a%40b.example&up.phone_number=%2B4420&ep.first_name=Ann"
        "&ep.last_name=Lee&ep.street=1%20Main%20St&ep.region=CA&ep.postal_code=94025"
        "&ep.country=US&ep.gender=f&ep.date_of_birth=1990-01-31&em=raw%40c.example"
    )
    event = parse_hit(query.encode(), b"", max_events=1).events[0]
    assert event["user_data"] == {
        "email_address": "a@b.example",
        "phone_number": "+4420",
        "gender": "f",
        "date_of_birth": "1990-01-31",
        "address": {
            "first_name": "Ann",
            "last_name": "Lee",
            "street": "1 Main St",
            "region": "CA",
            "postal_code": "94025",
            "country": "US",
        },
    }
    # nothing personal left at the top level or in user properties
    leftovers = {k for k in event if k not in ("event_name", "user_data")}
    assert leftovers == set()


def test_googles_hashed_user_data_format_is_kept_aside():
    event = parse_hit(b"en=x&em=tv.1~em.abcDEF123", b"", max_events=1).events[0]
    assert "user_data" not in event
    assert event["x-ga-em"] == "tv.1~em.abcDEF123"


def test_browser_cannot_set_request_derived_keys_through_ep():
    query = (
        "en=x&ep.ip_override=9.9.9.9&ep.user_agent=evil&epn.event_time=1&ep.x-fb-ck-fbp=fb.1.1.1"
    )
    parsed = parse_hit(query.encode(), b"", max_events=1)
    event = parsed.events[0]
    for key in ("ip_override", "user_agent", "event_time", "x-fb-ck-fbp"):
        assert key not in event
    assert event["x-ga-ep.ip_override"] == "9.9.9.9"
    assert len(parsed.warnings) == 4


def test_meta_pixel_keys_pass_through_ep_and_personal_ones_go_to_user_data():
    query = b"en=x&ep.x-fb-ud-em=a%40b.example&ep.x-fb-ud-ct=Paris&ep.x-fb-cd-x=1&ep.x-fb-ud-y=2"
    event = parse_hit(query, b"", max_events=1).events[0]
    assert event["user_data"] == {"email_address": "a@b.example", "address": {"city": "Paris"}}
    assert "x-fb-ud-em" not in event
    assert event["x-fb-cd-x"] == "1" and event["x-fb-ud-y"] == "2"


def test_preview_token_is_removed_from_page_urls():
    query = (
        b"en=x&dl=https%3A%2F%2Fwww.shop.test%2F%3Fa%3D1%26tagserver_preview%3DSECRET%26b%3D2"
        b"&dr=https%3A%2F%2Fwww.shop.test%2F%3Ftagserver_preview%3DSECRET"
    )
    event = parse_hit(query, b"", max_events=1).events[0]
    assert event["page_location"] == "https://www.shop.test/?a=1&b=2"
    assert event["page_referrer"] == "https://www.shop.test/"


def test_unknown_parameters_are_kept_under_x_ga():
    event = parse_hit(b"en=x&_z=ccd.v9B&richsstsse=&_tu=AAI", b"", max_events=1).events[0]
    assert event["x-ga-_z"] == "ccd.v9B"
    assert event["x-ga-richsstsse"] == ""
    assert event["x-ga-_tu"] == "AAI"


def test_numbers_epn_and_items_that_are_not_numbers_are_dropped_with_a_warning():
    query = "en=x&epn.value=abc&epn.ok=-3&epn.big=1e999&pr1=idA~prfree~qt2&_et=soon"
    parsed = parse_hit(query.encode(), b"", max_events=1)
    event = parsed.events[0]
    assert "value" not in event and "big" not in event and "engagement_time_msec" not in event
    assert event["ok"] == -3
    assert event["items"] == [{"item_id": "A", "quantity": 2}]
    assert len(parsed.warnings) == 4


def test_ep_value_given_as_a_string_becomes_a_number():
    event = parse_hit(b"en=purchase&ep.value=12.50", b"", max_events=1).events[0]
    assert event["value"] == 12.5


@pytest.mark.parametrize(
    "query",
    [
        "en=x&pr0=idA",
        "en=x&pr201=idA",
        "en=x&pr99999999999999999999=idA",
        "en=x&pr1=~~~~~~~~",
        "en=x&pr1=",
        "en=x&pr1=" + "~a" * 3000,
    ],
)
def test_absurd_item_parameters_never_break_the_event(query):
    parsed = parse_hit(query.encode(), b"", max_events=1)
    assert parsed.events[0]["event_name"] == "x"
    assert len(parsed.events[0].get("items", [])) <= 1
    assert parsed.warnings


def test_items_keep_their_index_order():
    query = "en=x&pr3=idC&pr1=idA&pr10=idJ&pr2=idB"
    items = parse_hit(query.encode(), b"", max_events=1).events[0]["items"]
    assert [i["item_id"] for i in items] == ["A", "B", "C", "J"]


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (b"en=x&dl=%ZZ", "malformed percent-encoding"),
        (b"en=x&dl=50%", "malformed percent-encoding"),
        (b"en=x&dt=%FF%FE", "not valid UTF-8"),
        (b"en=x&dt=\xff", "not valid UTF-8"),
        (b"en=x&dt=a%00b", "NUL"),
        (b"dl=https%3A%2F%2Fa.test%2F", "missing en"),
        (b"en=", "missing en"),
        (b"en=" + b"a" * 101, "longer than 100"),
        (b"en=x&dt=" + b"a" * 9000, "over the limit"),
        (b"en=x&" + b"&".join(b"ep.k%d=v" % i for i in range(1001)), "more than 1000 parameters"),
    ],
)
def test_unreadable_query_is_refused_with_a_reason(query, reason):
    with pytest.raises(HitParseError, match=reason):
        parse_hit(query, b"", max_events=1)


def test_bad_lines_are_skipped_and_counted():
    body = b"en=ok1\r\ndt=no%20name\r\nen=bad&dt=%E2%28\r\nen=ok2\r\n\r\n"
    parsed = parse_hit(b"v=2&cid=1.2", body, max_events=10)
    assert [e["event_name"] for e in parsed.events] == ["ok1", "ok2"]
    assert parsed.skipped == 2
    assert parsed.reasons == [
        "line 2: missing en (the event name)",
        "line 3: parameter 'dt': not valid UTF-8",
    ]


def test_a_batch_with_no_usable_line_is_refused():
    with pytest.raises(HitParseError, match="no event in the hit .2 lines skipped"):
        parse_hit(b"v=2", b"dt=a\ndt=b", max_events=10)


def test_more_lines_than_the_limit_is_refused():
    with pytest.raises(HitParseError, match="10000 events in one request, more than the limit"):
        parse_hit(b"v=2", b"\n".join([b"en=x"] * 10_000), max_events=500)


# -- fuzz: whatever arrives, the parser raises only HitParseError -----------------------------

_param_names = st.sampled_from(
    ["en", "cid", "dl", "dt", "gcs", "gcd", "pr1", "pr2", "epn.value", "ep.em", "up.x",
     "uafvl", "uamb", "_et", "sct", "cu", "ep.ip_override", "ep.", "pr0", "x"]
)  # fmt: skip
_values = st.one_of(
    st.text(max_size=60),
    st.text(alphabet="~%0123456789abcdefABCDEFGz.;|+&=", max_size=60),
    st.binary(max_size=30).map(lambda b: b.decode("latin-1")),
)


def _encode_pairs(pairs: list[tuple[str, str]], raw: bool) -> bytes:
    from urllib.parse import quote

    if raw:  # sent without escaping: bare %, &, = and non-ASCII go straight in
        return "&".join(f"{k}={v}" for k, v in pairs).encode("utf-8", "surrogatepass")
    return "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs).encode()


_param_sets = st.tuples(st.lists(st.tuples(_param_names, _values), max_size=12), st.booleans()).map(
    lambda t: _encode_pairs(*t)
)


@settings(max_examples=400, deadline=None)
@given(
    query=st.one_of(_param_sets, st.binary(max_size=200)),
    lines=st.lists(st.one_of(_param_sets, st.binary(max_size=80)), max_size=6),
    separator=st.sampled_from([b"\n", b"\r\n", b"\r"]),
)
def test_fuzz_parser_raises_only_hit_parse_errors(query, lines, separator):
    try:
        parsed = parse_hit(query, separator.join(lines), max_events=5)
    except HitParseError as exc:
        assert str(exc)
        return
    assert parsed.events
    for event in parsed.events:
        assert isinstance(event["event_name"], str) and event["event_name"].strip()
        json.dumps(event)  # JSON-ready, no bytes or odd types


# -- HTTP -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["page_view", "batch_3_events", "purchase_3_items", "consent_denied", "client_hints"]
)
def test_fixture_over_http_answers_204_and_runs_the_events(tmp_path, logs, name):
    fx = fixture(name)
    with app_client(tmp_path, ga4_container()) as client:
        r = send(client, fx)
    assert r.status_code == 204
    assert r.content == b""
    events = logged_events(logs)
    assert [e["event_name"] for e in events] == [e["event_name"] for e in expected_events(fx)]
    for got, want in zip(events, expected_events(fx), strict=True):
        want = {k: v for k, v in want.items() if k != "user_data"}  # masked by the log tag
        assert {k: got.get(k) for k in want} == want
        assert got["user_agent"] == fx["headers"]["user-agent"]
        assert got["ip_override"]
        assert got["event_id"]
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.headers["access-control-allow-credentials"] == "true"


def test_get_and_post_single_hits_are_the_same_event(tmp_path, logs):
    fx = fixture("page_view")
    with app_client(tmp_path, ga4_container()) as client:
        assert send(client, {**fx, "method": "GET"}).status_code == 204
        assert send(client, fx).status_code == 204
    first, second = logged_events(logs)
    for key in ("page_location", "client_id", "consent", "client_hints", "page_title"):
        assert first[key] == second[key]


def test_batch_events_get_their_own_ids_and_share_the_request(tmp_path, logs):
    fx = fixture("batch_3_events")
    with app_client(tmp_path, ga4_container()) as client:
        r = send(client, fx)
        again = send(client, fx)  # the same hit resent: the same derived ids
    assert r.status_code == again.status_code == 204
    events = logged_events(logs)
    ids = [e["event_id"] for e in events]
    assert ids[2] == "atc-7f3a" == ids[5]
    assert len(set(ids[:3])) == 3
    assert ids[:3] == ids[3:]
    assert {e["user_agent"] for e in events} == {fx["headers"]["user-agent"]}


def test_meta_cookies_are_set_from_a_ga4_hit(tmp_path, logs):
    fx = fixture("page_view")
    with app_client(tmp_path, ga4_container()) as client:
        r = send(client, fx)
    jar = cookies_set(r)
    assert set(jar) == {"_fbp", "_fbc"}
    assert "Domain=shop.test" in jar["_fbp"] and "HttpOnly" not in jar["_fbp"]
    fbc = jar["_fbc"].split(";")[0].split("=", 1)[1]
    assert fbc.startswith("fb.1.") and fbc.endswith(".IwAR1abcDEF")
    event = logged_events(logs)[0]
    assert event["x-fb-ck-fbc"] == fbc
    assert event["x-fb-ck-fbp"] == jar["_fbp"].split(";")[0].split("=", 1)[1]
    assert event["client_id"] == "1234567890.1718000000"  # the JS id, unchanged by default


def test_existing_meta_cookies_are_kept(tmp_path, logs):
    fx = fixture("batch_3_events")
    with app_client(tmp_path, ga4_container()) as client:
        client.cookies.set("_fbp", "fb.1.1700000000000.123456789", domain="sgtm.shop.test")
        client.cookies.set("_fbc", "fb.1.1700000000000.OldClick", domain="sgtm.shop.test")
        r = send(client, fx)
    jar = cookies_set(r)
    assert "fb.1.1700000000000.123456789" in jar["_fbp"]
    assert "fb.1.1700000000000.OldClick" in jar["_fbc"]
    for event in logged_events(logs):
        assert event["x-fb-ck-fbp"] == "fb.1.1700000000000.123456789"
        assert event["x-fb-ck-fbc"] == "fb.1.1700000000000.OldClick"


def test_consent_denied_sets_no_cookie_and_forwards_none(tmp_path, logs):
    fx = fixture("consent_denied")
    with app_client(tmp_path, ga4_container(server_managed_client_id=True)) as client:
        client.cookies.set("_fbp", "fb.1.1700000000000.123456789", domain="sgtm.shop.test")
        r = send(client, fx)
    assert r.status_code == 204
    assert r.headers.get_list("set-cookie") == []
    event = logged_events(logs)[0]
    assert "x-fb-ck-fbp" not in event and "x-fb-ck-fbc" not in event
    assert event["client_id"] == "987654321.1718020000"
    assert event["consent"]["ad_storage"] == "denied"


def test_meta_cookies_can_be_turned_off(tmp_path, logs):
    with app_client(tmp_path, ga4_container(meta_cookies=False)) as client:
        r = send(client, fixture("page_view"))
    assert r.headers.get_list("set-cookie") == []
    assert "x-fb-ck-fbp" not in logged_events(logs)[0]


def test_server_managed_client_id_migrates_then_keeps_its_own_id(tmp_path, logs):
    fx = fixture("page_view")
    with app_client(tmp_path, ga4_container(server_managed_client_id=True)) as client:
        first = send(client, fx)
        fpid = cookies_set(first)["FPID"]
        assert "HttpOnly" in fpid and "Domain=shop.test" in fpid
        assert fpid.startswith("FPID=1234567890.1718000000;")  # started from the JS id
        # the browser now holds FPID; gtag's JS id changes (cookie cleared by the browser)
        client.cookies.set("FPID", "1234567890.1718000000", domain="sgtm.shop.test")
        other = {
            **fx,
            "query": fx["query"].replace("cid=1234567890.1718000000", "cid=42.1718099999"),
        }
        second = send(client, other)
    assert second.status_code == 204
    first_event, second_event = logged_events(logs)
    assert first_event["client_id"] == "1234567890.1718000000"
    assert second_event["client_id"] == "1234567890.1718000000"
    assert second_event["x-ga-js_client_id"] == "42.1718099999"


def test_server_managed_client_id_without_migration_is_generated(tmp_path, logs):
    params = {"server_managed_client_id": True, "migrate_client_id": False,
              "client_id_cookie": "_sid_cookie"}  # fmt: skip
    with app_client(tmp_path, ga4_container(**params)) as client:
        r = send(client, fixture("page_view"))
    value = cookies_set(r)["_sid_cookie"].split(";")[0].split("=", 1)[1]
    assert value != "1234567890.1718000000"
    event = logged_events(logs)[0]
    assert event["client_id"] == value
    assert event["x-ga-js_client_id"] == "1234567890.1718000000"


def test_cors_grant_only_for_allowed_origins(tmp_path):
    fx = fixture("page_view")
    with app_client(tmp_path, ga4_container()) as client:
        foreign = send(client, fx, origin="https://evil.example")
        pre_ok = client.options(
            "/g/collect",
            headers={"origin": ORIGIN, "access-control-request-method": "POST",
                     "access-control-request-headers": "content-type"},
        )  # fmt: skip
        pre_bad = client.options(
            "/g/collect",
            headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
        )
    assert foreign.status_code == 204  # the hit is still taken, the page just gets no grant
    assert "access-control-allow-origin" not in foreign.headers
    assert pre_ok.status_code == 204
    assert pre_ok.headers["access-control-allow-origin"] == ORIGIN
    assert pre_ok.headers["access-control-allow-credentials"] == "true"
    assert "POST" in pre_ok.headers["access-control-allow-methods"]
    assert pre_bad.status_code == 403
    assert "not allowed" in pre_bad.json()["error"]


def test_configured_origins_are_honoured(tmp_path):
    fx = fixture("page_view")
    with app_client(tmp_path, ga4_container(), allowed_origins="https://shop.other") as client:
        other = send(client, fx, origin="https://shop.other")
        own = send(client, fx, origin=ORIGIN)
    assert other.headers["access-control-allow-origin"] == "https://shop.other"
    assert "access-control-allow-origin" not in own.headers


def test_paths_are_configurable(tmp_path, logs):
    container = ga4_container(paths=["/g/collect", "/j/collect"])
    with app_client(tmp_path, container) as client:
        a = client.post("/g/collect?v=2&en=a&cid=1.2")
        b = client.post("/j/collect?v=2&en=b&cid=1.2")
        c = client.post("/x/collect?v=2&en=c&cid=1.2")
    assert (a.status_code, b.status_code, c.status_code) == (204, 204, 404)
    assert [e["event_name"] for e in logged_events(logs)] == ["a", "b"]


def test_other_methods_get_405(tmp_path):
    with app_client(tmp_path, ga4_container()) as client:
        r = client.put("/g/collect?en=x")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, POST"


# -- HTTP: bad input is a 4xx with a reason, never a 5xx --------------------------------------


@pytest.mark.parametrize(
    ("url", "body", "status", "reason"),
    [
        ("/g/collect?v=2&en=x&dl=%ZZ", b"", 400, "malformed percent-encoding"),
        ("/g/collect?v=2&en=x&dt=%C3%28", b"", 400, "not valid UTF-8"),
        ("/g/collect?v=2&cid=1.2&dl=https%3A%2F%2Fa.test%2F", b"", 400, "missing en"),
        ("/g/collect?v=2&en=x&dt=" + "a" * 9000, b"", 400, "over the limit"),
        ("/g/collect?v=2", b"dt=a\r\ndt=b", 400, "no event in the hit"),
        ("/g/collect?v=2", b"\n".join([b"en=x"] * 10_000), 413, "more than the limit of 500"),
        ("/g/collect?v=2", b"en=x&dt=" + b"a" * 1_100_000, 413, "over the limit"),
    ],
)
def test_bad_input_gets_a_4xx_with_a_reason(tmp_path, logs, url, body, status, reason):
    with app_client(tmp_path, ga4_container()) as client:
        r = client.post(url, content=body, headers={"origin": ORIGIN})
    assert r.status_code == status
    assert reason in r.json()["error"]
    assert logged_events(logs) == []  # nothing ran


def test_bad_lines_are_skipped_and_the_count_is_reported(tmp_path, logs):
    body = b"en=ok1\r\nen=bad&dl=%E2%82\r\nno_name=1\r\nen=ok2&dt=" + b"b" * 9000 + b"\r\nen=ok3"
    with app_client(tmp_path, ga4_container()) as client:
        r = client.post("/g/collect?v=2&cid=1.2", content=body, headers={"origin": ORIGIN})
    assert r.status_code == 204
    assert r.headers["x-tagserver-skipped"] == "3"
    assert r.headers["x-tagserver-skipped-reason"] == "line 2: parameter 'dl': not valid UTF-8"
    assert [e["event_name"] for e in logged_events(logs)] == ["ok1", "ok3"]


def test_absurd_item_strings_still_answer_204(tmp_path, logs):
    query = "v=2&en=purchase&pr1=" + "~" * 5000 + "&pr999999999999=idX&pr2=idB~qt" + "9" * 400
    with app_client(tmp_path, ga4_container()) as client:
        r = client.get("/g/collect?" + query)
    assert r.status_code == 204
    event = logged_events(logs)[0]
    assert event["items"] == [{"item_id": "B"}]  # a 400-digit quantity is no number


_http_query = st.lists(
    st.tuples(_param_names, st.text(alphabet="abcAZ09%~.;|+-_ é", max_size=30)), max_size=8
).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))


def test_fuzz_http_endpoint_never_answers_5xx(tmp_path):
    with app_client(tmp_path, ga4_container(max_events=5)) as client:

        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(
            method=st.sampled_from(["GET", "POST", "OPTIONS", "PUT"]),
            query=_http_query,
            body=st.one_of(
                st.binary(max_size=300),
                st.lists(_param_sets, max_size=8).map(lambda ls: b"\r\n".join(ls)),
            ),
            origin=st.sampled_from(["", ORIGIN, "https://evil.example", "null", "%%%"]),
        )
        def check(method, query, body, origin):
            headers = {"origin": origin} if origin else {}
            r = client.request(method, "/g/collect?" + query, content=body, headers=headers)
            assert r.status_code < 500, r.text
            if r.status_code >= 400 and method != "OPTIONS":
                assert r.json()["error"]

        check()


def test_preview_shows_skipped_lines_and_why_a_tag_did_not_fire(tmp_path):
    container = ga4_container()
    container["tags"][0]["consent"] = ["ad_storage"]
    body = b"en=ok&dt=a\r\nno_name=1\r\nen=ok2&epn.value=abc"
    with app_client(tmp_path, container, preview_password="pw-for-tests") as client:
        signed_in = client.post("/preview/login", data={"password": "pw-for-tests"})
        assert signed_in.status_code in (200, 303)
        session = client.post("/preview/sessions", headers={"accept": "application/json"}).json()
        r = client.post(
            "/g/collect?v=2&cid=1.2&gcs=G100",
            content=body,
            headers={"x-tagserver-preview": session["token"]},
        )
        assert r.status_code == 204

        def recorded():
            hits = client.get(f"/preview/api/s/{session['id']}/hits").json()["hits"]
            return hits[0] if hits else None

        listed = wait_until(recorded, timeout=10)
        hit = client.get(f"/preview/api/s/{session['id']}/hits/{listed['id']}").json()
    console = [line["message"] for line in hit["console"]]
    assert "GA4 batch: 3 lines, 2 events" in console
    assert "skipped line 2: missing en (the event name)" in console
    assert "line 3: epn.value 'abc' is not a number, dropped" in console
    assert [e["event"]["event_name"] for e in hit["events"]] == ["ok", "ok2"]
    tag = hit["events"][0]["tags"][0]
    assert tag["status"] == "no_consent"
    assert tag["reason"] == "consent: ad_storage is denied"
