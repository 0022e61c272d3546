"""tagserver under a path of the site's own origin (TAGSERVER_ROOT_PATH=/tag), behind the site's
reverse proxy: the way to get cookies WebKit does not cap at 7 days (docs/collector.md).

Over HTTP in-process first; then through a real nginx (Debian's) on a loopback port, with the
site's page, collector.js, the hits, GA4's endpoint and preview all on one origin, in Chromium.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import (
    LOOPBACK,
    PageServer,
    ServerProcess,
    app_client,
    free_port,
    minimal_container,
    wait_until,
)
from test_ga4 import fixture as ga4_fixture

from tagserver.settings import Settings, SettingsError

PASSWORD = "root path password"
CONTAINER = minimal_container(
    clients=[{"name": "collector", "type": "collector"}, {"name": "ga4", "type": "ga4"},
             {"name": "events_api", "type": "events_api"}],
)  # fmt: skip


def test_the_root_path_is_normalised_and_checked():
    assert Settings(root_path="tag/").root_path == "/tag"
    assert Settings(root_path="/").root_path == ""
    assert Settings(root_path="/a/b").root_path == "/a/b"
    for bad in ("/t ag", "/tag?x", "/a//b", "/../etc", "/%2e"):
        with pytest.raises(SettingsError, match="TAGSERVER_ROOT_PATH"):
            Settings(root_path=bad)


def test_everything_is_served_under_the_prefix_and_still_without_it(tmp_path):
    with app_client(tmp_path, CONTAINER, root_path="/tag", preview_password=PASSWORD,
                    preview_store=str(tmp_path / "preview.sqlite3")) as c:  # fmt: skip
        script = c.get("/tag/collector.js")
        assert script.status_code == 200 and 'var root = "/tag";' in script.text
        assert "var root = '';" not in script.text
        assert c.get("/collector.js").text == script.text  # direct access works the same
        demo = c.get("/tag/demo").text
        assert 'src="/tag/collector.js"' in demo and '"/tag/collect"' in demo
        assert 'href="/tag/preview"' in demo

        body = {"events": [{"name": "page_view",
                            "page": {"page_location": "https://www.shop.test/p"}}]}  # fmt: skip
        hit = c.post("https://www.shop.test/tag/collect", content=json.dumps(body))
        assert hit.status_code == 200 and hit.json()["accepted"] == 1
        cookies = {v.split("=", 1)[0]: v for v in hit.headers.get_list("set-cookie")}
        # the visitor's cookies are the site's: every path of it, so the Pixel reads _fbp
        assert "Path=/;" in cookies["_fbp"] and "Domain=shop.test" in cookies["_fbp"]

        fx = ga4_fixture("page_view")
        ga4 = c.post("/tag/g/collect?" + fx["query"], content=fx["body"].encode(),
                     headers=fx["headers"])  # fmt: skip
        assert ga4.status_code == 204
        assert c.get("/tag/healthz").status_code == 200
        assert c.get("/tag").status_code == 404  # the prefix alone is no page
        assert c.get("/tagx/healthz").status_code == 404  # nor a longer first segment

        # preview: redirects, links, the sign-in cookie's path and the static files
        r = c.get("/tag/preview", follow_redirects=False)
        assert r.headers["location"] == "/tag/preview/login?next=/preview"
        login = c.get("/tag/preview/login")
        assert 'action="/tag/preview/login"' in login.text
        assert 'href="/tag/static/preview.css"' in login.text
        r = c.post("/tag/preview/login", data={"password": PASSWORD, "next": "/preview"},
                   follow_redirects=False)  # fmt: skip
        assert r.status_code == 303 and r.headers["location"] == "/tag/preview"
        assert "Path=/tag/preview" in r.headers["set-cookie"]
        page = c.get("/tag/preview")
        assert page.status_code == 200 and 'data-root="/tag"' in page.text
        assert 'action="/tag/preview/sessions"' in page.text
        session = c.post("/tag/preview/sessions", data={"name": "x"},
                         headers={"Accept": "application/json"}).json()  # fmt: skip
        assert session["example_url"].endswith("/tag/api/events")
        assert "/tag/api/events" in session["curl"]
        assert c.get("/tag/static/preview.js").status_code == 200


# -- through a real nginx --------------------------------------------------------------------

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen {host}:{port};
        # the recipe of docs/collector.md: tagserver under /tag/ of the site's own origin
        location /tag/ {{
            proxy_pass http://{host}:{tagserver};
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_buffering off;
        }}
        # the site itself
        location / {{
            proxy_pass http://{host}:{site};
        }}
    }}
}}
"""

