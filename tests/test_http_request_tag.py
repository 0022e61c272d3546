"""Tag `http_request`: what the endpoint receives, and how its answers are treated."""

from __future__ import annotations

import json
import time
from email.utils import formatdate
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner
from fakes.vendor import FakeVendor
from support import app_client, minimal_container, wait_until, write_container

from tagserver.cli.main import main
from tagserver.delivery.http_outcomes import retry_after_seconds

AUTH = {"Authorization": "Bearer test-key"}
FAST = {"retry_base_seconds": 0.05, "retry_cap_seconds": 0.2}


@pytest.fixture
def vendor():
    with FakeVendor() as v:
        yield v


def hook(url: str, **params):
    return minimal_container(
        tags=[{"name": "hook", "type": "http_request", "fire_on": ["all"],
               "params": {"url": url, **params}}]
    )  # fmt: skip


def send(client, **event):
    event = {"event_name": "purchase", "event_id": "e1", **event}
    r = client.post("/api/events", json=event, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()["results"][0]


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, ["outbox", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_json_body_built_from_variables_with_headers(tmp_path, vendor):
    params = {
        "headers": {"X-Api-Key": "key-123456789", "X-Empty": "{{event.missing}}"},
        "body": {"order": "{{transaction_id}}", "value": "{{value}}", "name": "{{event_name}}"},
        "idempotency_header": "Idempotency-Key",
    }
    with app_client(tmp_path, hook(vendor.url + "/orders", **params), **FAST) as client:
        send(client, transaction_id="T-1", value=12.5)
        (request,) = vendor.wait_for(1)
    assert request.method == "POST" and request.path == "/orders"
    assert request.json() == {"order": "T-1", "value": 12.5, "name": "purchase"}
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-api-key"] == "key-123456789"
    assert request.headers["idempotency-key"] == "e1"
    assert "x-empty" not in request.headers  # an empty variable leaves the header out


def test_header_values_from_event_data_follow_each_event(tmp_path, vendor):
    """Routes are remembered per distinct header values: `1`, `true` and text each count."""
    params = {"headers": {"X-Flag": "{{event.flag}}"}, "body": {"id": "{{event_id}}"}}
    flags = [1, True, "1", 1, None, True]
    with app_client(tmp_path, hook(vendor.url + "/orders", **params), **FAST) as client:
        for n, flag in enumerate(flags):
            send(client, event_id=f"e{n}", flag=flag)
        received = vendor.wait_for(len(flags))
    sent = {r.json()["id"]: r.headers.get("x-flag") for r in received}
    assert sent == {"e0": "1", "e1": "true", "e2": "1", "e3": "1", "e4": None, "e5": "true"}


def test_form_body(tmp_path, vendor):
    params = {"body_format": "form", "body": {"id": "{{event_id}}", "items": "{{items}}"}}
    with app_client(tmp_path, hook(vendor.url + "/form", **params), **FAST) as client:
        send(client, items=[{"sku": "A"}])
        (request,) = vendor.wait_for(1)
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    fields = parse_qs(request.body.decode())
    assert fields == {"id": ["e1"], "items": ['[{"sku":"A"}]']}


def test_get_sends_the_body_as_query_string(tmp_path, vendor):
    params = {"method": "GET", "body": {"ev": "{{event_name}}", "id": "{{event_id}}"}}
    with app_client(tmp_path, hook(vendor.url + "/pixel?v=1", **params), **FAST) as client:
        send(client)
        (request,) = vendor.wait_for(1)
    assert request.method == "GET" and request.body == b""
    assert parse_qs(urlsplit(request.path).query) == {"v": ["1"], "ev": ["purchase"], "id": ["e1"]}


def test_text_body_is_sent_as_is(tmp_path, vendor):
    params = {"body": "order {{event_id}} paid", "headers": {"Content-Type": "text/plain"}}
    with app_client(tmp_path, hook(vendor.url + "/text", **params), **FAST) as client:
        send(client)
        (request,) = vendor.wait_for(1)
    assert request.body == b"order e1 paid"
    assert request.headers["content-type"] == "text/plain"


@pytest.mark.parametrize("status", [408, 429, 500, 502])
def test_statuses_that_are_retried(tmp_path, vendor, status):
    vendor.fail(1, status=status)
    with app_client(tmp_path, hook(vendor.url + "/h", body={"id": "{{event_id}}"}), **FAST) as c:
        send(c)
        vendor.wait_for(1, timeout=5)
    assert [r.status for r in vendor.received] == [status, 200]


@pytest.mark.parametrize(
    ("status", "reason"), [(400, "HTTP 400"), (404, "HTTP 404"), (301, "redirect not followed")]
)
def test_other_statuses_are_dead_lettered(tmp_path, vendor, status, reason):
    vendor.reject(lambda r: True, status=status, body=b'{"error":"no such hook"}')
    data = str(tmp_path / "data")
    with app_client(tmp_path, hook(vendor.url + "/h", body={"id": "{{event_id}}"}), **FAST) as c:
        send(c)
        out = wait_until(
            lambda: "reason" in (o := cli("dead-letters", "--data-dir", data)) and o, timeout=5
        )
    assert len(vendor.received) == 1
    assert "refused by the vendor" in out and reason in out


def test_destination_shows_the_host_only(tmp_path):
    down = FakeVendor()  # nothing listens: the message stays pending
    try:
        secret_path = "/hooks/T000/B000/XXXXsecretXXXX"
        params = {"headers": {"Authorization": "Bearer tok-987654321"}, "body": {"a": 1}}
        data = str(tmp_path / "data")
        with app_client(tmp_path, hook(down.url + secret_path, **params), **FAST) as client:
            send(client)
            metrics = client.get("/metrics").text
        out = cli("status", "--data-dir", data)
        assert "http_request:127.0.0.1:" in out
        for shown in (out, metrics):
            assert "XXXXsecretXXXX" not in shown and "tok-987654321" not in shown
        assert 'tagserver_outbox_pending{destination="http_request:127.0.0.1:' in metrics
    finally:
        down.close()


def test_a_url_that_is_not_http_is_refused_at_fire_time(tmp_path, vendor):
    with app_client(tmp_path, hook("{{event.target}}", body={"a": 1}), **FAST) as client:
        result = send(client, target="ftp://files.example/x")
        assert result["tags_fired"] == []
        assert "http:// or https://" in result["tags_not_fired"]["hook"]
        result = send(client, event_id="e2", target=vendor.url + "/ok")
        assert result["tags_fired"] == ["hook"]
        vendor.wait_for(1)


def test_url_is_required(tmp_path):
    path = write_container(
        tmp_path,
        minimal_container(tags=[{"name": "h", "type": "http_request", "fire_on": ["all"]}]),
    )
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    assert (
        'tags[0] "h": params.url: required parameter of tag "http_request" is missing'
        in result.output
    )


def test_retry_after_as_seconds_or_http_date():
    assert retry_after_seconds("120") == 120
    assert 25 < retry_after_seconds(formatdate(time.time() + 30, usegmt=True)) <= 31
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_schema_marks_headers_secret():
    from tagserver.container.schema import container_schema
    from tagserver.plugins import load_registry

    schema = json.dumps(container_schema(load_registry()))
    assert "http_request" in schema and "secret: redacted everywhere" in schema
