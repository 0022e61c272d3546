"""Triggers, operators, consent and tag decisions, run straight through the engine.

Each case compiles a container with the installed registry and runs one event through
`Runtime`, reading what the events API would answer (`tags_fired`, `tags_not_fired`). One
end-to-end case at the bottom goes through the app and its events API.
"""

import json

import pytest
from engine import compile_container, run_event, summary
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import app_client

from tagserver.engine.runtime import Runtime
from tagserver.plugins import Outgoing, Param, Registry, Tag, load_registry
from tagserver.settings import Settings

AUTH = {"Authorization": "Bearer test-key"}


def container_with(
    conditions=None,
    event="*",
    tag_extra=None,
    triggers_extra=(),
    variables=(),
    consent_mode="basic",
):
    return {
        "name": "t",
        "consent_mode": consent_mode,
        "clients": [{"name": "api", "type": "events_api"}],
        "variables": list(variables),
        "triggers": [
            {"name": "t", "event": event, "conditions": conditions or []},
            *triggers_extra,
        ],
        "tags": [{"name": "tag", "type": "log", "fire_on": ["t"], **(tag_extra or {})}],
    }


def fired(container, event, **request):
    result = summary(container, event, **request)
    return result["tags_fired"] == ["tag"], result


OPERATOR_CASES = [
    # operator, expected value, actual event, should fire
    ("equals", "purchase", {"event_name": "purchase"}, True),
    ("equals", "Purchase", {"event_name": "purchase"}, False),
    ("equals", 10, {"event_name": "e", "value": "10.0"}, True),
    ("contains", "shop", {"event_name": "e", "page_location": "https://shop.test/a"}, True),
    ("contains", "blog", {"event_name": "e", "page_location": "https://shop.test/a"}, False),
    ("starts_with", "https://", {"event_name": "e", "page_location": "https://shop.test/a"}, True),
    ("starts_with", "http://", {"event_name": "e", "page_location": "https://shop.test/a"}, False),
    ("ends_with", "/a", {"event_name": "e", "page_location": "https://shop.test/a"}, True),
    ("ends_with", "/b", {"event_name": "e", "page_location": "https://shop.test/a"}, False),
    (
        "matches_regex",
        r"^/products/\d+$",
        {"event_name": "e", "page_location": "https://shop.test/products/42"},
        True,
    ),
    (
        "matches_regex",
        r"^/products/\d+$",
        {"event_name": "e", "page_location": "https://shop.test/products/x"},
        False,
    ),
    ("greater_than", 100, {"event_name": "e", "value": 150}, True),
    ("greater_than", 100, {"event_name": "e", "value": 100}, False),
    ("greater_or_equal", 100, {"event_name": "e", "value": 100}, True),
    ("greater_or_equal", 100, {"event_name": "e", "value": 99.5}, False),
    ("less_than", 100, {"event_name": "e", "value": 99}, True),
    ("less_than", 100, {"event_name": "e", "value": 150}, False),
    ("less_or_equal", 100, {"event_name": "e", "value": 100}, True),
    ("less_or_equal", 100, {"event_name": "e", "value": 101}, False),
    ("in", ["EUR", "USD"], {"event_name": "e", "currency": "USD"}, True),
    ("in", "EUR, USD", {"event_name": "e", "currency": "GBP"}, False),
    ("in_cidr", "203.0.113.0/24", {"event_name": "e", "ip_override": "203.0.113.9"}, True),
    ("in_cidr", ["2001:db8::/32"], {"event_name": "e", "ip_override": "2001:db8::1"}, True),
    ("in_cidr", "203.0.113.0/24", {"event_name": "e", "ip_override": "198.51.100.1"}, False),
]
VARIABLE_FOR = {
    "equals": None,
    "contains": "page_location",
    "starts_with": "page_location",
    "ends_with": "page_location",
    "matches_regex": "page_path",
    "greater_than": "value",
    "greater_or_equal": "value",
    "less_than": "value",
    "less_or_equal": "value",
    "in": "currency",
    "in_cidr": "client_ip",
}


@pytest.mark.parametrize(("operator", "expected", "event", "should_fire"), OPERATOR_CASES)
def test_operator(operator, expected, event, should_fire):
    variable = VARIABLE_FOR[operator] or ("value" if "value" in event else "event_name")
    condition = {"variable": variable, "operator": operator, "value": expected}
    did_fire, result = fired(container_with([condition]), event)
    assert did_fire is should_fire, result
    negated = dict(condition, negate=True)
    did_fire, result = fired(container_with([negated]), event)
    assert did_fire is (not should_fire), result