SITE_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Shop behind nginx</title>
<script>
  window.tagserver = window.tagserver || function (c, n, p, o) {
    if (c == 'event') { o = Object.assign({}, o);
      o.event_id = o.event_id || crypto.getRandomValues(new Uint32Array(4)).join('-'); }
    (tagserver.q = tagserver.q || []).push([c, n, p, o]); return o && o.event_id; };
  tagserver('config', {send_page_view: true});
</script>
<script async src="/tag/collector.js"></script>
</head><body><h1>Shop</h1></body></html>
"""


@contextlib.contextmanager
def nginx(tmp_path: Path, tagserver_port: int, site_port: int) -> Iterator[int]:
    """Debian's nginx on a free loopback port with a temporary config; stopped afterwards."""
    directory = tmp_path / "nginx"
    directory.mkdir()
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=directory, host=LOOPBACK, port=port,
                                      tagserver=tagserver_port, site=site_port))  # fmt: skip
    proc = subprocess.Popen(
        [NGINX, "-e", str(directory / "nginx-stderr.log"), "-p", str(directory), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"http://{LOOPBACK}:{port}/tag/healthz", timeout=0.5)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (directory / "nginx-error.log").read_text(errors="replace")
                    raise RuntimeError(f"nginx did not start: {log}") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def logged_events(server: ServerProcess) -> list[dict[str, Any]]:
    out = []
    for line in server.logs().splitlines():
        if "tagserver.tag.log: " in line:
            out.append(json.loads(line.split("tagserver.tag.log: ", 1)[1])["event"])
    return out


@pytest.mark.browser
@pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed (scripts/test.sh)")
def test_through_nginx_under_a_path_of_the_site(browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    env = {"TAGSERVER_ROOT_PATH": "/tag", "TAGSERVER_PREVIEW_PASSWORD": PASSWORD,
           "TAGSERVER_PREVIEW_STORE": str(tmp_path / "preview.sqlite3")}  # fmt: skip
    with (
        ServerProcess(tmp_path, CONTAINER, env=env) as server,
        PageServer(SITE_PAGE) as site,
        nginx(tmp_path, server.port, site.port) as port,
    ):
        origin = f"http://www.shop.test:{port}"
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()

        # 1. the page on the site's origin loads the collector from /tag; its hit reaches
        # tagserver through nginx and the answer sets the site's cookies
        with page.expect_response(lambda r: r.url.startswith(origin + "/tag/collect")) as hit:
            page.goto(origin + "/product/mug")
        assert hit.value.status == 200
        assert page.evaluate("window.tagserver.loaded") is True
        [view] = wait_until(lambda: [e for e in logged_events(server)
                                     if e["page_location"] == origin + "/product/mug"], 15)  # fmt: skip
        assert view["event_name"] == "page_view"
        cookies = {c["name"]: c for c in context.cookies()}
        assert cookies["_fbp"]["domain"] in (".shop.test", "shop.test")
        assert cookies["_fbp"]["path"] == "/" and view["x-fb-ck-fbp"] == cookies["_fbp"]["value"]
        assert cookies["tagserver_cid"]["httpOnly"]
        assert "_fbp=" in page.evaluate("document.cookie")  # the Pixel on the page reads it

        # 2. GA4's endpoint under the prefix, through the proxy
        fx = ga4_fixture("page_view")
        ga4 = httpx.post(f"http://{LOOPBACK}:{port}/tag/g/collect?" + fx["query"],
                         content=fx["body"].encode(),
                         headers={**fx["headers"], "Host": f"www.shop.test:{port}"})  # fmt: skip
        assert ga4.status_code == 204

        # 3. preview under the prefix: sign in, start a session, mark this browser, and the
        # next page view shows up live with its page
        ui = context.new_page()
        ui.goto(origin + "/tag/preview")
        expect(ui).to_have_url(origin + "/tag/preview/login?next=/preview")
        ui.fill("#password", PASSWORD)
        ui.click("button[type=submit]")
        expect(ui).to_have_url(origin + "/tag/preview")
        ui.click("#start-session")
        expect(ui.locator("#stream-state")).to_have_text("● live", timeout=10_000)
        ui.click("#mark")
        expect(ui.locator("#mark")).to_have_text("Unmark this browser")
        page.goto(origin + "/cart")
        hits = ui.locator("#hit-list li.hit")
        expect(hits).to_have_count(1, timeout=15_000)
        expect(hits.first.locator(".hit-head .path")).to_have_attribute("title", origin + "/cart")
        expect(hits.first.locator(".reqline")).to_have_text("POST /tag/collect")
        auth = next(c for c in context.cookies() if c["name"] == "tagserver_preview_auth")
        assert auth["path"] == "/tag/preview"
        context.close()
