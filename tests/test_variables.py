"""Every variable type and built-in, observed in the `log` tag's output line.

Events run straight through the engine (`Runtime`, no app): the request is the one a hit
to the events API would have come with, from the in-process test client's peer.
"""

import json
import logging
from urllib.parse import parse_qsl

import pytest
from engine import run_event

CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36"
IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
IPAD = "Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def logged_fields(
    caplog,
    variables,
    fields,
    event,
    headers=None,
    cookies=None,
    query="",
    include_event=False,
):
    container = {
        "name": "t",
        "clients": [{"name": "api", "type": "events_api"}],
        "variables": variables,
        "triggers": [{"name": "all", "event": "*"}],
        "tags": [
            {
                "name": "log",
                "type": "log",
                "fire_on": ["all"],
                "params": {"fields": fields, "include_event": include_event},
            }
        ],
    }
    caplog.set_level(logging.INFO, logger="tagserver.tag.log")
    result = run_event(
        container,
        event,
        headers=headers,
        cookies=cookies,
        query=dict(parse_qsl(query.lstrip("?"))),
        peer_ip="testclient",
    )
    assert result.fired == ["log"], result.summary(0)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tagserver.tag.log"]
    assert len(lines) == 1
    return lines[0]


def test_user_variable_types(caplog, monkeypatch):
    monkeypatch.setenv("SHOP_REGION", "eu-west")
    variables = [
        {"name": "email", "type": "event_data", "key": "user_data.email_address"},
        {"name": "first_item", "type": "event_data", "key": "items.0.item_id"},
        {"name": "missing", "type": "event_data", "key": "nope.deeper", "default": "fallback"},
        {"name": "referer", "type": "request_header", "header": "X-Shop-Referer"},
        {"name": "session", "type": "cookie", "cookie": "shop_session"},
        {"name": "campaign", "type": "query_parameter", "param": "utm_campaign", "default": "none"},
        {"name": "answer", "type": "constant", "value": 42},
        {"name": "region", "type": "env", "env": "SHOP_REGION"},
        {"name": "unset_env", "type": "env", "env": "TAGSERVER_TEST_UNSET", "default": "dflt"},
        {
            "name": "currency_name",
            "type": "lookup_table",
            "input": "{{currency}}",
            "table": {"EUR": "euro", "USD": "dollar"},
            "default": "other",
        },
        {
            "name": "currency_rows",
            "type": "lookup_table",
            "input": "{{currency}}",
            "table": [{"key": "eur", "value": "euro!"}],
            "ignore_case": True,
        },
        {
            "name": "section",
            "type": "regex_table",
            "input": "{{page_path}}",
            "table": [
                {"pattern": "^/products/(\\d+)", "value": "product $1"},
                {"pattern": "^/blog", "value": "blog"},
            ],
            "default": "other",
        },
        {
            "name": "section_default",
            "type": "regex_table",
            "input": "{{page_path}}",
            "table": [{"pattern": "^/blog", "value": "blog"}],
            "default": "other",
        },
    ]
    fields = {v["name"]: "{{" + v["name"] + "}}" for v in variables}
    event = {
        "event_name": "purchase",
        "currency": "EUR",
        "page_location": "https://www.shop.test/products/42?x=1",
        "user_data": {"email_address": "a@example.com"},
        "items": [{"item_id": "SKU-1"}],
    }
    line = logged_fields(
        caplog,
        variables,
        fields,
        event,
        headers={"X-Shop-Referer": "newsletter"},
        cookies={"shop_session": "s-1"},
        query="?utm_campaign=winter",
    )
    assert line["fields"] == {
        "email": "a@example.com",
        "first_item": "SKU-1",
        "missing": "fallback",
        "referer": "newsletter",
        "session": "s-1",
        "campaign": "winter",
        "answer": 42,
        "region": "eu-west",
        "unset_env": "dflt",
        "currency_name": "euro",
        "currency_rows": "euro!",
        "section": "product 42",
        "section_default": "other",
    }


