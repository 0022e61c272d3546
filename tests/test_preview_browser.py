"""Preview in a real headless Chromium: sign in, start a session, open a shop page through the
preview link, and watch its hits arrive live with tags, reasons and the vendor's answer.

The shop runs on www.shop.test (a tiny HTTP server in the test), tagserver on sgtm.shop.test
(a real `tagserver serve`), the vendor on loopback (a real HTTP server). Both names resolve to
127.0.0.1 through Chromium's host-resolver rules.

Set PREVIEW_SCREENSHOTS=<dir> to save screenshots of the UI along the way.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import PageServer, ServerProcess, minimal_container, wait_until
from test_preview import FakeVendor

pytest.importorskip("playwright")
from playwright.sync_api import Browser, Page, expect  # noqa: E402

pytestmark = pytest.mark.browser

PASSWORD = "browser test password"
XSS_TITLE = "<img src=x onerror=\"window.__xss='title';alert('title')\"> Mug & Co"
SHOP_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>%(title)s</title>
<script>
  window.tagserver = window.tagserver || function () { (tagserver.q = tagserver.q || []).push(arguments); };
  tagserver('config', {send_page_view: true});
</script>
<script async src="http://sgtm.shop.test:%(port)d/collector.js"></script>
</head><body><h1>Shop</h1>
<script>
  function buy(value) {
    return tagserver('event', 'purchase', {
      value: value, currency: 'EUR', transaction_id: 'T-1001',
      coupon: '<script>window.__xss="param";alert("param")<\\/script>',
      note: '<img src=x onerror="window.__xss=\\'note\\';alert(1)">',
      items: [{item_id: 'mug', item_name: '<b onmouseover=alert(1)>Mug</b>', price: value}]
    });
  }
</script>
</body></html>
"""


def container(vendor_url: str) -> dict[str, Any]:
    return minimal_container(
        clients=[{"name": "collector", "type": "collector"},
                 {"name": "events_api", "type": "events_api"}],
        triggers=[
            {"name": "all", "event": "*"},
            {"name": "purchase", "event": "purchase"},
            {"name": "big_purchase", "event": "purchase",
             "conditions": [{"variable": "value", "operator": "greater_than", "value": 100}]},
        ],
        tags=[
            {"name": "log_all", "type": "log", "fire_on": ["all"]},
            {"name": "crm_webhook", "type": "http_request", "fire_on": ["purchase"],
             "params": {"url": vendor_url, "headers": {"X-Api-Key": "vendor-key-31337"},
                        "body": {"event": "{{event_name}}", "order": "{{transaction_id}}",
                                 "title": "{{page_title}}"}}},
            {"name": "big_spender", "type": "log", "fire_on": ["big_purchase"]},
        ],
    )  # fmt: skip


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[ServerProcess, PageServer, FakeVendor]]:
    with FakeVendor() as vendor:
        env = {"TAGSERVER_PREVIEW_PASSWORD": PASSWORD,
               "TAGSERVER_PREVIEW_STORE": str(tmp_path / "preview.sqlite3")}  # fmt: skip
        server = ServerProcess(tmp_path, container(vendor.url), env=env)
        with (
            server,
            PageServer(
                SHOP_PAGE % {"port": server.port, "title": html.escape(XSS_TITLE, quote=False)}
            ) as shop,
        ):
            yield server, shop, vendor


def shot(page: Page, name: str) -> None:
    directory = os.environ.get("PREVIEW_SCREENSHOTS")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(directory) / f"{name}.png"))


def watch_for_scripts(page: Page, dialogs: list[str]) -> None:
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))


