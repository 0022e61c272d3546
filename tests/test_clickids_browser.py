"""Click-id cookies in a real headless Chromium: a shop on www.shop.test, tagserver on
sgtm.shop.test (both 127.0.0.1 through Chromium's host-resolver rules).

A landing with ?ttclid=…&epik=…&ScCid=… leaves `ttclid`, `_epik` and `_scclid` as first-party
cookies of shop.test that the page can read; a later visit keeps them and does not re-set them
(their lifetime counts from the click); with ad_storage denied none is set.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import PageServer, ServerProcess, minimal_container, wait_until

pytest.importorskip("playwright")
from playwright.sync_api import Browser, Page  # noqa: E402

pytestmark = pytest.mark.browser

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Shop</title>
<script>
  window.tagserver = window.tagserver || function () { (tagserver.q = tagserver.q || []).push(arguments); };
  if (location.hash == '#denied') tagserver('consent', {ad_storage: 'denied'});
  tagserver('config', {send_page_view: true});
</script>
<script async src="http://sgtm.shop.test:%(port)d/collector.js"></script>
</head><body>Shop</body></html>
"""
CLICK_COOKIES = ("ttclid", "_epik", "_scclid")


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[ServerProcess, PageServer]]:
    server = ServerProcess(
        tmp_path, minimal_container(clients=[{"name": "collector", "type": "collector"}])
    )
    with server, PageServer(PAGE % {"port": server.port}) as shop:
        yield server, shop


def views(server: ServerProcess) -> list[dict[str, Any]]:
    out = []
    for line in server.logs().splitlines():
        if "tagserver.tag.log: " in line:
            event = json.loads(line.split("tagserver.tag.log: ", 1)[1])["event"]
            if event["event_name"] == "page_view":
                out.append(event)
    return out


def page_cookies(page: Page) -> dict[str, str]:
    pairs = (p.partition("=") for p in page.evaluate("document.cookie").split("; ") if p)
    return {k: v for k, _, v in pairs}


def test_click_id_cookies_set_kept_and_not_re_set(
    browser: Browser, setup: tuple[ServerProcess, PageServer]
) -> None:
    server, shop = setup
    site = f"http://www.shop.test:{shop.port}"
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{site}/landing?ttclid=E.C.P.Cl1ck&epik=dj0yJnU9Ep1k&ScCid=sc-Cl1ck")
    wait_until(lambda: len(views(server)) >= 1, 15)
    cookies = wait_until(lambda: (c := page_cookies(page)).get("_scclid") and c, 10)
    assert cookies["ttclid"] == "E.C.P.Cl1ck"  # case kept, readable by the TikTok pixel
    assert cookies["_epik"] == "dj0yJnU9Ep1k" and cookies["_scclid"] == "sc-Cl1ck"
    stored = {c["name"]: c for c in context.cookies()}
    for name in CLICK_COOKIES:
        assert stored[name]["domain"] in (".shop.test", "shop.test")
        assert not stored[name]["httpOnly"]
    first_expiry = {name: stored[name]["expires"] for name in CLICK_COOKIES}
    [view] = views(server)
    assert view["x-tt-ck-ttclid"] == "E.C.P.Cl1ck" and view["x-pin-ck-epik"] == "dj0yJnU9Ep1k"

    # a later page with the same click ids and one without: kept, never re-set
    page.wait_for_timeout(1100)  # a re-set would move the expiry by at least a second
    page.goto(f"{site}/landing?ttclid=E.C.P.Cl1ck&epik=dj0yJnU9Ep1k&ScCid=sc-Cl1ck")
    page.goto(f"{site}/other")
    wait_until(lambda: len(views(server)) >= 3, 15)
    stored = {c["name"]: c for c in context.cookies()}
    assert {name: stored[name]["expires"] for name in CLICK_COOKIES} == first_expiry
    last = views(server)[-1]
    assert last["x-tt-ck-ttclid"] == "E.C.P.Cl1ck" and last["x-sc-ck-sccid"] == "sc-Cl1ck"
    context.close()


def test_no_click_id_cookie_when_ad_storage_is_denied(
    browser: Browser, setup: tuple[ServerProcess, PageServer]
) -> None:
    server, shop = setup
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"http://www.shop.test:{shop.port}/landing?ttclid=E.C.P.No&epik=no&ScCid=no#denied")
    [view] = wait_until(lambda: views(server), 15)
    assert view["consent"]["ad_storage"] == "denied"
    page.wait_for_timeout(300)
    names = {c["name"] for c in context.cookies()}
    assert not names & {*CLICK_COOKIES, "_fbp", "_ttp"}
    assert "x-tt-ck-ttclid" not in view
    context.close()