@pytest.mark.parametrize(
    "operator", ["equals", "contains", "starts_with", "ends_with", "matches_regex", "in"]
)
def test_ignore_case(operator):
    value = {
        "equals": "PURCHASE",
        "contains": "URCH",
        "starts_with": "PUR",
        "ends_with": "ASE",
        "matches_regex": "^PUR",
        "in": ["PURCHASE"],
    }[operator]
    condition = {"variable": "event_name", "operator": operator, "value": value}
    assert fired(container_with([condition]), {"event_name": "purchase"})[0] is False
    condition["ignore_case"] = True
    assert fired(container_with([condition]), {"event_name": "purchase"})[0] is True


def test_not_fired_reason_names_the_condition_and_values():
    condition = {"variable": "value", "operator": "greater_than", "value": 100}
    did_fire, result = fired(container_with([condition]), {"event_name": "purchase", "value": 20})
    assert not did_fire
    reason = result["tags_not_fired"]["tag"]
    assert "value = 20" in reason and "greater than 100" in reason


@pytest.mark.parametrize(
    ("event_filter", "name", "should_fire"),
    [
        ("purchase", "purchase", True),
        ("purchase", "refund", False),
        (["purchase", "refund"], "refund", True),
        (["purchase", "refund"], "page_view", False),
        ("*", "anything", True),
        ({"regex": "^(add_to|view)_"}, "add_to_cart", True),
        ({"regex": "^(add_to|view)_"}, "purchase", False),
        ({"regex": "^PAGE", "ignore_case": True}, "page_view", True),
    ],
)
def test_event_name_filter(event_filter, name, should_fire):
    did_fire, result = fired(container_with(event=event_filter), {"event_name": name})
    assert did_fire is should_fire, result


def test_block_on_and_paused():
    bots = {
        "name": "bots",
        "conditions": [{"variable": "user_agent.is_bot", "operator": "equals", "value": True}],
    }
    container = compile_container(
        container_with(tag_extra={"block_on": ["bots"]}, triggers_extra=[bots])
    )
    chrome = "Mozilla/5.0 (X11; Linux x86_64) Chrome/130.0 Safari/537.36"
    human = summary(container, {"event_name": "e"}, headers={"User-Agent": chrome})
    googlebot = "Googlebot/2.1 (+http://www.google.com/bot.html)"
    bot = summary(container, {"event_name": "e"}, headers={"User-Agent": googlebot})
    assert human["tags_fired"] == ["tag"]
    assert bot["tags_not_fired"]["tag"] == "blocked by trigger 'bots'"
    did_fire, result = fired(container_with(tag_extra={"paused": True}), {"event_name": "e"})
    assert not did_fire and result["tags_not_fired"]["tag"] == "tag is paused"


@pytest.mark.parametrize(
    ("mode", "consent", "should_fire"),
    [
        ("basic", None, True),
        ("basic", {"ad_storage": "granted"}, True),
        ("basic", {"ad_storage": "denied"}, False),
        ("basic", {"analytics_storage": "denied"}, True),
        ("strict", None, False),
        ("strict", {"ad_storage": "granted"}, True),
        ("strict", {"ad_storage": "denied"}, False),
    ],
)
def test_consent(mode, consent, should_fire):
    event = {"event_name": "e", **({"consent": consent} if consent else {})}
    container = container_with(tag_extra={"consent": ["ad_storage"]}, consent_mode=mode)
    did_fire, result = fired(container, event)
    assert did_fire is should_fire, result
    if not should_fire:
        assert "ad_storage" in result["tags_not_fired"]["tag"]


def raising_container():
    container = container_with()
    # The log tag's `fields` param must be an object; a {{variable}} resolving to a list makes it raise.
    container["variables"] = [{"name": "bad", "type": "constant", "value": ["not", "an", "object"]}]
    container["tags"] = [
        {"name": "broken", "type": "log", "fire_on": ["t"], "params": {"fields": "{{bad}}"}},
        {"name": "tag", "type": "log", "fire_on": ["t"]},
    ]
    return container


def test_a_raising_tag_does_not_affect_other_tags():
    result = summary(raising_container(), {"event_name": "e"})
    assert result["tags_fired"] == ["tag"]
    assert (
        result["tags_not_fired"]["broken"]
        == "error: TypeError: params.fields: expected object, got array"
    )


