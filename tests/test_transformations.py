"""Transformations end to end: what each vendor receives once allow / exclude / augment ran,
scoped by tag and by tag type, with and without conditions; what preview shows; validation."""

from __future__ import annotations

import hashlib

import pytest
from fakes.graph import FakeGraph
from fakes.vendor import FakeVendor
from support import app_client, minimal_container, wait_until

from tagserver.container.model import validate
from tagserver.plugins import load_registry

AUTH = {"Authorization": "Bearer test-key"}
PIXEL = "1122334455"
TOKEN = "EAAtransformTOKEN0123456789"
FAST = {"retry_base_seconds": 0.05, "retry_cap_seconds": 0.2}
UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36"

TRANSFORMATIONS = [
    {"name": "no_phone_to_crm", "type": "exclude", "keys": ["user_data.phone_number"],
     "tags": ["crm_webhook"]},
    {"name": "brand", "type": "augment", "tag_types": ["meta_capi"],
     "set": {"custom_data.brand": "acme", "custom_data.section": "{{section}}"}},
    {"name": "minimal", "type": "allow", "keys": ["event_name", "event_id", "value", "currency"],
     "tags": ["partner"],
     "conditions": [{"variable": "event.channel", "operator": "equals", "value": "b2b"}]},
]  # fmt: skip


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def shop(vendor_url: str, transformations=TRANSFORMATIONS):
    hook = {"body": "{{event}}"}
    return minimal_container(
        variables=[{"name": "section", "type": "event_data", "key": "page_section",
                    "default": "none"}],
        tags=[
            {"name": "crm_webhook", "type": "http_request", "fire_on": ["all"],
             "params": {"url": vendor_url + "/crm", **hook}},
            {"name": "partner", "type": "http_request", "fire_on": ["all"],
             "params": {"url": vendor_url + "/partner", **hook}},
            {"name": "meta", "type": "meta_capi", "fire_on": ["all"],
             "params": {"pixel_id": PIXEL, "access_token": TOKEN}},
        ],
        transformations=transformations,
    )  # fmt: skip


EVENT = {
    "event_name": "purchase", "value": 42.5, "currency": "EUR", "transaction_id": "T-9",
    "page_location": "https://shop.test/checkout", "page_section": "checkout",
    "user_data": {"email_address": "Ann@Example.com", "phone_number": "+49 170 1234567"},
    "user_agent": UA,  # the customer's: the events API never takes the caller's for it
}  # fmt: skip


@pytest.fixture
def vendor():
    with FakeVendor() as v:
        yield v


@pytest.fixture
def graph():
    with FakeGraph(token=TOKEN, pixel_ids={PIXEL}) as fake:
        yield fake


def send(client, **extra):
    r = client.post("/api/events", json={**EVENT, **extra}, headers={**AUTH, "User-Agent": UA})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]


def by_path(vendor, path, count=1):
    wait_until(lambda: len([r for r in vendor.accepted if r.path == path]) >= count)
    return [r.json() for r in vendor.accepted if r.path == path]


def test_each_type_scoped_and_conditional_reaches_the_vendors(tmp_path, vendor, graph):
    settings = {"meta_graph_url": graph.url, **FAST}
    with app_client(tmp_path, shop(vendor.url), **settings) as client:
        assert send(client, event_id="e1")["tags_fired"] == ["crm_webhook", "partner", "meta"]
        send(client, event_id="e2", channel="b2b")
        crm = by_path(vendor, "/crm", 2)
        partner = by_path(vendor, "/partner", 2)
        wait_until(lambda: len(graph.accepted_events()) >= 2)
        meta = {e["event_id"]: e for e in graph.accepted_events()}

    # exclude, scoped by tag name: the CRM never gets the phone number, the others do
    for body in crm:
        assert body["user_data"] == {"email_address": "Ann@Example.com"}
        assert body["transaction_id"] == "T-9" and "custom_data" not in body
    assert meta["e1"]["user_data"]["ph"] == [sha("491701234567")]

    # augment, scoped by tag type, with a {{variable}}: only Meta gets the brand
    assert meta["e1"]["custom_data"]["brand"] == "acme"
    assert meta["e1"]["custom_data"]["section"] == "checkout"
    assert meta["e1"]["custom_data"]["value"] == 42.5  # the rest of custom_data is kept

    # allow, conditional: only b2b events reach the partner reduced to four keys
    plain, b2b = sorted(partner, key=lambda b: b["event_id"])
    assert plain["user_data"]["phone_number"] == "+49 170 1234567"
    assert b2b == {"event_name": "purchase", "event_id": "e2", "value": 42.5, "currency": "EUR"}


