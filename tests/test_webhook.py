"""Client `webhook`: another system's JSON, verified, mapped to events, sent on.

Shopify's orders/create payload through a real server with the Meta tag live against the fake
Graph API; the signature schemes and the mapping checked in-process against the app.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fakes.graph import FakeGraph
from support import ServerProcess, app_client, minimal_container, wait_until, write_container

from tagserver.cli.main import main

PIXEL = "1122334455"
TOKEN = "EAAE2EsecretTOKENvalue0123456789"
SECRET = "shpss_0123456789abcdef0123456789abcdef"
FIXTURE = Path(__file__).parent / "fixtures" / "shopify" / "orders_create.json"
DEFAULT_CONTAINER = Path(__file__).resolve().parent.parent / "container.json"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def shopify_order(**changes: Any) -> dict[str, Any]:
    stamp = datetime.now(UTC).replace(microsecond=0).isoformat()
    order = json.loads(FIXTURE.read_text().replace("__CREATED_AT__", stamp))
    order.update(changes)
    return order


def shopify_signature(body: bytes, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def shop_container() -> dict[str, Any]:
    """The shipped container plus a Shopify webhook client the Meta trigger listens to."""
    container = json.loads(DEFAULT_CONTAINER.read_text())
    container["clients"].append(
        {"name": "shopify", "type": "webhook",
         "params": {"path": "/hooks/shopify", "preset": "shopify_orders",
                    "secret": "{{shopify_webhook_secret}}"}}
    )  # fmt: skip
    container["variables"].append(
        {"name": "shopify_webhook_secret", "type": "env", "env": "SHOPIFY_WEBHOOK_SECRET",
         "default": "", "secret": True}
    )  # fmt: skip
    for trigger in container["triggers"]:
        if trigger["name"] == "meta_events":
            trigger["conditions"][0]["value"].append("shopify")
    return container


@pytest.fixture(scope="module")
def graph():
    with FakeGraph(token=TOKEN, pixel_ids={PIXEL}) as fake:
        yield fake


@pytest.fixture(scope="module")
def server(graph, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("webhook")
    env = {
        "META_PIXEL_ID": PIXEL,
        "META_ACCESS_TOKEN": TOKEN,
        "SHOPIFY_WEBHOOK_SECRET": SECRET,
        "TAGSERVER_META_GRAPH_URL": graph.url,
        "TAGSERVER_RETRY_BASE_SECONDS": "0.1",
        "TAGSERVER_RETRY_CAP_SECONDS": "0.3",
    }
    with ServerProcess(tmp, shop_container(), env=env) as process:
        yield process
    logs = process.logs()
    assert SECRET not in logs and TOKEN not in logs
    assert "jon@example.com" not in logs.lower()


def post(server: ServerProcess, body: bytes, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json", "X-Shopify-Topic": "orders/create"}
    if signature is not None:
        headers["X-Shopify-Hmac-Sha256"] = signature
    return httpx.post(server.url + "/hooks/shopify", content=body, headers=headers)


def received(graph: FakeGraph, event_id: str) -> list[dict[str, Any]]:
    return [e for e in graph.accepted_events() if e.get("event_id") == event_id]


@pytest.mark.slow
def test_a_signed_shopify_order_reaches_meta_as_a_purchase(server, graph):
    body = json.dumps(shopify_order()).encode()
    r = post(server, body, shopify_signature(body))
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["event_id"] == "shopify-order-820982911946154508"
    assert "meta_capi" in r.json()["results"][0]["tags_fired"]

    [event] = wait_until(lambda: received(graph, "shopify-order-820982911946154508"), timeout=10)
    assert event["event_name"] == "Purchase"
    assert event["action_source"] == "website"
    assert event["custom_data"]["value"] == 403.0
    assert event["custom_data"]["currency"] == "USD"
    assert event["custom_data"]["order_id"] == "#9999"
    assert event["custom_data"]["contents"] == [
        {"id": "IPOD2008PINK", "quantity": 1, "item_price": 199.0},
        {"id": "IPOD2008BLACK", "quantity": 1, "item_price": 199.0},
    ]
    user = event["user_data"]
    assert user["em"] == [sha("jon@example.com")]
    assert user["ph"] == [sha("16135550142")]
    assert user["fn"] == [sha("jon")] and user["ln"] == [sha("snow")]
    assert user["ct"] == [sha("billtown")] and user["st"] == [sha("ky")]
    assert user["country"] == [sha("us")]
    assert user["client_ip_address"] == "203.0.113.54"
    assert user["client_user_agent"].startswith("Mozilla/5.0 (Macintosh")
    assert user["fbp"] == "fb.1.1733480000000.1234567890"
    assert user["fbc"] == "fb.1.1733480000000.IwAR2x_shopify_click"


@pytest.mark.slow
def test_a_wrong_or_missing_signature_is_refused_and_nothing_is_sent(server, graph):
    order = shopify_order(id=111)
    body = json.dumps(order).encode()
    wrong = post(server, body, shopify_signature(body, secret="not-the-secret"))
    assert wrong.status_code == 401
    assert "wrong signature" in wrong.json()["error"]
    missing = post(server, body, None)
    assert missing.status_code == 401
    assert "x-shopify-hmac-sha256" in missing.json()["error"]
    tampered = post(server, body.replace(b'"403.00"', b'"0.01"'), shopify_signature(body))
    assert tampered.status_code == 401
    time.sleep(1.5)
    assert received(graph, "shopify-order-111") == []
    for r in (wrong, missing, tampered):
        assert SECRET not in r.text


@pytest.mark.slow
def test_a_resent_webhook_is_stored_once(server, graph):
    """Shopify retries a webhook it got no 2xx for: the same order gives the same event id."""
    graph.mode = "outage"  # Meta down: both posts wait in the outbox together
    try:
        body = json.dumps(shopify_order(id=222)).encode()
        seen = graph.request_count()
        first = post(server, body, shopify_signature(body))
        second = post(server, body, shopify_signature(body))
        assert first.status_code == second.status_code == 200
        wait_until(lambda: graph.request_count() > seen, timeout=10)  # a failed attempt
    finally:
        graph.mode = "ok"
    wait_until(lambda: received(graph, "shopify-order-222"), timeout=15)
    wait_until(lambda: pending(server) == 0, timeout=15)
    assert len(received(graph, "shopify-order-222")) == 1


def pending(server: ServerProcess) -> int:
    result = CliRunner().invoke(
        main, ["outbox", "status", "--json", "--data-dir", str(server.data_dir)]
    )
    return sum(
        d["pending"] + d.get("in_flight", 0) for d in json.loads(result.output)["destinations"]
    )


@pytest.mark.slow
def test_a_malformed_body_is_a_400_with_the_reason(server):
    for body, reason in (
        (b'{"id": 1, "total_price": ', "body is not valid JSON"),
        (b"[1, 2]", "body must be a JSON object, got array"),
        (json.dumps(shopify_order(total_price="ten", current_total_price=None)).encode(),
         "value: 'ten' is not a number"),
    ):  # fmt: skip
        r = post(server, body, shopify_signature(body))
        assert r.status_code == 400, r.text
        assert reason in r.text


# -- the other signature schemes and a hand-written mapping (in-process) ------------------


CRM_SECRET = "crm-signing-secret-42"


def crm_container(signature: str, **params: Any) -> dict[str, Any]:
    return minimal_container(
        clients=[
            {"name": "crm", "type": "webhook",
             "params": {"path": "/hooks/crm", "signature": signature, "secret": "{{crm_secret}}",
                        "event_name": "purchase", "each": "deals",
                        "mapping": {"event_id": {"path": "id", "prefix": "deal-"},
                                    "value": "amount", "currency": {"const": "EUR"},
                                    "event_time": "closed_at",
                                    "user_data.email_address": "contact.email",
                                    "custom_data.pipeline": "$.pipeline"},
                        **params}},
        ],
        variables=[{"name": "crm_secret", "type": "constant", "value": CRM_SECRET}],
    )  # fmt: skip


def crm_body() -> bytes:
    now = int(time.time())
    return json.dumps(
        {
            "pipeline": "retail",
            "deals": [
                {
                    "id": 7,
                    "amount": "120.50",
                    "closed_at": now,
                    "contact": {"email": "a@example.com"},
                },
                {"id": 8, "amount": "x", "closed_at": now},
            ],
        }  # fmt: skip
    ).encode()


def test_a_hex_hmac_signed_array_becomes_one_event_per_element(tmp_path):
    body = crm_body()
    signature = "sha256=" + hmac.new(CRM_SECRET.encode(), body, hashlib.sha256).hexdigest()
    with app_client(
        tmp_path, crm_container("hmac_sha256_hex", signature_header="X-CRM-Signature")
    ) as client:
        r = client.post("/hooks/crm", content=body, headers={"X-CRM-Signature": signature})
        assert r.status_code == 200, r.text
        first, second = r.json()["results"]
        assert first["accepted"] is True and first["event_id"] == "deal-7"
        assert second == {"index": 1, "accepted": False, "reason": "value: 'x' is not a number"}
        bad = client.post("/hooks/crm", content=body, headers={"X-CRM-Signature": "sha256=00"})
        assert bad.status_code == 401


def test_a_bearer_secret_and_hubspots_v3_signature(tmp_path):
    body = crm_body()
    with app_client(tmp_path, crm_container("bearer")) as client:
        ok = client.post(
            "/hooks/crm", content=body, headers={"Authorization": f"Bearer {CRM_SECRET}"}
        )
        assert ok.status_code == 200, ok.text
        no = client.post("/hooks/crm", content=body, headers={"Authorization": "Bearer nope"})
        assert no.status_code == 401 and "wrong bearer secret" in no.text

    (tmp_path / "hs").mkdir()
    with app_client(tmp_path / "hs", crm_container("hubspot_v3")) as client:

        def signed(stamp: int) -> dict[str, str]:
            source = b"POST" + b"http://sgtm.shop.test/hooks/crm" + body + str(stamp).encode()
            digest = hmac.new(CRM_SECRET.encode(), source, hashlib.sha256).digest()
            return {"X-HubSpot-Signature-v3": base64.b64encode(digest).decode(),
                    "X-HubSpot-Request-Timestamp": str(stamp)}  # fmt: skip

        now_ms = int(time.time() * 1000)
        assert client.post("/hooks/crm", content=body, headers=signed(now_ms)).status_code == 200
        old = client.post("/hooks/crm", content=body, headers=signed(now_ms - 10 * 60 * 1000))
        assert old.status_code == 401 and "replay" in old.text


def test_a_webhook_without_a_secret_refuses_everything(tmp_path):
    container = crm_container("bearer")
    container["variables"] = [
        {"name": "crm_secret", "type": "env", "env": "CRM_SECRET_UNSET", "default": ""}
    ]
    with app_client(tmp_path, container) as client:
        r = client.post("/hooks/crm", content=crm_body(), headers={"Authorization": "Bearer "})
        assert r.status_code == 401
        assert "no secret configured" in r.json()["error"]


def test_validate_names_mapping_and_param_problems(tmp_path):
    container = crm_container("hmac_sha256_hex")
    params = container["clients"][0]["params"]
    params["mapping"] = {
        "value": {"path": "amount", "pefix": "x"},
        "items": {"each": "lines", "map": 3},
    }
    container["variables"].append({"name": "visitor", "type": "cookie", "cookie": "uid"})
    params["signature_header"] = "{{visitor}}"
    path = write_container(tmp_path, container)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    out = result.output
    assert 'clients[0] "crm": params.signature_header' in out and "cookie variable" in out
    broken = copy.deepcopy(container)
    broken["clients"][0]["params"]["signature_header"] = "X-Sig"
    result = CliRunner().invoke(main, ["validate", str(write_container(tmp_path, broken))])
    assert "clients[0] \"crm\": params.mapping.value: unknown key 'pefix'" in result.output
    assert 'clients[0] "crm": params.mapping.items.map: expected an object' in result.output


def test_webhook_hits_show_in_preview_with_the_secret_redacted(tmp_path):
    from test_preview import PASSWORD, hits, sign_in, start_session, wait_hits

    body = crm_body()
    options = {"preview_password": PASSWORD, "preview_store": str(tmp_path / "preview.sqlite3")}
    with app_client(tmp_path, crm_container("bearer"), **options) as client:
        sign_in(client)
        session = start_session(client)
        token = session["token"]
        bearer = {"Authorization": f"Bearer {CRM_SECRET}", "X-Tagserver-Preview": token}
        assert client.post("/hooks/crm", content=body, headers=bearer).status_code == 200
        refused = {"Authorization": "Bearer wrong", "X-Tagserver-Preview": token}
        assert client.post("/hooks/crm", content=body, headers=refused).status_code == 401
        wait_hits(client, session["id"], 2)
        listed = hits(client, session["id"])
        assert sorted(h["status"] for h in listed) == [200, 401]
        assert {h["client"] for h in listed} == {"crm"}
        ok = next(h for h in listed if h["status"] == 200)
        detail = client.get(f"/preview/api/s/{session['id']}/hits/{ok['id']}").json()
        assert detail["events"][0]["event"]["event_id"] == "deal-7"
        assert CRM_SECRET not in json.dumps(detail)