def test_the_registry_name_is_the_tag_type_whatever_the_class_says():
    """One plugin name: the entry point's. A class attribute that disagrees is overridden, and
    every message the tag returns carries the registered name (the dispatcher finds the
    sender by it)."""

    class Renamed(Tag):
        type_name = "something_else"

        def fire(self, event, params, ctx):
            return [Outgoing("renamed:1", {"n": 1}, "d1", tag_type="wrong")]

    installed = load_registry()
    registry = Registry(installed.clients, {**installed.tags, "acme_renamed": Renamed})
    container = container_with()
    container["tags"] = [{"name": "tag", "type": "acme_renamed", "fire_on": ["t"]}]
    compiled = compile_container(container, reg=registry)
    assert compiled.tags[0].instance.type_name == "acme_renamed"
    [message] = run_event(compiled, {"event_name": "e"}).outgoing
    assert message.tag_type == "acme_renamed" and message.tag_name == "tag"


def test_a_templated_secret_param_is_each_events_own():
    """A secret param templated from the event: each message carries its own event's secret,
    and a previewed event shows it nowhere (text values are looked up once per value; a
    number and its float differ as text, so they must not share an entry)."""

    class Vault(Tag):
        params = (Param("pin", "any", secret=True), Param("label"))

        def fire(self, event, params, ctx):
            return [Outgoing("vault:1", {"label": params["label"]}, event["event_id"])]

    installed = load_registry()
    registry = Registry(installed.clients, {**installed.tags, "acme_vault": Vault})
    container = container_with()
    container["tags"] = [
        {"name": "tag", "type": "acme_vault", "fire_on": ["t"],
         "params": {"pin": "{{event.pin}}", "label": "pin {{event.pin}}"}},
    ]  # fmt: skip
    runtime = Runtime(compile_container(container, reg=registry), Settings())
    pins = ["pin-one-1111", "pin-two-2222", "pin-one-1111", 4321, 4321.0, "4321", ["word 98765"]]
    expected = [
        ("pin-one-1111",), ("pin-two-2222",), ("pin-one-1111",), ("4321",), ("4321.0",),
        ("4321",), ("word 98765", "98765"),
    ]  # fmt: skip
    for index, (pin, secrets) in enumerate(zip(pins, expected, strict=True)):
        for trace in (False, True):
            event = {"event_name": "e", "event_id": f"e{index}", "pin": pin}
            result = run_event(container, event, runtime=runtime, trace=trace)
            [message] = result.outgoing
            assert message.secrets == secrets, pin
            if trace:
                shown = json.dumps(
                    {"tags": [t.as_dict() for t in result.tags], "variables": result.variables}
                )
                for secret in secrets:
                    assert secret not in shown, (pin, shown)
                assert result.tags[0].as_dict()["params"]["pin"] == "[redacted]"


# -- end to end: the same decisions through the app and its events API ---------------------


def test_decisions_reach_the_events_api_caller(tmp_path):
    with app_client(tmp_path, raising_container()) as client:
        response = client.post("/api/events", json={"events": [{"event_name": "e"}]}, headers=AUTH)
    assert response.status_code == 200
    result = response.json()["results"][0]
    assert result["tags_fired"] == ["tag"]
    assert (
        result["tags_not_fired"]["broken"]
        == "error: TypeError: params.fields: expected object, got array"
    )