def test_preview_in_a_real_browser(
    browser: Browser, stack: tuple[ServerProcess, PageServer, FakeVendor]
) -> None:
    server, shop, vendor = stack
    tagging = f"http://sgtm.shop.test:{server.port}"
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    dialogs: list[str] = []
    ui = context.new_page()
    watch_for_scripts(ui, dialogs)

    # 1. sign in (a wrong password first), start a session
    ui.goto(tagging + "/preview")
    expect(ui).to_have_url(f"{tagging}/preview/login?next=/preview")
    shot(ui, "preview-login")
    ui.fill("#password", "not it")
    ui.click("button[type=submit]")
    expect(ui.locator("#login-message")).to_have_text("Wrong password.")
    ui.fill("#password", PASSWORD)
    ui.click("button[type=submit]")
    expect(ui).to_have_url(tagging + "/preview")
    ui.fill("#name", "checkout test")
    ui.click("#start-session")
    expect(ui.locator("#session-name")).to_have_text("checkout test")
    expect(ui.locator("#hits-empty")).to_contain_text("No hits yet")
    expect(ui.locator("#connect")).to_be_visible()  # shown while there are no hits
    expect(ui.locator("#session-state")).to_contain_text("recording")
    expect(ui.locator("#stream-state")).to_have_text("● live")
    shot(ui, "preview-empty-session")

    # 2. the operator types the shop's URL and opens it with the preview link
    ui.fill("#site-url", f"http://www.shop.test:{shop.port}/product/mug")
    link = ui.locator("#site-link").inner_text()
    assert "tagserver_preview=tsp_" in link
    shop_page = context.new_page()
    watch_for_scripts(shop_page, dialogs)
    shop_page.goto(link)
    shop_page.wait_for_function("window.tagserver && window.tagserver.loaded")
    shop_page.evaluate("buy(20)")

    # 3. both hits appear in the list without reloading the preview page
    hits = ui.locator("#hit-list li.hit")
    expect(hits).to_have_count(2, timeout=15_000)
    expect(ui.locator("#hit-list button.event .ename")).to_have_text(["purchase", "page_view"])
    expect(ui.locator("#hits-empty")).to_be_hidden()
    expect(ui.locator("#connect")).to_be_hidden()  # it made room once hits came in
    expect(ui.locator("#hit-list li.hit").first).to_contain_text("collector")

    # 4. Tags: a fired tag, and a tag not fired with the condition and the values compared
    ui.locator("#hit-list button.event", has_text="purchase").click()
    ui.click("#tabs button[data-tab=tags]")
    fired = ui.locator("article.tag.fired[data-tag=crm_webhook]")
    expect(fired).to_contain_text("fired by trigger 'purchase'")
    not_fired = ui.locator("article.tag.not_fired[data-tag=big_spender]")
    expect(not_fired).to_contain_text("not fired")
    expect(not_fired.locator(".reason")).to_contain_text("value = 20")
    row = not_fired.locator("table.conditions tr.fail")
    expect(row).to_contain_text("greater than")
    expect(row.locator("td").nth(2)).to_have_text("100")
    expect(row.locator("td").nth(3)).to_have_text("20")
    expect(row).to_contain_text("✗ failed")
    shot(ui, "preview-tags")

    # 5. Outgoing: the message the tag built and the vendor's answer (arrives live)
    ui.click("#tabs button[data-tab=outgoing]")
    outgoing = ui.locator("article.outgoing")
    expect(outgoing).to_contain_text("crm_webhook")
    delivery = outgoing.locator(".delivery.good")
    expect(delivery).to_contain_text("HTTP 200", timeout=15_000)
    expect(delivery).to_contain_text('"thanks"')
    expect(delivery).to_contain_text("delivered")
    assert vendor.received and vendor.received[0]["body"]["order"] == "T-1001"
    assert "vendor-key-31337" not in ui.content()  # the tag's secret header is not in the page
    shot(ui, "preview-outgoing")

    # 6. hostile page title and parameters show as text and run nothing
    ui.click("#tabs button[data-tab=event]")
    panel = ui.locator("#panel")
    expect(panel).to_contain_text(XSS_TITLE)
    expect(panel).to_contain_text('<script>window.__xss="param";alert("param")</script>')
    expect(panel).to_contain_text("<b onmouseover=alert(1)>Mug</b>")
    assert panel.locator("img, script, b").count() == 0  # nothing became markup
    ui.locator("#panel summary", has_text="item_id").click()  # expand the tree by hand
    ui.locator("#panel .j-string", has_text="onmouseover").first.hover()
    shot(ui, "preview-event-data")
    ui.click("#tabs button[data-tab=request]")
    expect(panel).to_contain_text("tagserver_preview=[redacted]")
    ui.click("#tabs button[data-tab=variables]")
    expect(panel).to_contain_text("page_title")
    ui.click("#tabs button[data-tab=console]")
    expect(panel).to_contain_text("delivery delivered (HTTP 200)")

    # 7. a curl-style request with the header shows up too, live
    token = ui.locator("#token").inner_text()
    r = httpx.post(server.url + "/api/events",
                   json={"event_name": "offline_purchase", "value": 250, "page_title": XSS_TITLE},
                   headers={"Authorization": "Bearer test-key", "X-Tagserver-Preview": token})  # fmt: skip
    assert r.status_code == 200
    expect(hits).to_have_count(3, timeout=10_000)
    newest = hits.first
    expect(newest).to_contain_text("/api/events")
    expect(newest).to_contain_text("events_api")
    expect(newest.locator(".ename")).to_have_text("offline_purchase")

    # a refused request is recorded too, highlighted, with the reason the sender got
    r = httpx.post(server.url + "/api/events", json={"event_name": "x"},
                   headers={"Authorization": "Bearer wrong", "X-Tagserver-Preview": token})  # fmt: skip
    assert r.status_code == 401
    expect(hits).to_have_count(4, timeout=10_000)
    expect(hits.first).to_have_class("hit problem")
    expect(hits.first.locator(".hit-error")).to_contain_text("missing or wrong API key")

    # 8. "Mark this browser": a new tab of the shop, without the link, is previewed by cookie
    ui.click("#toggle-connect")
    ui.click("#mark")
    expect(ui.locator("#mark")).to_have_text("Unmark this browser")
    plain = context.new_page()
    watch_for_scripts(plain, dialogs)
    plain.goto(f"http://www.shop.test:{shop.port}/cart")
    expect(hits).to_have_count(5, timeout=15_000)
    expect(hits.first).to_contain_text("page_view")
    ui.click("#toggle-connect")
    expect(ui.locator("#connect")).to_be_hidden()
    ui.locator("#hit-list button.event", has_text="purchase").last.click()
    ui.click("#tabs button[data-tab=tags]")
    expect(ui.locator("article.tag.not_fired[data-tag=big_spender]")).to_be_visible()
    shot(ui, "preview-hits")
    ui.click("#tabs button[data-tab=request]")
    ui.locator("#hit-list li.hit").nth(2).locator("button.hit-head").click()
    expect(panel).to_contain_text("/api/events")
    shot(ui, "preview-request")

    # 9. renewing keeps the page working and gives a fresh token
    ui.click("#renew")
    expect(ui.locator("#token")).not_to_have_text(token)
    expect(ui.locator("#session-state")).to_contain_text("recording")

    ui.click("#tabs button[data-tab=console]")
    ui.locator("#hit-list button.event", has_text="purchase").last.click()
    expect(panel).to_contain_text("delivery delivered (HTTP 200)")
    shot(ui, "preview-console")
    ui.click("a:has-text('All sessions')")
    expect(ui.locator("ul.sessions li")).to_contain_text(["checkout test"])
    expect(ui.locator("ul.sessions li .badge")).to_contain_text(["live"])
    shot(ui, "preview-sessions")

    # nothing ran: no flag set on any page, no dialog opened
    for page in (ui, shop_page, plain):
        assert page.evaluate("window.__xss") is None
    assert dialogs == []
    context.close()


def test_an_expired_sign_in_sends_the_browser_back_to_the_login_page(
    browser: Browser, stack: tuple[ServerProcess, PageServer, FakeVendor]
) -> None:
    server, _, _ = stack
    tagging = f"http://sgtm.shop.test:{server.port}"
    context = browser.new_context()
    page = context.new_page()
    page.goto(tagging + "/preview/s/doesnotexist")
    expect(page).to_have_url(f"{tagging}/preview/login?next=/preview/s/doesnotexist")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("No such preview session")
    wait_until(lambda: any(c["name"] == "tagserver_preview_auth" for c in context.cookies()))
    [cookie] = [c for c in context.cookies() if c["name"] == "tagserver_preview_auth"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/preview"
    context.clear_cookies()
    page.goto(tagging + "/preview")
    expect(page).to_have_url(f"{tagging}/preview/login?next=/preview")
    context.close()
