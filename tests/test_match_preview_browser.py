"""Preview in a real headless Chromium shows, per tag, which match keys came from the event,
the identity cookie and geography with the score before and after, and warns about a reused
event id."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from support import ServerProcess, minimal_container

pytest.importorskip("playwright")
from playwright.sync_api import Browser, expect  # noqa: E402

pytestmark = pytest.mark.browser

PASSWORD = "match preview password"
CF = {"CF-IPCountry": "US", "CF-Region-Code": "CA", "CF-IPCity": "Mountain View"}


def test_preview_shows_the_gain_and_reused_ids(browser: Browser, tmp_path: Path) -> None:
    container = minimal_container(
        # the request's IP, user agent and geo headers stand for the visitor's (a proxy-like
        # caller): without this, server-to-server events get none of them
        clients=[{"name": "events_api", "type": "events_api",
                  "params": {"use_request_ip_and_user_agent": True}},
                 {"name": "collector", "type": "collector"}],
        tags=[{"name": "meta", "type": "meta_capi", "fire_on": ["all"]}],  # a dry run
    )  # fmt: skip
    env = {"TAGSERVER_PREVIEW_PASSWORD": PASSWORD,
           "TAGSERVER_PREVIEW_STORE": str(tmp_path / "preview.sqlite3")}  # fmt: skip
    with ServerProcess(tmp_path, container, env=env) as server:
        ui = browser.new_page()
        ui.goto(server.url + "/preview")
        ui.fill("#password", PASSWORD)
        ui.click("button[type=submit]")
        ui.fill("#name", "match")
        ui.click("#start-session")
        expect(ui.locator("#session-state")).to_contain_text("recording")
        token = ui.locator("#token").inner_text()

        # a visitor identified on an earlier page: the server's identity cookie
        first = httpx.post(
            server.url + "/collect",
            json={"user": {"email": "jane@example.com"}, "events": [{"name": "login"}]},
        )
        identity = first.cookies["tagserver_ident"]
        page = {"page_location": "https://www.shop.test/p", "user_agent": "Mozilla/5.0 Chrome"}
        headers = {"Authorization": "Bearer test-key", "X-Tagserver-Preview": token,
                   "Cookie": f"tagserver_ident={identity}", **CF}  # fmt: skip
        for value in (10, 99):  # the same event id for two different orders
            event = {"event_name": "purchase", "event_id": "dup-1", "value": value,
                     "currency": "EUR", **page}  # fmt: skip
            assert httpx.post(server.url + "/api/events", json=event, headers=headers).is_success

        hits = ui.locator("#hit-list li.hit")
        expect(hits).to_have_count(2, timeout=15_000)
        hits.first.locator("button.event").click()
        ui.click("#tabs button[data-tab=tags]")
        box = ui.locator("article.tag[data-tag=meta] .match")
        # IP + user agent 2.5; the cookie's email 3 and geography's ct, st, country 0.75
        expect(box.locator("h4")).to_contain_text("2.5 → 6.25 (+3.75)")
        expect(box.locator("tr.identity_cookie td")).to_have_text("em")
        expect(box.locator("tr.geography td")).to_have_text("ct, st, country")
        expect(box.locator("tr.event td")).to_contain_text("client_ip_address")

        ui.click("#tabs button[data-tab=event]")
        expect(ui.locator(".event-warnings")).to_contain_text("event_id 'dup-1' reused")
        ui.click("#tabs button[data-tab=console]")
        expect(ui.locator("#panel")).to_contain_text("reused")
        ui.close()