def test_tags_limited_by_event_name_answer_the_same_skipped_or_evaluated(tmp_path):
    """Tags whose triggers name their events are skipped for other names (an index built at
    load); the answer, a previewed hit's reasons and /metrics say what evaluating them said."""
    triggers = [
        {"name": "buy", "event": "purchase"},
        {"name": "views", "event": ["page_view", "view_item"],
         "conditions": [{"variable": "page_path", "operator": "starts_with", "value": "/p/"}]},
        {"name": "by_regex", "event": {"regex": "^sign"}},
        {"name": "all", "event": "*", "conditions": [{"variable": "value", "operator": "greater_than", "value": 10}]},
    ]  # fmt: skip
    container = {
        "name": "t",
        "clients": [{"name": "api", "type": "events_api"}],
        "triggers": triggers,
        "tags": [
            {"name": "on_buy", "type": "log", "fire_on": ["buy"]},
            {"name": "on_views", "type": "log", "fire_on": ["views", "buy"]},
            {"name": "on_regex", "type": "log", "fire_on": ["by_regex"]},
            {"name": "on_value", "type": "log", "fire_on": ["all"]},
            {"name": "paused", "type": "log", "fire_on": ["buy"], "paused": True},
        ],
    }
    events = [
        {"event_name": "purchase", "value": 20},
        {"event_name": "page_view", "page_location": "https://s.test/p/1"},
        {"event_name": "page_view", "page_location": "https://s.test/blog"},
        {"event_name": "signup", "value": 5},
        {"event_name": "other"},
    ]

    def send(client, *events):
        response = client.post("/api/events", json={"events": list(events)}, headers=AUTH)
        assert response.status_code == 200, response.text
        return response.json()["results"]

    with app_client(tmp_path, container) as client:
        results = send(client, *events)
        before = client.get("/metrics").text
        send(client, {"event_name": "other"}, {"event_name": "other"})
        after = client.get("/metrics").text
    assert [r["tags_fired"] for r in results] == [
        ["on_buy", "on_views", "on_value"], ["on_views"], [], ["on_regex"], [],
    ]  # fmt: skip
    assert results[4]["tags_not_fired"] == {
        "on_buy": "no firing trigger matched: trigger 'buy': event name 'other' does not match",
        "on_views": "no firing trigger matched: trigger 'views': event name 'other' does not "
        "match; trigger 'buy': event name 'other' does not match",
        "on_regex": "no firing trigger matched: trigger 'by_regex': event name 'other' does "
        "not match",
        "on_value": "no firing trigger matched: trigger 'all': value = None; condition "
        "'greater than 10' failed",
        "paused": "tag is paused",
    }
    assert results[2]["tags_not_fired"]["on_views"].startswith(
        "no firing trigger matched: trigger 'views': page_path = '/blog'"
    )

    def count(text: str, tag: str) -> float:
        line = f'tagserver_tag_results_total{{status="not_fired",tag="{tag}"}} '
        found = [row for row in text.splitlines() if row.startswith(line)]
        return float(found[0].split()[-1]) if found else 0.0

    assert count(after, "on_buy") - count(before, "on_buy") == 2
    assert count(after, "on_views") - count(before, "on_views") == 2


CLIENT_CONDITIONS = [
    {"variable": "client_name", "operator": "equals", "value": "ga4"},
    {"variable": "{{client_name}}", "operator": "in", "value": ["api", "collector"]},
    {"variable": "client_name", "operator": "equals", "value": "API", "ignore_case": True},
    {"variable": "client_name", "operator": "equals", "value": "api", "negate": True},
    {"variable": "client_name", "operator": "starts_with", "value": "{{prefix}}"},
    {"variable": "client_name", "operator": "matches_regex", "value": "^col"},
]
OTHER_CONDITIONS = [
    {"variable": "value", "operator": "greater_than", "value": 10},
    {"variable": "event_name", "operator": "contains", "value": "a"},
]
EVENT_FILTERS = ["*", "purchase", ["page_view", "purchase"], {"regex": "^p"}, ["*", "x"]]


@st.composite
def containers(draw):
    triggers = []
    for n in range(draw(st.integers(1, 4))):
        conditions = draw(
            st.lists(st.sampled_from(CLIENT_CONDITIONS + OTHER_CONDITIONS), max_size=2)
        )
        triggers.append({"name": f"t{n}", "event": draw(st.sampled_from(EVENT_FILTERS)),
                         "conditions": conditions})  # fmt: skip
    names = [t["name"] for t in triggers]
    tags = [
        {"name": f"tag{n}", "type": "log", "fire_on": draw(st.lists(st.sampled_from(names),
         min_size=1, max_size=3, unique=True)), "paused": draw(st.booleans())}
        for n in range(draw(st.integers(1, 4)))
    ]  # fmt: skip
    variables = [{"name": "prefix", "type": "constant", "value": "co"}]
    return {"name": "t", "clients": [{"name": "api", "type": "events_api"}],
            "variables": variables, "triggers": triggers, "tags": tags}  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    containers(),
    st.lists(st.tuples(st.sampled_from(["api", "collector", "ga4"]),
                       st.sampled_from(["purchase", "page_view", "other", "sale"]),
                       st.sampled_from([None, 5, 50])), min_size=1, max_size=6),
)  # fmt: skip
def test_tags_skipped_by_name_or_client_answer_as_if_evaluated(container, hits):
    """A tag whose triggers the event's name or client rule out is skipped unless the hit is
    previewed (a plan made once per name and client); either way the answer is the same."""
    compiled = compile_container(container)
    runtime = Runtime(compiled, Settings())
    for client, name, value in hits:
        event = {"event_name": name, "event_id": "e1"}
        if value is not None:
            event["value"] = value
        planned = run_event(compiled, dict(event), client_name=client, runtime=runtime)
        evaluated = run_event(
            compiled, dict(event), client_name=client, runtime=runtime, trace=True
        )
        assert planned.summary(0) == evaluated.summary(0)
