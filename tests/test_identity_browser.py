"""The identity cookie in a real headless Chromium: a shop on www.shop.test, tagserver on
sgtm.shop.test (both 127.0.0.1), Meta's Graph API stood in for by the fake on loopback.

What is asserted is what Meta receives for a page view after a purchase on another page, and
what the browser keeps (an HttpOnly cookie, gone after a denial or a logout)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.graph import FakeGraph
from support import PageServer, ServerProcess, minimal_container, wait_until

pytest.importorskip("playwright")
from playwright.sync_api import Browser, BrowserContext, Page  # noqa: E402

pytestmark = pytest.mark.browser

PIXEL = "1234567890"
TOKEN = "EAAB-identity-test-token-0123456789"
COOKIE = "tagserver_ident"
EMAIL_HASH = hashlib.sha256(b"jane.doe@example.com").hexdigest()

SHOP_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Shop</title>
<script>
  window.tagserver = window.tagserver || function () { (tagserver.q = tagserver.q || []).push(arguments); };
  tagserver('config', {send_page_view: true});
</script>
<script async src="http://sgtm.shop.test:%(port)d/collector.js"></script>
</head><body><h1>Shop</h1>
<script>
  function buy(id) {
    tagserver('user', {email: ' Jane.Doe@Example.com '});
    return tagserver('event', 'purchase', {value: 9.5, currency: 'EUR'}, {event_id: id});
  }
</script>
</body></html>
"""


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[ServerProcess, PageServer, FakeGraph]]:
    container = minimal_container(
        clients=[{"name": "collector", "type": "collector"}],
        tags=[{"name": "meta", "type": "meta_capi", "fire_on": ["all"],
               "params": {"pixel_id": PIXEL, "access_token": TOKEN}}],
    )  # fmt: skip
    with FakeGraph(token=TOKEN, pixel_ids={PIXEL}) as graph:
        env = {"TAGSERVER_META_GRAPH_URL": graph.url, "TAGSERVER_RETRY_BASE_SECONDS": "0.1"}
        server = ServerProcess(tmp_path, container, env=env)
        with server, PageServer(SHOP_PAGE % {"port": server.port}) as shop:
            yield server, shop, graph
        logs = server.logs()
        assert "jane.doe" not in logs.lower() and EMAIL_HASH not in logs
        assert " 500 " not in logs and "Traceback" not in logs


def views_at(graph: FakeGraph, path: str) -> list[dict[str, Any]]:
    return [
        e
        for e in graph.accepted_events()
        if e["event_name"] == "PageView" and e.get("event_source_url", "").endswith(path)
    ]


def view_at(graph: FakeGraph, path: str) -> dict[str, Any]:
    return wait_until(lambda: views_at(graph, path), 20)[-1]  # type: ignore[no-any-return]


def identity(context: BrowserContext) -> dict[str, Any] | None:
    return next((c for c in context.cookies() if c["name"] == COOKIE), None)


def purchase(page: Page, graph: FakeGraph, event_id: str) -> dict[str, Any]:
    page.evaluate(f"buy('{event_id}')")
    found = wait_until(
        lambda: [e for e in graph.accepted_events() if e["event_id"] == event_id], 20
    )
    return found[0]  # type: ignore[no-any-return]


def test_a_purchase_email_reaches_meta_with_a_later_page_view(
    browser: Browser, setup: tuple[ServerProcess, PageServer, FakeGraph]
) -> None:
    _, shop, graph = setup
    site = f"http://www.shop.test:{shop.port}"
    context = browser.new_context()
    page = context.new_page()

    page.goto(f"{site}/product")
    assert "em" not in view_at(graph, "/product")["user_data"]  # anonymous so far
    bought = purchase(page, graph, "order-1")
    assert bought["user_data"]["em"] == [EMAIL_HASH]
    kept = wait_until(lambda: identity(context), 10)
    assert kept["httpOnly"] and kept["domain"] in (".shop.test", "shop.test")
    assert kept["sameSite"] == "Lax" and "jane" not in kept["value"].lower()
    assert page.evaluate("document.cookie").find(COOKIE) < 0  # not readable by the page

    # another page: no `user` call on it, yet Meta's page view carries the hashed email
    page.goto(f"{site}/blog/post")
    assert view_at(graph, "/blog/post")["user_data"]["em"] == [EMAIL_HASH]

    # logout removes the cookie; the next page view is anonymous again
    page.evaluate("tagserver('user', null)")
    wait_until(lambda: identity(context) is None, 10)
    page.goto(f"{site}/after-logout")
    assert "em" not in view_at(graph, "/after-logout")["user_data"]
    context.close()


def test_consent_denied_stores_nothing_and_removes_an_existing_cookie(
    browser: Browser, setup: tuple[ServerProcess, PageServer, FakeGraph]
) -> None:
    _, shop, graph = setup
    site = f"http://www.shop.test:{shop.port}"
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{site}/start")
    view_at(graph, "/start")
    purchase(page, graph, "order-2")
    wait_until(lambda: identity(context), 10)

    page.evaluate("tagserver('consent', 'update', {ad_user_data: 'denied'})")
    purchase(page, graph, "order-3")  # identifies again, but consent is now denied
    wait_until(lambda: identity(context) is None, 10)
    page.wait_for_timeout(300)
    assert identity(context) is None  # nothing stored while denied

    # a page that starts denied stores nothing either
    denied = context.new_page()
    denied.add_init_script(
        "window.tagserver = function () { (tagserver.q = tagserver.q || []).push(arguments); };"
        "tagserver('consent', 'default', {ad_storage: 'denied', ad_user_data: 'denied'});"
    )
    denied.goto(f"{site}/denied")
    purchase(denied, graph, "order-4")
    denied.wait_for_timeout(300)
    assert identity(context) is None
    context.close()


def test_a_tampered_or_foreign_cookie_is_ignored(
    browser: Browser, setup: tuple[ServerProcess, PageServer, FakeGraph]
) -> None:
    _, shop, graph = setup
    site = f"http://www.shop.test:{shop.port}"
    context = browser.new_context()
    forged = "AQ" + "x" * 90  # looks like ours, is not
    context.add_cookies(
        [{"name": COOKIE, "value": forged, "domain": ".shop.test", "path": "/", "httpOnly": True}]
    )
    page = context.new_page()
    with page.expect_response(lambda r: r.url.split("?")[0].endswith("/collect")) as answer:
        page.goto(f"{site}/forged")
    assert answer.value.status == 200
    assert "em" not in view_at(graph, "/forged")["user_data"]
    wait_until(lambda: identity(context) is None, 10)  # removed: it could not be read
    context.close()