def test_nested_paths_lists_and_order(tmp_path, vendor):
    transformations = [
        {"name": "no_brands", "type": "exclude", "keys": ["items.item_brand", "user_data"]},
        {"name": "stamp", "type": "augment", "set": {"meta.source": "{{client_name}}",
                                                     "items.0.first": True}},
        {"name": "later_wins", "type": "augment", "set": {"meta.source": "override"},
         "tags": ["partner"]},
    ]  # fmt: skip
    container = shop(vendor.url, transformations)
    container["tags"] = container["tags"][:2]
    items = [{"item_id": "A", "item_brand": "x"}, {"item_id": "B", "item_brand": "y"}]
    with app_client(tmp_path, container, **FAST) as client:
        send(client, event_id="n1", items=items)
        (crm,) = by_path(vendor, "/crm")
        (partner,) = by_path(vendor, "/partner")
    assert crm["items"] == [{"item_id": "A", "first": True}, {"item_id": "B"}]
    assert "user_data" not in crm and crm["meta"] == {"source": "events_api"}
    assert partner["meta"] == {"source": "override"}


def test_preview_shows_the_received_event_and_who_changed_each_key(tmp_path, vendor, graph):
    settings = {"meta_graph_url": graph.url, "preview_password": "pw-preview-123", **FAST}
    with app_client(tmp_path, shop(vendor.url), **settings) as client:
        r = client.post("/preview/login", data={"password": "pw-preview-123"},
                        follow_redirects=False)  # fmt: skip
        assert r.status_code == 303
        session = client.post("/preview/sessions", data={"name": "t"},
                              headers={"Accept": "application/json"}).json()  # fmt: skip
        headers = {**AUTH, "X-Tagserver-Preview": session["token"], "User-Agent": UA}
        r = client.post("/api/events", json={**EVENT, "event_id": "p1", "channel": "b2b"},
                        headers=headers)  # fmt: skip
        assert r.status_code == 200
        api = f"/preview/api/s/{session['id']}"
        hits = wait_until(lambda: client.get(api + "/hits").json()["hits"])
        assert hits[0]["container"]["version"] == "1"
        trace = client.get(f"{api}/hits/{hits[0]['id']}").json()
        client.post("/api/events", json={**EVENT, "event_id": "p2"}, headers=headers)
        hits = wait_until(
            lambda: (h := client.get(api + "/hits").json()["hits"]) and len(h) > 1 and h
        )
        (second,) = [h for h in hits if h["id"] != trace["id"]]
        other = client.get(f"{api}/hits/{second['id']}").json()
    assert trace["container"] == {
        "name": "test",
        "version": "1",
        "hash": trace["container"]["hash"],
    }
    tags = {t["tag"]: t for t in trace["events"][0]["tags"]}

    crm = tags["crm_webhook"]
    assert "phone_number" not in crm["received"]["user_data"]
    (step,) = crm["transformations"]
    assert step["name"] == "no_phone_to_crm" and step["applied"] is True
    assert step["changes"] == [{
        "key": "user_data.phone_number", "change": "removed", "before": "+49 170 1234567",
        "after": None, "transformation": "no_phone_to_crm", "type": "exclude",
    }]  # fmt: skip

    meta_changes = tags["meta"]["transformations"][0]["changes"]
    assert {(c["key"], c["change"], c["after"]) for c in meta_changes} == {
        ("custom_data.brand", "added", "acme"), ("custom_data.section", "added", "checkout")
    }  # fmt: skip

    partner = tags["partner"]
    assert partner["received"] == {"event_name": "purchase", "event_id": "p1", "value": 42.5,
                                   "currency": "EUR"}  # fmt: skip
    removed = {c["key"] for c in partner["transformations"][0]["changes"]}
    assert {"transaction_id", "user_data.email_address", "channel"} <= removed

    # a condition that fails is shown with the value it saw; the tag got the event unchanged
    partner = {t["tag"]: t for t in other["events"][0]["tags"]}["partner"]
    (step,) = partner["transformations"]
    assert step["applied"] is False and step["changes"] == []
    assert step["reason"].startswith("not applied: event.channel = None; condition 'equals")
    assert partner["received"]["user_data"]["phone_number"] == "+49 170 1234567"


