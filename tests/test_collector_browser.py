"""collector.js in a real headless Chromium: a shop on www.shop.test, tagserver on sgtm.shop.test.

Both names resolve to 127.0.0.1 through Chromium's host-resolver rules; the shop page is served
by a tiny HTTP server in the test, tagserver by a real `tagserver serve` subprocess. What the
server received is read from the log tag's lines in the server's log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import PageServer, ServerProcess, minimal_container, wait_until

pytest.importorskip("playwright")
from playwright.sync_api import Browser, Page  # noqa: E402

pytestmark = pytest.mark.browser

SHOP_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Test shop</title>
<script>
  window.tagserver = window.tagserver || function () { (tagserver.q = tagserver.q || []).push(arguments); };
  tagserver('config', {send_page_view: true, spa: true});
  tagserver('event', 'early_event', {value: 1}, {event_id: 'early-1'});
</script>
<script async src="http://sgtm.shop.test:%(port)d/collector.js"></script>
</head><body><h1>Shop</h1>
<script>
  window.results = [];
  function buy() {
    return tagserver('event', 'purchase', {value: 9.5, currency: 'EUR'}, {callback: function (id, row) {
      window.results.push({id: id, row: row});
    }});
  }
</script>
</body></html>
"""


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[ServerProcess, PageServer]]:
    server = ServerProcess(
        tmp_path, minimal_container(clients=[{"name": "collector", "type": "collector"}])
    )
    with server, PageServer(SHOP_PAGE % {"port": server.port}) as shop:
        yield server, shop


def received(server: ServerProcess) -> list[dict[str, Any]]:
    """The events the server ran, as the log tag wrote them."""
    out = []
    for line in server.logs().splitlines():
        if "tagserver.tag.log: " in line:
            out.append(json.loads(line.split("tagserver.tag.log: ", 1)[1])["event"])
    return out


def wait_for_event(server: ServerProcess, predicate: Any, count: int = 1) -> list[dict[str, Any]]:
    return wait_until(
        lambda: (m := [e for e in received(server) if predicate(e)]) and len(m) >= count and m, 15
    )


def is_view(event: dict[str, Any]) -> bool:
    return event["event_name"] == "page_view"


def cookie(page: Page, name: str) -> str | None:
    for part in page.evaluate("document.cookie").split("; "):
        key, _, value = part.partition("=")
        if key == name:
            return value
    return None


def test_collector_in_a_real_browser(
    browser: Browser, setup: tuple[ServerProcess, PageServer]
) -> None:
    server, shop = setup
    site = f"http://www.shop.test:{shop.port}"
    context = browser.new_context()
    page = context.new_page()

    # 1. a page view with the right page data; the call made before the script loaded arrives
    url = f"{site}/product/mug?color=blue"
    page.goto(url)
    [view] = wait_for_event(server, lambda e: e["event_name"] == "page_view")
    assert view["page_location"] == url and view["page_title"] == "Test shop"
    assert view["page_hostname"] == "www.shop.test" and view["page_path"] == "/product/mug"
    assert "page_referrer" not in view or view["page_referrer"] == ""
    assert re.fullmatch(r"\d+x\d+", view["screen_resolution"]) and view["language"]
    [early] = wait_for_event(server, lambda e: e["event_name"] == "early_event")
    assert early["event_id"] == "early-1" and early["value"] == 1

    # 2. _fbp is a first-party cookie of www.shop.test (Domain=shop.test), readable by the page
    fbp = wait_until(lambda: cookie(page, "_fbp"), 10)
    assert re.fullmatch(r"fb\.1\.\d{13}\.\d+", fbp)
    assert view["x-fb-ck-fbp"] == fbp
    assert cookie(page, "tagserver_cid") is None  # HttpOnly
    cid = next(c for c in context.cookies() if c["name"] == "tagserver_cid")
    assert cid["domain"] in (".shop.test", "shop.test") and cid["httpOnly"]
    assert view["client_id"] == cid["value"]

    # 3. the event id the page gets back is the one the server used
    returned = page.evaluate("buy()")
    wait_until(lambda: page.evaluate("window.results.length"), 10)
    result = page.evaluate("window.results[0]")
    assert result["id"] == returned and result["row"]["event_id"] == returned
    [purchase] = wait_for_event(server, lambda e: e["event_name"] == "purchase")
    assert purchase["event_id"] == returned and purchase["x-fb-ck-fbp"] == fbp

    # 4. SPA navigation sends a page_view with the previous URL as referrer
    page.evaluate("history.pushState({}, '', '/checkout')")
    [spa] = wait_for_event(server, lambda e: e.get("page_path") == "/checkout")
    assert spa["event_name"] == "page_view" and spa["page_referrer"] == url

    # 5. ?fbclid=AbC123 yields _fbc ending in .AbC123; a second visit keeps the very same _fbc
    page.goto(f"{site}/?fbclid=AbC123")
    wait_for_event(server, lambda e: is_view(e) and "fbclid=AbC123" in e["page_location"])
    fbc = wait_until(lambda: cookie(page, "_fbc"), 10)
    assert re.fullmatch(r"fb\.1\.\d{13}\.AbC123", fbc)
    page.wait_for_timeout(20)  # the second visit must come at a later millisecond
    page.goto(f"{site}/landing?fbclid=AbC123")
    [_, second] = wait_for_event(
        server, lambda e: is_view(e) and "fbclid=AbC123" in e["page_location"], 2
    )
    assert second["x-fb-ck-fbc"] == fbc and cookie(page, "_fbc") == fbc
    assert cookie(page, "_fbp") == fbp

    # 6. a preview link is forwarded on the hit's URL and kept out of page_location
    with page.expect_request(lambda r: r.url.split("?")[0].endswith("/collect")) as hit:
        page.goto(f"{site}/?tagserver_preview=tok123")
    assert "tagserver_preview=tok123" in hit.value.url
    wait_for_event(server, lambda e: is_view(e) and e["page_location"] == site + "/")
    assert all("tok123" not in json.dumps(e) for e in received(server))
    context.close()


