"""The Meta sender against the fake Graph API (a real HTTP server on loopback)."""

import hashlib
import logging
import time

import httpx
import pytest
from fakes.graph import FakeGraph
from tagserver.tags.meta_capi import MetaSender
from tagserver.tags.meta_capi.sender import MAX_REQUESTS_PER_SEND

from tagserver.plugins import Message
from tagserver.redact import RedactingFilter, Redactor
from tagserver.settings import Settings

TOKEN = "EAAGm0PX4ZCpsBAsecretTOKEN123"
ROUTE = {"pixel_id": "1234567890", "access_token": TOKEN, "api_version": "v25.0"}
DESTINATION = "meta:1234567890:0a1b2c3d:-:v25.0"


def server_event(i: int, **overrides):
    event = {
        "event_name": "Purchase",
        "event_time": int(time.time()) - 60,
        "event_id": f"ev-{i}",
        "action_source": "website",
        "event_source_url": "https://www.shop.test/checkout",
        "user_data": {
            "em": [hashlib.sha256(f"user{i}@example.com".encode()).hexdigest()],
            "client_ip_address": "203.0.113.7",
            "client_user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
        },
        "custom_data": {"value": 10.0 + i, "currency": "EUR"},
    }
    event.update(overrides)
    return event


def messages(count: int, start: int = 0) -> list[Message]:
    now = time.time()
    return [
        Message(
            id=i + 1,
            destination=DESTINATION,
            payload=server_event(i),
            dedup_id=f"Purchase:ev-{i}",
            attempts=0,
            created_at=now,
        )
        for i in range(start, start + count)
    ]


@pytest.fixture
def graph():
    with FakeGraph(token=TOKEN) as fake:
        yield fake


async def send(graph_url: str, batch, route=ROUTE, timeout: float = 5.0):
    settings = Settings.from_env({}, meta_graph_url=graph_url, send_timeout_seconds=timeout)
    # while it delivers, the dispatcher cleans httpx's log records with the destination's
    # redactor (its route's secret params: the access token)
    log_filter = RedactingFilter(lambda: [Redactor([str(route.get("access_token"))])])
    log_filter.install()
    try:
        async with httpx.AsyncClient() as http:
            return await MetaSender(http, settings).send(route, batch)
    finally:
        log_filter.remove()


def assert_no_token(*things):
    for thing in things:
        assert TOKEN not in repr(thing)


async def test_batch_is_delivered_in_one_request_with_trace_ids(graph):
    results = await send(graph.url, messages(3))
    assert [r.outcome for r in results] == ["delivered"] * 3
    assert graph.request_count() == 1
    request = graph.requests[0]
    assert request.path == "/v25.0/1234567890/events"
    assert request.query["access_token"] == TOKEN
    assert request.headers["content-type"] == "application/json"
    assert [e["event_id"] for e in request.events] == ["ev-0", "ev-1", "ev-2"]
    assert "test_event_code" not in request.body
    assert results[0].trace == request.answer["fbtrace_id"]
    assert results[0].status == 200
    assert results[0].response["events_received"] == 3
    assert results[0].request == {
        "method": "POST",
        "url": f"{graph.url}/v25.0/1234567890/events",
        "events": 3,
        "bytes": len(request.raw_body),
    }
    assert_no_token(results)


async def test_test_event_code_and_partner_agent_go_in_the_body(graph):
    route = {**ROUTE, "test_event_code": "TEST4242", "partner_agent": "tagserver"}
    results = await send(graph.url, messages(2), route)
    assert {r.outcome for r in results} == {"delivered"}
    body = graph.requests[0].body
    assert body["test_event_code"] == "TEST4242"
    assert body["partner_agent"] == "tagserver"


async def test_a_full_batch_of_1000_is_one_request(graph):
    results = await send(graph.url, messages(1000))
    assert {r.outcome for r in results} == {"delivered"}
    assert graph.request_count() == 1
    assert len(graph.accepted_events()) == 1000


async def test_one_refused_event_is_isolated_and_the_others_delivered(graph):
    graph.reject = {"ev-317": 2804050}
    results = await send(graph.url, messages(500))
    outcomes = {m: r.outcome for m, r in zip(range(500), results, strict=True)}
    assert [i for i, o in outcomes.items() if o == "permanent"] == [317]
    assert sum(o == "delivered" for o in outcomes.values()) == 499
    bad = results[317]
    assert bad.code == "100/2804050"
    assert "event ev-317 was refused" in bad.error
    assert bad.status == 400
    assert bad.trace  # Meta's fbtrace_id of the refusing request
    delivered = graph.received_ids()
    assert len(delivered) == 499 and len(set(delivered)) == 499 and "ev-317" not in delivered
    # bisecting 500 down to one event: about two requests per halving, not 500
    assert graph.request_count() <= 2 * 9 + 1


