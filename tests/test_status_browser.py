"""The status page in a real headless Chromium, as an operator meets a silent token expiry.

Meta (a fake Graph API on loopback) refuses the access token: every event is dead-lettered.
The operator signs in, opens /preview/status, sees the destination failing with Meta's code
and message and the dead letters with their reasons; fixes the token in container.json (the
server reloads it) and retries from the page; the events reach Meta with the new token.
Neither the token nor anything personal ever shows; a cross-site POST cannot retry.

Set PREVIEW_SCREENSHOTS=<dir> to save screenshots.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes.graph import FakeGraph
from support import PageServer, ServerProcess, minimal_container, wait_until

pytest.importorskip("playwright")
from playwright.sync_api import Browser, Page, expect  # noqa: E402

pytestmark = pytest.mark.browser

PASSWORD = "status page password"
PIXEL = "1122334455"
OLD = "EAAoldEXPIREDtoken0000"
NEW = "EAAnewFRESHtoken1111"
EMAIL = "jane.doe@example.com"
IP = "203.0.113.7"
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
AUTH = {"Authorization": "Bearer test-key"}


def container(token: str) -> dict[str, Any]:
    return minimal_container(
        tags=[{"name": "meta_purchases", "type": "meta_capi", "fire_on": ["all"],
               "params": {"pixel_id": PIXEL, "access_token": token}}],
    )  # fmt: skip


def purchase(event_id: str) -> dict[str, Any]:
    return {
        "event_name": "purchase", "event_id": event_id, "user_agent": UA, "ip_override": IP,
        "page_location": "https://www.shop.test/thanks", "value": 42, "currency": "EUR",
        "user_data": {"email_address": EMAIL, "phone_number": "+49 30 1234567"},
    }  # fmt: skip


def shot(page: Page, name: str) -> None:
    directory = os.environ.get("PREVIEW_SCREENSHOTS")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(directory) / f"{name}.png"), full_page=True)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[ServerProcess, FakeGraph]]:
    with FakeGraph(token=NEW, pixel_ids={PIXEL}) as graph:
        env = {
            "TAGSERVER_PREVIEW_PASSWORD": PASSWORD,
            "TAGSERVER_PREVIEW_STORE": str(tmp_path / "preview.sqlite3"),
            "TAGSERVER_META_GRAPH_URL": graph.url,
            "TAGSERVER_RETRY_BASE_SECONDS": "0.05",
            "TAGSERVER_RETRY_CAP_SECONDS": "0.2",
        }
        with ServerProcess(tmp_path, container(OLD), env=env) as server:
            yield server, graph


def dead_letters(server: ServerProcess) -> int:
    text = httpx.get(server.url + "/metrics", timeout=5).text
    return int(sum(float(v) for v in re.findall(r"^tagserver_outbox_dead_letters\{[^}]*\} (\S+)$", text, re.M)))  # fmt: skip


def assert_nothing_secret_or_personal(html: str) -> None:
    email_hash = hashlib.sha256(EMAIL.encode()).hexdigest()
    for value in (OLD, NEW, EMAIL, email_hash, IP, UA, "1234567", PASSWORD):
        assert value not in html, f"{value!r} shown on the status page"


def test_status_page_shows_a_refused_token_and_retries_after_the_fix(
    browser: Browser, stack: tuple[ServerProcess, FakeGraph], tmp_path: Path
) -> None:
    server, graph = stack
    base = f"http://sgtm.shop.test:{server.port}"
    for event_id in ("order-1", "order-2"):
        r = httpx.post(server.url + "/api/events", json=purchase(event_id), headers=AUTH)
        assert r.status_code == 200, r.text
    wait_until(lambda: dead_letters(server) == 2, timeout=15)

    # without sign-in: the page sends to the sign-in, its data and actions answer 401
    for path in ("/preview/api/status", "/preview/status/live"):
        assert httpx.get(server.url + path).status_code == 401
    assert httpx.post(server.url + "/preview/status/retry", data={"all": "1"}).status_code == 401
    assert httpx.get(server.url + "/preview/status").status_code == 303

    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.goto(base + "/preview/status")
    expect(page).to_have_url(f"{base}/preview/login?next=/preview/status")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(base + "/preview/status")
    page.goto(base + "/preview")  # preview links to it
    page.click("#status-link")
    expect(page).to_have_url(base + "/preview/status")

    # the destination, named by its tag, fails with Meta's code and message
    card = page.locator("section.destination", has_text="meta_purchases (meta_capi)")
    expect(card.locator(".dest-state")).to_have_text("failing")
    expect(card.locator(".last-error")).to_contain_text("code 190")
    expect(card.locator(".last-error")).to_contain_text("Invalid OAuth access token")
    expect(card.locator(".dead-count")).to_have_text("2")
    expect(card).to_contain_text("auth 2")
    expect(page.locator("#health-state")).to_have_text("healthy")
    expect(page.locator("#container-status")).to_contain_text("test")
    expect(page.locator("#tags tr[data-tag=meta_purchases] td.fired")).to_have_text("2")
    rows = page.locator("#dead-letter-list tr.dead-letter")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("meta_purchases")
    expect(rows.first).to_contain_text("Invalid OAuth access token")
    expect(rows.first).to_contain_text("refused by the vendor")
    expect(page.locator("#match-quality")).to_contain_text("event_name=Purchase")
    assert_nothing_secret_or_personal(page.content())
    shot(page, "status-token-refused")

    # the live update: a third event shows up without reloading the page
    httpx.post(server.url + "/api/events", json=purchase("order-3"), headers=AUTH)
    expect(card.locator(".dead-count")).to_have_text("3", timeout=15_000)
    expect(page.locator("#live-state")).to_have_text("●")

    # a cross-site page cannot retry: the browser's own POST from another site is refused
    form = (
        f'<form id="f" method="post" action="{base}/preview/status/retry">'
        '<input name="all" value="1"></form><script>document.getElementById("f").submit()</script>'
    )
    with PageServer(f"<!doctype html><html><body>{form}</body></html>") as evil:
        attack = context.new_page()
        attack.goto(f"http://127.0.0.1:{evil.port}/")  # another site than sgtm.shop.test
        expect(attack.locator("body")).to_contain_text(
            re.compile("sign in to preview first|cross-site request refused"), timeout=10_000
        )
        attack.close()
    # with the sign-in cookie (as an older browser might send it), the origin check refuses
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in context.cookies(base + "/preview"))
    forged = httpx.post(
        server.url + "/preview/status/retry", data={"all": "1"},
        headers={"Cookie": cookie, "Sec-Fetch-Site": "cross-site", "Origin": "http://evil.test"},
    )  # fmt: skip
    assert forged.status_code == 403 and "cross-site" in forged.text
    assert dead_letters(server) == 3  # nothing was retried

    # the operator fixes the token; the server reloads the container …
    old_hash = httpx.get(server.url + "/healthz").json()["container"]["hash"]
    server.container_path.write_text(json.dumps(container(NEW)))
    wait_until(
        lambda: httpx.get(server.url + "/healthz").json()["container"]["hash"] != old_hash, 10
    )
    # … and retries from the page: delivered, with the new token
    page.reload()
    page.click("#retry-all")
    expect(page.locator("#retry-result")).to_contain_text("Requeued 3 dead letters")
    wait_until(lambda: sum(len(r.events) for r in list(graph.requests) if r.accepted) == 3, 15)
    assert {r.query.get("access_token") for r in list(graph.requests) if r.accepted} == {NEW}
    received = sorted(e["event_id"] for r in graph.requests if r.accepted for e in r.events)
    assert received == ["order-1", "order-2", "order-3"]
    expect(page.locator("#live")).to_contain_text("No dead letters.", timeout=15_000)
    healthy = page.locator(
        "section.destination", has=page.locator(".dest-state", has_text="healthy")
    )
    expect(healthy.first).to_contain_text("meta_purchases (meta_capi)")
    # the page refreshes its figures every 5 s: the delivery may land just after a refresh
    expect(healthy.first.locator("table.figures tr").first).to_contain_text("3", timeout=15_000)
    # the old destination (the expired token's) is no longer used by any tag
    expect(page.locator("section.destination .dest-state")).to_have_text(["healthy", "unused"])
    assert_nothing_secret_or_personal(page.content())
    api = page.evaluate("fetch('/preview/api/status').then(r => r.text())")
    assert json.loads(api)["dead_letters"] == []
    assert_nothing_secret_or_personal(api)
    shot(page, "status-after-retry")
    context.close()
