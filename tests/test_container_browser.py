"""Preview in a real Chromium: a tag's transformations as a before/after table, the container
version beside each hit, and the banner of a refused container edit."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest
from fakes.vendor import FakeVendor
from support import ServerProcess, minimal_container

pytest.importorskip("playwright")
from playwright.sync_api import Browser, expect  # noqa: E402

pytestmark = pytest.mark.browser

PASSWORD = "container browser password"


def test_transformations_version_and_refused_banner(browser: Browser, tmp_path: Path) -> None:
    with FakeVendor() as vendor:
        container = minimal_container(
            version="7",
            tags=[{"name": "crm_webhook", "type": "http_request", "fire_on": ["all"],
                   "params": {"url": vendor.url + "/crm", "body": "{{event}}"}}],
            transformations=[{"name": "no_phone", "type": "exclude",
                              "keys": ["user_data.phone_number"]}],
        )  # fmt: skip
        env = {"TAGSERVER_PREVIEW_PASSWORD": PASSWORD,
               "TAGSERVER_PREVIEW_STORE": str(tmp_path / "preview.sqlite3")}  # fmt: skip
        with ServerProcess(tmp_path, container, env=env) as server:
            ui = browser.new_context().new_page()
            ui.goto(server.url + "/preview")
            ui.fill("#password", PASSWORD)
            ui.click("button[type=submit]")
            ui.fill("#name", "transformations")
            ui.click("#start-session")
            expect(ui.locator("#container-version")).to_contain_text("v7")
            token = ui.locator("#token").inner_text()

            event = {"event_name": "lead", "user_data": {"email_address": "a@b.test",
                                                          "phone_number": "+15550100"}}  # fmt: skip
            r = httpx.post(server.url + "/api/events", json=event,
                           headers={"Authorization": "Bearer test-key",
                                    "X-Tagserver-Preview": token})  # fmt: skip
            assert r.status_code == 200
            hit = ui.locator("#hit-list li.hit").first
            expect(hit.locator(".cversion")).to_have_text("v7", timeout=15_000)
            ui.locator("#hit-list button.event").first.click()
            ui.click("#tabs button[data-tab=tags]")
            box = ui.locator("article.tag[data-tag=crm_webhook] .transformations")
            row = box.locator("table.diff tr.removed")
            expect(row).to_contain_text("user_data.phone_number")
            expect(row).to_contain_text("+15550100")
            expect(row).to_contain_text("no_phone (exclude)")
            expect(ui.locator("#container-banner")).to_be_hidden()

            broken = {**container, "version": "8"}
            broken["transformations"] = [{"name": "x", "type": "exclude", "keys": ["a..b"]}]
            server.container_path.write_text(json.dumps(broken))
            stamp = time.time() + 1
            os.utime(server.container_path, (stamp, stamp))
            banner = ui.locator("#container-banner")
            expect(banner).to_be_visible(timeout=15_000)
            expect(banner).to_contain_text("refused")
            expect(banner).to_contain_text("transformations[0].keys[0]: 'a..b': empty step")
            expect(banner).to_contain_text("still running version '7'")