async def test_two_refused_events_in_one_batch(graph):
    graph.reject = {"ev-3": 2804019, "ev-90": 2804003}
    results = await send(graph.url, messages(100))
    refused = [i for i, r in enumerate(results) if r.outcome == "permanent"]
    assert refused == [3, 90]
    assert results[3].code == "100/2804019" and results[90].code == "100/2804003"
    assert sorted(graph.received_ids(), key=lambda s: int(s[3:])) == [
        f"ev-{i}" for i in range(100) if i not in (3, 90)
    ]


async def test_a_single_refused_event_is_permanent_without_splitting(graph):
    graph.reject = {"ev-0": 2804050}
    results = await send(graph.url, messages(1))
    assert results[0].outcome == "permanent" and graph.request_count() == 1


async def test_isolating_many_refused_events_is_bounded(graph):
    graph.reject = {f"ev-{i}": 2804019 for i in range(0, 200, 2)}  # every other event
    results = await send(graph.url, messages(200))
    assert graph.request_count() <= MAX_REQUESTS_PER_SEND
    outcomes = {r.outcome for r in results}
    assert "retry" in outcomes  # the unresolved rest comes back later, nothing is lost
    for i, r in enumerate(results):
        if r.outcome == "delivered":
            assert i % 2 == 1
        if r.outcome == "permanent":
            assert i % 2 == 0


@pytest.mark.parametrize("code", [17, 613, 80004])
async def test_throttling_is_retried_after_at_least_a_minute(graph, code):
    graph.mode, graph.throttle_code = "throttle", code
    results = await send(graph.url, messages(5))
    assert {r.outcome for r in results} == {"retry"}
    assert all(r.retry_after >= 60 for r in results)
    # the fake says "estimated_time_to_regain_access: 2" (minutes) in its usage header
    assert results[0].retry_after == 120
    assert results[0].code == str(code)
    assert graph.request_count() == 1


async def test_throttled_while_isolating_stops_calling(graph):
    graph.reject = {"ev-7": 2804050}
    original = graph._answer
    calls = []

    def answer(*args):
        calls.append(1)
        if len(calls) >= 3:
            graph.mode = "throttle"
        return original(*args)

    graph._answer = answer
    results = await send(graph.url, messages(64))
    assert graph.request_count() == 3
    assert "retry" in {r.outcome for r in results}
    assert all(r.outcome in ("retry", "delivered") for r in results)


@pytest.mark.parametrize("style", ["graph", "html", "drop"])
async def test_outage_is_retried(graph, style):
    graph.mode, graph.outage_style = "outage", style
    results = await send(graph.url, messages(4))
    assert {r.outcome for r in results} == {"retry"}
    assert graph.request_count() == 1
    if style == "graph":
        assert results[0].status == 503 and results[0].code == "2"
    if style == "html":
        assert results[0].status == 502 and "Bad gateway" in results[0].error
    if style == "drop":
        assert results[0].status is None and "cannot reach the Graph API" in results[0].error
    assert_no_token(results)


async def test_timeout_is_retried(graph):
    graph.delay = 1.0
    results = await send(graph.url, messages(2), timeout=0.2)
    assert {r.outcome for r in results} == {"retry"}
    assert "within 0.2 s" in results[0].error


async def test_unreachable_graph_is_retried_and_the_error_has_no_token():
    from support import free_port

    results = await send(f"http://127.0.0.1:{free_port()}", messages(2))
    assert {r.outcome for r in results} == {"retry"}
    assert "cannot reach the Graph API" in results[0].error
    assert_no_token(results)


async def test_invalid_token_is_never_retried_and_alerts(graph, caplog):
    graph.mode = "invalid_token"
    caplog.set_level(logging.INFO)
    results = await send(graph.url, messages(3))
    assert {r.outcome for r in results} == {"permanent"}
    assert results[0].code == "190"
    assert "Invalid OAuth access token" in results[0].error
    assert "access token is invalid or expired" in caplog.text
    assert graph.request_count() == 1  # a token error is not bisected
    assert_no_token(results, caplog.text)


async def test_wrong_pixel_is_permanent(graph):
    graph.pixel_ids = {"999"}
    results = await send(graph.url, messages(2))
    assert {r.outcome for r in results} == {"permanent"}
    assert results[0].code == "100/33"


async def test_token_never_in_logs_even_at_debug(graph, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx")
    caplog.set_level(logging.DEBUG, logger="httpcore")
    graph.reject = {"ev-1": 2804050}
    results = await send(graph.url, messages(4))
    assert "access_token=[redacted]" in caplog.text  # httpx did log the URL...
    assert TOKEN not in caplog.text  # ...without the token
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
    assert_no_token(results)


async def test_pre_serialized_payloads_are_sent_as_is(graph):
    import orjson

    batch = messages(2)
    batch[0].payload = orjson.dumps(batch[0].payload)
    batch[1].payload = orjson.dumps(batch[1].payload).decode()
    results = await send(graph.url, batch)
    assert {r.outcome for r in results} == {"delivered"}
    assert graph.received_ids() == ["ev-0", "ev-1"]