def problems(container):
    return [str(p) for p in validate(container, load_registry())]


@pytest.mark.parametrize(
    ("transformation", "expected"),
    [
        ({"name": "t", "type": "exclud", "keys": ["value"]},
         'transformations[0].type: unknown transformation type "exclud" — did you mean "exclude"?'),
        ({"name": "t", "type": "exclude", "keys": ["user_data.phone"], "tags": ["log_all"]},
         None),  # `phone` is a key the Meta tag reads: allowed
        ({"name": "t", "type": "exclude", "keys": ["user_data.phone_numbr"]},
         'transformations[0].keys[0]: no key "phone_numbr" in user_data — did you mean '
         '"phone_number"?'),
        ({"name": "t", "type": "allow", "keys": ["a..b"]},
         "transformations[0].keys[0]: 'a..b': empty step in the path"),
        ({"name": "t", "type": "allow", "keys": []},
         "transformations[0].keys: required by allow: a non-empty list of dotted paths"),
        ({"name": "t", "type": "exclude", "keys": ["value"], "tags": ["log_al"]},
         'transformations[0].tags[0]: no tag named "log_al" — did you mean "log_all"?'),
        ({"name": "t", "type": "exclude", "keys": ["value"], "tag_types": ["meta_capl"]},
         'transformations[0].tag_types[0]: no tag type named "meta_capl" — did you mean '
         '"meta_capi"?'),
        ({"name": "t", "type": "augment", "set": {"brand": "{{brnd}}"}},
         'transformations[0].set.brand: no variable named "brnd"'),
        ({"name": "t", "type": "augment", "keys": ["x"]},
         'transformations[0].keys: augment takes "set"'),
        ({"name": "t", "type": "exclude", "keys": ["value"],
          "conditions": [{"variable": "client_nme", "operator": "equals", "value": "x"}]},
         'transformations[0].conditions[0].variable: no variable named "client_nme"'),
        ({"name": "t", "type": "exclude", "keys": ["event.value"]},
         "transformations[0].keys[0]: 'event.value': paths start inside the event — write "
         '"value"'),
        ({"name": "t", "type": "exclude", "keys": ["value"], "tag": ["log_all"]},
         'transformations[0].tag: unknown field "tag" — did you mean "tags"?'),
    ],
)  # fmt: skip
def test_validation(transformation, expected):
    found = problems(minimal_container(transformations=[transformation]))
    if expected is None:
        assert found == []
    else:
        assert any(p.startswith(expected) for p in found), found


def test_validation_duplicates_and_shape():
    found = problems(minimal_container(transformations=[
        {"name": "a", "type": "exclude", "keys": ["value"]},
        {"name": "a", "type": "exclude", "keys": ["value"]},
    ]))  # fmt: skip
    assert found == ['transformations[1].name: duplicate name "a" (also transformations[0])']
    assert problems(minimal_container(transformations={})) == [
        "transformations: must be a list, got dict"
    ]


def test_schema_describes_transformations():
    from tagserver.container.schema import container_schema

    variants = container_schema(load_registry())["properties"]["transformations"]["items"]["oneOf"]
    assert [v["properties"]["type"]["const"] for v in variants] == ["allow", "exclude", "augment"]
    assert variants[2]["required"] == ["name", "type", "set"]
    assert "meta_capi" in variants[0]["properties"]["tag_types"]["items"]["enum"]