def test_demo_page_shows_the_event_ids_the_server_used(
    browser: Browser, setup: tuple[ServerProcess, PageServer]
) -> None:
    server, _ = setup
    page = browser.new_page()
    page.goto(server.url + "/demo")
    wait_for_event(server, is_view)
    page.click("#purchase")
    row = page.locator("tr.event", has_text="accepted")
    row.wait_for(timeout=10_000)
    name, event_id, result = row.locator("td").all_inner_texts()
    assert (name, result) == ("purchase", "accepted")
    [purchase] = wait_for_event(server, lambda e: e["event_name"] == "purchase")
    assert purchase["event_id"] == event_id and purchase["demo"] is True
    assert set(purchase["user_data"]) == {"email_address", "phone_number", "address"}
    assert purchase["user_id"] == "demo-customer-1"
    page.close()


DOCS = Path(__file__).resolve().parent.parent / "docs" / "collector.md"
EARLY_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Early shop</title>
<script>
  window.fbqCalls = [];
  window.fbq = function () { fbqCalls.push([].slice.call(arguments)); };  // the Pixel, faked
</script>
%(snippet)s
<script>
  // the documented recipe, run before collector.js can have loaded
  window.early = tagserver('event', 'purchase', {value: 5, currency: 'EUR'}, {
    callback: function (id, row) { window.earlyAnswer = {id: id, row: row}; }});
  fbq('track', 'Purchase', {value: 5, currency: 'EUR'}, {eventID: window.early});
  window.loadedAtCall = !!(window.tagserver && window.tagserver.loaded);
  window.own = tagserver('event', 'lead', {}, {event_id: 'lead-7'});
</script>
</head><body><h1>Shop</h1></body></html>
"""


def documented_snippet(collector_url: str) -> str:
    """The snippet exactly as docs/collector.md shows it, pointed at the test server."""
    block = re.search(r"```html\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert block, "docs/collector.md has no html snippet"
    return block.group(1).replace("https://sgtm.shop.example/collector.js", collector_url)


def test_the_documented_snippet_returns_the_event_id_before_collector_js_loads(
    browser: Browser, tmp_path: Path
) -> None:
    server = ServerProcess(
        tmp_path, minimal_container(clients=[{"name": "collector", "type": "collector"}])
    )
    with server:
        snippet = documented_snippet(f"http://sgtm.shop.test:{server.port}/collector.js")
        with PageServer(EARLY_PAGE % {"snippet": snippet}) as shop:
            page = browser.new_page()
            page.goto(f"http://www.shop.test:{shop.port}/checkout")
            early = page.evaluate("window.early")
            assert page.evaluate("window.loadedAtCall") is False  # the stub answered
            assert isinstance(early, str) and re.fullmatch(r"\d+(-\d+){3}", early), early
            assert page.evaluate("window.fbqCalls[0][3]") == {"eventID": early}
            assert page.evaluate("window.own") == "lead-7"
            # the loaded collector sends the queued event with the id the stub made
            [purchase] = wait_for_event(server, lambda e: e["event_name"] == "purchase")
            assert purchase["event_id"] == early
            [lead] = wait_for_event(server, lambda e: e["event_name"] == "lead")
            assert lead["event_id"] == "lead-7"
            answer = wait_until(lambda: page.evaluate("window.earlyAnswer"), 10)
            assert answer["id"] == early and answer["row"]["event_id"] == early
            # once loaded, a call returns the id as before
            later = page.evaluate("tagserver('event', 'view_item')")
            assert later and later != early
            page.close()
