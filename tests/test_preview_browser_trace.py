"""Preview in a real headless Chromium, for what a hit did besides firing tags: events refused,
deliveries dead-lettered, dry runs, the answer sent back, and hostile bidi characters.

Set PREVIEW_SCREENSHOTS=<dir> to save screenshots of the UI along the way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import ServerProcess, minimal_container
from test_preview_browser import PASSWORD, shot
from test_preview_trace import StatusVendor

pytest.importorskip("playwright")
from playwright.sync_api import Browser, Page, expect  # noqa: E402

pytestmark = pytest.mark.browser

API = {"Authorization": "Bearer test-key"}
RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: "abc‮fdp.exe" would read "abcexe.pdf"
LRI, PDI = "\u2066", "\u2069"


def container(vendor: StatusVendor) -> dict[str, Any]:
    return minimal_container(
        clients=[{"name": "collector", "type": "collector"},
                 {"name": "events_api", "type": "events_api"}],
        triggers=[{"name": "all", "event": "*"}, {"name": "purchase", "event": "purchase"}],
        tags=[
            {"name": "log_all", "type": "log", "fire_on": ["all"]},
            {"name": "crm_ok", "type": "http_request", "fire_on": ["purchase"],
             "params": {"url": vendor.base + "/ok", "body": {"e": "{{event_name}}"}}},
            {"name": "crm_refused", "type": "http_request", "fire_on": ["purchase"],
             "params": {"url": vendor.base + "/refuse", "body": {"e": "{{event_name}}"}}},
            {"name": "crm_busy", "type": "http_request", "fire_on": ["purchase"],
             "params": {"url": vendor.base + "/busy", "body": {"e": "{{event_name}}"}}},
            {"name": "meta", "type": "meta_capi", "fire_on": ["purchase"]},
        ],
    )  # fmt: skip


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with StatusVendor() as vendor:
        env = {"TAGSERVER_PREVIEW_PASSWORD": PASSWORD,
               "TAGSERVER_PREVIEW_STORE": str(tmp_path / "preview.sqlite3")}  # fmt: skip
        with ServerProcess(tmp_path, container(vendor), env=env) as running:
            yield running


def open_session(ui: Page, tagging: str) -> str:
    ui.goto(tagging + "/preview")
    ui.fill("#password", PASSWORD)
    ui.click("button[type=submit]")
    ui.fill("#name", "what went wrong")
    ui.click("#start-session")
    expect(ui.locator("#stream-state")).to_have_text("● live")
    return ui.locator("#token").inner_text()


def test_preview_shows_refusals_delivery_states_dry_runs_and_the_answer(
    browser: Browser, server: ServerProcess
) -> None:
    tagging = f"http://sgtm.shop.test:{server.port}"
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    ui = context.new_page()
    token = open_session(ui, tagging)
    hits = ui.locator("#hit-list li.hit")
    panel = ui.locator("#panel")

    # 1. two events, one refused: the list counts it, the Console says which and why
    event = {"event_name": "purchase", "event_id": "o-1", "value": 12, "currency": "EUR",
             "page_location": "https://www.shop.test/checkout/done", "action_source": "website",
             "note": f"invoice{RLO}fdp.exe", f"k{LRI}ey{PDI}": "v"}  # fmt: skip
    r = httpx.post(server.url + "/api/events",
                   json={"events": [event, {"event_name": "purchase", "value": "ten"}]},
                   headers={**API, "X-Tagserver-Preview": token,
                            "X-Store": "Zürich".encode()})  # fmt: skip
    assert r.status_code == 200 and r.json()["rejected"] == 1
    expect(hits).to_have_count(1, timeout=15_000)
    hit = hits.first
    expect(hit.locator(".rejected")).to_have_text("1 rejected event")
    expect(hit).to_have_class("hit problem")
    # the page the events came from leads; the request line is secondary
    expect(hit.locator(".hit-head .path")).to_have_text("www.shop.test/checkout/done")
    expect(hit.locator(".hit-head .path")).to_have_attribute(
        "title", "https://www.shop.test/checkout/done"
    )
    expect(hit.locator(".reqline")).to_have_text("POST /api/events")
    # deliveries arrive live, each message counted once by where it stands (plural right)
    expect(hit.locator(".hit-meta")).to_contain_text("3 deliveries:", timeout=15_000)
    expect(hit.locator(".deliv.bad")).to_have_text("1 dead-lettered", timeout=15_000)
    expect(hit.locator(".deliv.ok")).to_have_text("1 delivered")
    expect(hit.locator(".deliv.warn")).to_have_text("1 retrying")
    expect(hit.locator("button.event .dry")).to_have_text("1 dry run")

    hit.locator("button.hit-head").click()
    ui.click("#tabs button[data-tab=console]")
    expect(panel).to_contain_text("event 1 rejected: value: 'ten' is not a number")
    # destinations are named by their tags, not by their hashed keys
    expect(panel).to_contain_text("delivery dead_letter (HTTP 400) to crm_refused (http_request)")
    expect(panel).to_contain_text("delivery delivered (HTTP 200) to crm_ok (http_request)")
    assert "http_request:127.0.0.1" not in panel.inner_text()
    shot(ui, "trace-console")

    # 2. Tags: each tag's delivery state on the tag; the dry run is not "fired"
    ui.locator("#hit-list button.event").first.click()
    ui.click("#tabs button[data-tab=tags]")
    refused = ui.locator("article.tag[data-tag=crm_refused]")
    expect(refused).to_have_class("tag fired delivery-dead_letter")
    expect(refused.locator(".delivery-state")).to_contain_text("dead-lettered")
    expect(refused.locator(".delivery-state")).to_contain_text("refused by the vendor")
    expect(refused.locator(".delivery-state")).to_contain_text("unknown list id 42")
    expect(ui.locator("article.tag[data-tag=crm_ok] .delivery-state")).to_contain_text("delivered")
    busy = ui.locator("article.tag[data-tag=crm_busy]")
    expect(busy).to_have_class("tag fired delivery-retry")
    expect(busy.locator(".delivery-state")).to_contain_text("retrying")
    expect(busy.locator(".delivery-state")).to_contain_text(
        re.compile(r"attempt \d+ failed: HTTP 503")
    )
    expect(busy.locator(".delivery-state")).to_contain_text("next try in")
    meta = ui.locator("article.tag[data-tag=meta]")
    expect(meta.locator(".badge").first).to_have_text("dry run")
    expect(meta.locator(".reason")).to_have_text(
        "dry run: no pixel_id and access_token, so nothing is sent"
    )
    shot(ui, "trace-tags")

    # 3. Outgoing: the dry-run payload is there, marked DRY RUN
    ui.click("#tabs button[data-tab=outgoing]")
    dry = ui.locator("article.outgoing.dry-run")
    expect(dry.locator(".dry-badge")).to_have_text("DRY RUN")
    expect(dry).to_contain_text("meta")
    expect(dry).to_contain_text('"o-1"')  # the event id in the payload Meta would get
    expect(ui.locator("article.outgoing[data-tag=crm_refused] .delivery-state")).to_contain_text(
        "dead-lettered"
    )
    shot(ui, "trace-outgoing")

    # 4. bidi controls are shown, not obeyed, and every value is isolated
    ui.click("#tabs button[data-tab=event]")
    expect(panel).to_contain_text("invoice⟨U+202E⟩fdp.exe")
    expect(panel).to_contain_text("k⟨U+2066⟩ey⟨U+2069⟩")
    assert RLO not in panel.inner_text() and LRI not in panel.inner_text()
    value = panel.locator(".j-string", has_text="invoice")
    assert value.evaluate("e => getComputedStyle(e).unicodeBidi") == "isolate"
    shot(ui, "trace-event")

    # 5. Request: the header as sent (UTF-8), and the answer sent back
    ui.click("#tabs button[data-tab=request]")
    expect(panel).to_contain_text('"Zürich"')
    response = panel.locator("section.block", has_text="Response").last
    expect(response).to_contain_text("200")
    expect(response).to_contain_text("application/json")

    # 6. a collector hit: its answer lists the cookies it set, by name only
    r = httpx.post(f"{server.url}/collect?tagserver_preview={token}",
                   content=json.dumps({"events": [{"name": "page_view", "page": {
                       "page_location": "https://www.shop.test/?fbclid=AbC"}}]}),
                   headers={"Host": f"sgtm.shop.test:{server.port}"})  # fmt: skip
    assert r.status_code == 200
    fbp = next(v for v in r.headers.get_list("set-cookie") if v.startswith("_fbp="))
    fbp = fbp.split(";", 1)[0].split("=", 1)[1]
    expect(hits).to_have_count(2, timeout=15_000)
    hits.first.locator("button.hit-head").click()
    cookies = panel.locator("table.cookies-set")
    expect(cookies.locator("th")).to_have_text(["_fbp", "_fbc", "tagserver_cid"])
    expect(cookies).to_contain_text("HttpOnly")
    assert fbp not in panel.inner_text()
    shot(ui, "trace-request")
    context.close()