def test_builtins_and_interpolation(caplog):
    fields = {
        "event_name": "{{event_name}}",
        "client_name": "{{client_name}}",
        "client_ip": "{{client_ip}}",
        "request_path": "{{request_path}}",
        "request_method": "{{request_method}}",
        "page_location": "{{page_location}}",
        "page_hostname": "{{page_hostname}}",
        "page_path": "{{page_path}}",
        "browser": "{{user_agent.browser}}",
        "os": "{{user_agent.os}}",
        "device": "{{user_agent.device_type}}",
        "is_bot": "{{user_agent.is_bot}}",
        "timestamp_ms": "{{timestamp_ms}}",
        "random": "{{random}}",
        "value_typed": "{{value}}",
        "value_text": "total: {{value}} {{currency}}",
        "nested": "{{event.items.1.price}}",
        "pref_cookie": "{{cookie.pref}}",
        "header": "{{header.accept-language}}",
        "query": "{{query.src}}",
    }
    event = {
        "event_name": "purchase",
        "value": 19.5,
        "currency": "EUR",
        "page_location": "https://shop.test/cart?step=2",
        "items": [{"price": 1}, {"price": 2.5}],
        "user_agent": CHROME,  # the customer's; the calling server's is not theirs
    }
    line = logged_fields(
        caplog,
        [],
        fields,
        event,
        headers={"User-Agent": "crm-sync/2", "Accept-Language": "de-DE"},
        cookies={"pref": "dark"},
        query="?src=crm",
    )
    f = line["fields"]
    assert f["event_name"] == "purchase" and f["client_name"] == "api"
    # run in-process as a visitor's request (the events API's own case: test_caller_context)
    assert f["client_ip"] == "testclient"
    assert f["request_path"] == "/api/events" and f["request_method"] == "POST"
    assert f["page_location"] == "https://shop.test/cart?step=2"
    assert f["page_hostname"] == "shop.test" and f["page_path"] == "/cart"
    assert (
        f["browser"] == "Chrome"
        and f["os"] == "Windows"
        and f["device"] == "desktop"
        and f["is_bot"] is False
    )
    assert isinstance(f["timestamp_ms"], int) and f["timestamp_ms"] > 1_700_000_000_000
    assert isinstance(f["random"], int)
    assert f["value_typed"] == 19.5 and f["value_text"] == "total: 19.5 EUR"
    assert (
        f["nested"] == 2.5
        and f["pref_cookie"] == "dark"
        and f["header"] == "de-DE"
        and f["query"] == "crm"
    )


def test_client_ip_prefers_ip_override(caplog):
    line = logged_fields(
        caplog,
        [],
        {"ip": "{{client_ip}}"},
        {"event_name": "e", "ip_override": "203.0.113.7"},
    )
    assert line["fields"]["ip"] == "203.0.113.0"  # the log tag masks the host part


@pytest.mark.parametrize(
    ("ua", "device", "is_bot"),
    [(IPHONE, "mobile", False), (IPAD, "tablet", False), (BOT, "bot", True)],
)
def test_device_type(caplog, ua, device, is_bot):
    line = logged_fields(
        caplog,
        [],
        {"d": "{{user_agent.device_type}}", "b": "{{user_agent.is_bot}}"},
        {"event_name": "e", "user_agent": ua},
        headers={"User-Agent": "Java/17.0.2"},  # the calling server's: not the customer's
    )
    assert line["fields"] == {"d": device, "b": is_bot}


def test_secret_env_variable_is_redacted_in_output(caplog, monkeypatch):
    monkeypatch.setenv("SHOP_TOKEN", "tok-very-secret-123")
    variables = [{"name": "token", "type": "env", "env": "SHOP_TOKEN", "secret": True}]
    line = logged_fields(
        caplog,
        variables,
        {"auth": "Bearer {{token}}"},
        {"event_name": "e", "note": "tok-very-secret-123"},
        include_event=True,
    )
    text = json.dumps(line)
    assert "tok-very-secret-123" not in text
    assert line["fields"]["auth"] == "Bearer [redacted]"


def test_personal_data_is_masked_in_log_lines(caplog):
    line = logged_fields(
        caplog,
        [],
        {},
        {"event_name": "e", "user_data": {"email_address": "jane@example.com"}},
        include_event=True,
    )
    assert "jane@example.com" not in json.dumps(line)
    assert line["event"]["user_data"]["email_address"] == "[personal data]"
