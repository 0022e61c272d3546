"""Preview mode over HTTP: sign-in, sessions and their tokens, recording, redaction, bounds,
several workers and Redis. The browser side is in test_preview_browser.py."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from itsdangerous import URLSafeTimedSerializer
from support import LOOPBACK, ServerProcess, app_client, free_port, minimal_container, wait_until

from tagserver.preview import announce
from tagserver.preview import raw_token as preview_raw_token
from tagserver.preview.auth import TOKEN_FILE
from tagserver.preview.store import RedisStore, SqliteStore, open_store, sweep_orphans
from tagserver.settings import Settings
from tagserver.web.app import header_dict

PASSWORD = "correct horse battery"
API = {"Authorization": "Bearer test-key"}


def preview_app(tmp_path: Path, container: dict[str, Any] | None = None, **settings: Any):
    options = {
        "preview_password": PASSWORD,
        "preview_store": str(tmp_path / "preview.sqlite3"),
        **settings,
    }
    return app_client(tmp_path, container or minimal_container(), **options)


def sign_in(client: Any, password: str = PASSWORD) -> Any:
    return client.post("/preview/login", data={"password": password}, follow_redirects=False)


def start_session(client: Any, name: str = "test") -> dict[str, Any]:
    r = client.post(
        "/preview/sessions", data={"name": name}, headers={"Accept": "application/json"}
    )
    assert r.status_code == 201, r.text
    return r.json()


def send(client: Any, token: str | None, name: str = "purchase", **fields: Any) -> Any:
    headers = dict(API)
    if token is not None:
        headers["X-Tagserver-Preview"] = token
    r = client.post("/api/events", json={"event_name": name, **fields}, headers=headers)
    assert r.status_code == 200, r.text
    return r


def hits(client: Any, sid: str) -> list[dict[str, Any]]:
    r = client.get(f"/preview/api/s/{sid}/hits")
    assert r.status_code == 200, r.text
    return r.json()["hits"]


def wait_hits(client: Any, sid: str, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    return wait_until(lambda: (h := hits(client, sid)) and len(h) >= count and h, timeout)


def settle() -> None:
    """Give the writer (a background task) time to store what it would store."""
    time.sleep(0.3)


# -- access ----------------------------------------------------------------------------------


def test_preview_needs_signing_in(tmp_path):
    with preview_app(tmp_path) as c:
        r = c.get("/preview", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/preview/login")
        assert c.get("/preview/api/sessions").status_code == 401
        assert c.get("/preview/api/s/abc/hits").status_code == 401
        assert c.post("/preview/sessions").status_code == 401
        page = c.get("/preview/login")
        assert page.status_code == 200 and 'name="password"' in page.text


def test_sign_in_sets_a_strict_http_only_cookie(tmp_path):
    with preview_app(tmp_path) as c:
        r = sign_in(c)
        assert r.status_code == 303 and r.headers["location"] == "/preview"
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("tagserver_preview_auth=")
        for flag in ("HttpOnly", "SameSite=strict", "Path=/preview", "Max-Age="):
            assert flag in cookie
        assert "Secure" not in cookie  # plain http: a Secure cookie would never come back
        assert c.get("/preview").status_code == 200
        r = c.post("https://sgtm.shop.test/preview/login", data={"password": PASSWORD},
                   follow_redirects=False)  # fmt: skip
        assert "Secure" in r.headers["set-cookie"]


def test_wrong_password_says_so_without_leaking(tmp_path):
    with preview_app(tmp_path) as c:
        r = sign_in(c, "correct horse")
        assert r.status_code == 401
        assert "Wrong password." in r.text
        assert PASSWORD not in r.text and "battery" not in r.text
        assert "set-cookie" not in r.headers
        assert c.get("/preview/api/sessions").status_code == 401


def test_sign_in_attempts_are_rate_limited(tmp_path):
    with preview_app(tmp_path) as c:
        for _ in range(5):
            assert sign_in(c, "guess").status_code == 401
        r = sign_in(c)  # even the right password waits now
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) > 0
        assert "Too many failed sign-in attempts" in r.text
        assert "set-cookie" not in r.headers


def test_tampered_or_foreign_sign_in_cookie_is_refused(tmp_path):
    with preview_app(tmp_path) as c:
        sign_in(c)
        value = c.cookies.get("tagserver_preview_auth")
        assert c.get("/preview/api/sessions").status_code == 200
        c.cookies.set("tagserver_preview_auth", value[:-2] + ("AA" if value[-2:] != "AA" else "BB"),
                      domain="sgtm.shop.test", path="/preview")  # fmt: skip
        assert c.get("/preview/api/sessions").status_code == 401
        forged = URLSafeTimedSerializer("another key", salt="tagserver.preview.login").dumps(
            {"v": "x"}
        )
        c.cookies.set("tagserver_preview_auth", forged, domain="sgtm.shop.test", path="/preview")
        assert c.get("/preview/api/sessions").status_code == 401


def test_changing_the_password_signs_everybody_out(tmp_path):
    with preview_app(tmp_path) as c:
        sign_in(c)
        cookie = c.cookies.get("tagserver_preview_auth")
    with preview_app(tmp_path, preview_password="a new password") as c:
        c.cookies.set("tagserver_preview_auth", cookie, domain="sgtm.shop.test", path="/preview")
        assert c.get("/preview/api/sessions").status_code == 401


def test_without_a_password_the_announced_token_signs_in(tmp_path, capsys):
    settings = Settings(data_dir=str(tmp_path / "data"), host="0.0.0.0", port=8123)
    announce(settings)
    printed = capsys.readouterr().err
    assert "http://localhost:8123/preview/login?token=" in printed
    token = printed.split("?token=")[1].split()[0].rstrip(";")
    assert (tmp_path / "data" / TOKEN_FILE).read_text() == token
    assert oct((tmp_path / "data" / TOKEN_FILE).stat().st_mode & 0o777) == "0o600"
    with preview_app(tmp_path, preview_password="") as c:
        r = c.get("/preview/login?token=wrong", follow_redirects=False)
        assert r.status_code == 401 and "Wrong sign-in token." in r.text
        r = c.get(
            f"/preview/login?token={token}&next=/preview/api/sessions", follow_redirects=False
        )
        assert r.status_code == 303 and r.headers["location"] == "/preview/api/sessions"
        assert c.get("/preview/api/sessions").status_code == 200
        assert c.get("/preview/login?next=//evil.test", follow_redirects=False).headers[
            "location"] == "/preview"  # fmt: skip


def test_preview_pages_send_strict_security_headers(tmp_path):
    with preview_app(tmp_path) as c:
        for r in (c.get("/preview/login"), (sign_in(c), c.get("/preview"))[1]):
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert "frame-ancestors 'none'" in csp
            assert r.headers["x-frame-options"] == "DENY"
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "no-referrer"
        session = start_session(c)
        page = c.get(f"/preview/s/{session['id']}")
        assert page.status_code == 200
        assert "<script>" not in page.text and "onclick" not in page.text  # no inline script


def test_cross_site_posts_are_refused(tmp_path):
    with preview_app(tmp_path) as c:
        sign_in(c)
        r = c.post("/preview/sessions", headers={"Origin": "http://evil.test"})
        assert r.status_code == 403
        assert c.get("/preview/api/sessions").json()["sessions"] == []


# -- sessions and tokens ----------------------------------------------------------------------


def test_a_hit_with_the_header_is_recorded_and_one_without_is_not(tmp_path):
    with preview_app(tmp_path) as c:
        sign_in(c)
        session = start_session(c)
        send(c, None, "not_previewed")
        send(c, session["token"], "purchase", value=12.5, currency="EUR")
        [hit] = wait_hits(c, session["id"], 1)
        settle()
        assert len(hits(c, session["id"])) == 1
        assert hit["client"] == "events_api" and hit["status"] == 200
        assert hit["events"] == [
            {"name": "purchase", "fired": 1, "dry_run": 0, "tags": 1, "errors": 0}
        ]
        detail = c.get(f"/preview/api/s/{session['id']}/hits/{hit['id']}").json()
        assert detail["events"][0]["event"]["value"] == 12.5
        assert detail["events"][0]["tags"][0]["status"] == "fired"
        assert detail["events"][0]["variables"]["event_name"] == "purchase"


def test_query_parameter_and_marked_browser_cookie_mark_hits_too(tmp_path):
    with preview_app(tmp_path) as c:
        sign_in(c)
        session = start_session(c)
        c.post(f"/api/events?tagserver_preview={session['token']}", json={"event_name": "by_link"},
               headers=API)  # fmt: skip
        r = c.post(f"/preview/s/{session['id']}/mark")
        assert r.status_code == 200 and r.json()["marked"] is True
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("tagserver_preview=tsp_")
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
        send(c, None, "by_cookie")  # the client's cookie jar sends it now
        names = [h["events"][0]["name"] for h in wait_hits(c, session["id"], 2)]
        assert names == ["by_link", "by_cookie"]
        detail = c.get(f"/preview/api/s/{session['id']}/hits/{hits(c, session['id'])[0]['id']}")
        assert session["token"] not in detail.text  # the token in the URL is redacted
        assert "tagserver_preview=[redacted]" in detail.json()["request"]["url"]
        r = c.post(f"https://sgtm.shop.test/preview/s/{session['id']}/mark")
        assert "SameSite=none" in r.headers["set-cookie"] and "Secure" in r.headers["set-cookie"]


def test_tampered_forged_and_foreign_tokens_are_ignored(tmp_path):
    with preview_app(tmp_path) as c:
        sign_in(c)
        session = start_session(c)
        token = session["token"]
        body, sig = token.rsplit(".", 1)
        forged_sid = URLSafeTimedSerializer("not our key", salt="tagserver.preview.session").dumps(
            {"s": session["id"]}
        )
        for bad in (
            body + "." + sig[::-1],  # signature changed
            token[:10] + ("A" if token[10] != "A" else "B") + token[11:],  # payload changed
            "tsp_" + forged_sid,  # signed with another key
            token.removeprefix("tsp_"),  # not our format
            "garbage",
            "",
        ):
            r = send(c, bad, "tampered")
            assert r.status_code == 200  # a bad preview token never breaks the hit
        send(c, token, "genuine")
        names = [h["events"][0]["name"] for h in wait_hits(c, session["id"], 1)]
        settle()
        assert [h["events"][0]["name"] for h in hits(c, session["id"])] == names == ["genuine"]


def test_a_session_expires_and_renewing_revives_its_tokens(tmp_path):
    with preview_app(tmp_path, preview_token_ttl_seconds=1) as c:
        sign_in(c)
        session = start_session(c)
        assert 0 < session["remaining"] <= 1 and session["live"] is True
        send(c, session["token"], "in_time")
        wait_hits(c, session["id"], 1)
        time.sleep(1.3)  # expired, and past the per-worker cache of the session
        send(c, session["token"], "too_late")
        settle()
        assert [h["events"][0]["name"] for h in hits(c, session["id"])] == ["in_time"]
        state = c.get(f"/preview/api/s/{session['id']}").json()
        assert state["live"] is False and state["remaining"] == 0
        renewed = c.post(f"/preview/s/{session['id']}/renew").json()
        assert renewed["live"] is True and renewed["token"] != session["token"]
        send(c, session["token"], "renewed_old_token")  # within the renewed second
        wait_hits(c, session["id"], 2)


def test_stopping_a_session_stops_recording_but_keeps_its_hits(tmp_path):
    with preview_app(tmp_path) as c:
        sign_in(c)
        session = start_session(c)
        send(c, session["token"], "before")
        wait_hits(c, session["id"], 1)
        assert c.post(f"/preview/s/{session['id']}/stop").json()["stopped"] is True
        send(c, session["token"], "after")
        settle()
        assert [h["events"][0]["name"] for h in hits(c, session["id"])] == ["before"]
        assert c.post(f"/preview/s/{session['id']}/mark").status_code == 409
        assert (
            c.post(
                f"/preview/s/{session['id']}/delete", headers={"Accept": "application/json"}
            ).status_code
            == 200
        )
        assert c.get(f"/preview/api/s/{session['id']}/hits").status_code == 404


def test_an_unclaimed_request_shows_with_its_reason(tmp_path):
    with preview_app(tmp_path) as c:
        sign_in(c)
        session = start_session(c)
        r = c.get("/no/such/path", headers={"X-Tagserver-Preview": session["token"]})
        assert r.status_code == 404
        [hit] = wait_hits(c, session["id"], 1)
        assert hit["client"] is None and hit["status"] == 404
        assert hit["error"] == "no client claimed this request" and hit["path"] == "/no/such/path"


# -- redaction and bounds ------------------------------------------------------------------------


class FakeVendor:
    """A real HTTP server on loopback that answers like a webhook receiver."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        vendor = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length") or 0)
                vendor.received.append({"headers": dict(self.headers),
                                        "body": json.loads(self.rfile.read(length) or b"null")})  # fmt: skip
                body = json.dumps(
                    {"ok": True, "vendor_says": "thanks", "received": len(vendor.received)}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeVendor:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def webhook_container(url: str) -> dict[str, Any]:
    return minimal_container(
        variables=[{"name": "crm_secret", "type": "env", "env": "PREVIEW_TEST_CRM_SECRET", "secret": True}],
        triggers=[
            {"name": "all", "event": "*"},
            {"name": "big_purchase", "event": "purchase",
             "conditions": [{"variable": "value", "operator": "greater_than", "value": 100}]},
        ],
        tags=[
            {"name": "log_all", "type": "log", "fire_on": ["all"],
             "params": {"fields": {"crm": "{{crm_secret}}"}}},
            {"name": "crm_webhook", "type": "http_request", "fire_on": ["all"],
             "params": {"url": url, "headers": {"X-Api-Key": "tag-secret-param-4711"},
                        "body": {"event": "{{event_name}}", "key": "{{crm_secret}}"}}},
            {"name": "big_spender", "type": "log", "fire_on": ["big_purchase"]},
        ],
    )  # fmt: skip


def test_secrets_and_the_preview_token_never_reach_the_preview_data(tmp_path, monkeypatch):
    monkeypatch.setenv("PREVIEW_TEST_CRM_SECRET", "env-secret-value-0815")
    with FakeVendor() as vendor, preview_app(tmp_path, webhook_container(vendor.url),
                                             api_keys="test-key,second-api-key-42") as c:  # fmt: skip
        sign_in(c)
        session = start_session(c)
        c.post(f"/api/events?tagserver_preview={session['token']}",
               json={"event_name": "purchase", "value": 20, "note": "env-secret-value-0815"},
               headers={**API, "X-Tagserver-Preview": session["token"],
                        "Cookie": f"tagserver_preview={session['token']}; other=1"})  # fmt: skip
        [hit] = wait_hits(c, session["id"], 1)
        url = f"/preview/api/s/{session['id']}/hits/{hit['id']}"
        detail = wait_until(lambda: (d := c.get(url)).json()["deliveries"] and d, 15)
        text = detail.text
        for secret in ("env-secret-value-0815", "tag-secret-param-4711", "test-key",
                       "second-api-key-42", session["token"], PASSWORD):  # fmt: skip
            assert secret not in text, secret
        assert "[redacted]" in text
        data = detail.json()
        assert data["request"]["headers"]["authorization"] == "[redacted]"
        assert data["request"]["headers"]["x-tagserver-preview"] == "[redacted]"
        assert "tagserver_preview" not in data["request"]["cookies"]
        assert data["events"][0]["variables"]["crm_secret"] == "[redacted]"
        tags = {t["tag"]: t for t in data["events"][0]["tags"]}
        assert tags["crm_webhook"]["params"]["headers"] == "[redacted]"
        # ... while the vendor did get the real values
        sent = {k.lower(): v for k, v in vendor.received[0]["headers"].items()}
        assert sent["x-api-key"] == "tag-secret-param-4711"  # header names: any case
        assert vendor.received[0]["body"]["key"] == "env-secret-value-0815"
        # and the session listing, with its curl example, holds no API key either
        listing = c.get("/preview/api/sessions").text
        assert "test-key" not in listing and "second-api-key-42" not in listing


def test_a_meta_access_token_never_shows_in_preview(tmp_path):
    token = "EAAGm0PX4ZCpsBAsecretaccesstoken1234567890"
    container = minimal_container(tags=[
        {"name": "meta", "type": "meta_capi", "fire_on": ["all"],
         "params": {"pixel_id": "123456789012345", "access_token": token}},
    ])  # fmt: skip
    with FakeVendor() as graph, preview_app(tmp_path, container,
                                            meta_graph_url=graph.url.rsplit("/", 1)[0]) as c:  # fmt: skip
        sign_in(c)
        session = start_session(c)
        send(c, session["token"], "purchase", value=10, currency="EUR",
             page_location="https://www.shop.test/checkout", ip_override="203.0.113.5",
             user_agent="Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
             user_data={"email_address": "Jane@Example.com"})  # fmt: skip
        [hit] = wait_hits(c, session["id"], 1)
        url = f"/preview/api/s/{session['id']}/hits/{hit['id']}"
        detail = wait_until(lambda: (d := c.get(url)).json()["deliveries"] and d, 15)
        assert graph.received  # the token went to the vendor ...
        assert token not in detail.text  # ... and nowhere into preview
        [tag] = detail.json()["events"][0]["tags"]
        assert tag["status"] == "fired" and tag["params"]["access_token"] == "[redacted]"
        assert "Jane@Example.com" not in json.dumps(tag["outgoing"])  # the payload is hashed
        page = c.get(f"/preview/s/{session['id']}")
        assert token not in page.text


def test_tags_show_why_they_did_not_fire_and_deliveries_show_the_vendor_answer(tmp_path):
    with FakeVendor() as vendor, preview_app(tmp_path, webhook_container(vendor.url)) as c:
        sign_in(c)
        session = start_session(c)
        send(c, session["token"], "purchase", value=20)
        [hit] = wait_hits(c, session["id"], 1)
        url = f"/preview/api/s/{session['id']}/hits/{hit['id']}"
        data = wait_until(lambda: (d := c.get(url).json())["deliveries"] and d, 15)
        tags = {t["tag"]: t for t in data["events"][0]["tags"]}
        assert tags["log_all"]["status"] == "fired"
        spender = tags["big_spender"]
        assert spender["status"] == "not_fired"
        [condition] = spender["triggers"][0]["conditions"]
        assert condition == {"variable": "value", "operator": "greater_than", "expected": 100,
                             "actual": 20, "passed": False}  # fmt: skip
        assert "value = 20" in spender["reason"]
        [outgoing] = tags["crm_webhook"]["outgoing"]
        assert outgoing["payload"]["event"] == "purchase"
        [delivery] = data["deliveries"]
        assert delivery["outcome"] == "delivered" and delivery["status"] == 200
        assert delivery["response"] == {"ok": True, "vendor_says": "thanks", "received": 1}
        assert delivery["dedup_id"] == outgoing["dedup_id"] and delivery["latency_ms"] >= 0
        assert wait_until(lambda: hits(c, session["id"])[0]["deliveries"]["total"] == 1)


def test_stored_hits_are_bounded_per_session_and_in_all(tmp_path):
    with preview_app(tmp_path, preview_max_hits_per_session=3, preview_max_hits=5) as c:
        sign_in(c)
        a, b = start_session(c, "a"), start_session(c, "b")
        for i in range(1, 5):
            send(c, a["token"], f"a{i}")
            wait_hits(c, a["id"], min(i, 3))
        for i in range(1, 5):
            send(c, b["token"], f"b{i}")
            wait_until(
                lambda i=i: [h["events"][0]["name"] for h in hits(c, b["id"])][-1:] == [f"b{i}"]
            )
        settle()
        assert [h["events"][0]["name"] for h in hits(c, a["id"])] == ["a3", "a4"]
        assert [h["events"][0]["name"] for h in hits(c, b["id"])] == ["b2", "b3", "b4"]


def test_a_huge_trace_is_cut_down_and_says_so(tmp_path):
    with preview_app(tmp_path, max_body_bytes=4_000_000) as c:
        sign_in(c)
        session = start_session(c)
        events = [{"event_name": f"e{i}", "blob": "x" * 2000} for i in range(300)]
        r = c.post("/api/events", json={"events": events},
                   headers={**API, "X-Tagserver-Preview": session["token"]})  # fmt: skip
        assert r.status_code == 200
        [hit] = wait_hits(c, session["id"], 1)
        assert hit["event_count"] < 300 and len(hit["events"]) <= 50
        detail = c.get(f"/preview/api/s/{session['id']}/hits/{hit['id']}")
        assert len(detail.content) < 300 * 1024
        assert "preview kept" in detail.json()["console"][-1]["message"]


# -- the live stream and several workers ------------------------------------------------------


def sign_in_http(base: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=10)
    r = client.post("/preview/login", data={"password": PASSWORD})
    assert r.status_code == 303, r.text
    return client


def read_stream(client: httpx.Client, sid: str, want: int, timeout: float = 10.0) -> list[dict]:
    """Hit events from the live stream until `want` arrived (bounded in time)."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    with client.stream("GET", f"/preview/api/s/{sid}/stream", timeout=timeout) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "hit":
                got.append(json.loads(line[6:])["hit"])
                if len(got) >= want:
                    break
            if time.monotonic() > deadline:
                break
    return got


@pytest.mark.slow
def test_two_workers_share_one_preview(tmp_path):
    env = {"TAGSERVER_PREVIEW_PASSWORD": PASSWORD,
           "TAGSERVER_PREVIEW_STORE": str(tmp_path / "preview.sqlite3")}  # fmt: skip
    with ServerProcess(tmp_path, minimal_container(), env=env, workers=2) as server:
        ui = sign_in_http(server.url)
        session = ui.post("/preview/sessions", data={"name": "workers"},
                          headers={"Accept": "application/json"}).json()  # fmt: skip
        streamed: list[dict] = []
        reader = threading.Thread(
            target=lambda: streamed.extend(read_stream(sign_in_http(server.url), session["id"], 30))
        )
        reader.start()
        time.sleep(0.5)
        for i in range(30):  # a new connection each: the kernel spreads them over the workers
            r = httpx.post(server.url + "/api/events", json={"event_name": f"e{i}"},
                           headers={**API, "X-Tagserver-Preview": session["token"],
                                    "Connection": "close"})  # fmt: skip
            assert r.status_code == 200
        reader.join(15)
        for _ in range(6):  # whichever worker answers the UI sees every worker's hits
            listing = httpx.get(server.url + f"/preview/api/s/{session['id']}/hits",
                                cookies=ui.cookies, headers={"Connection": "close"}).json()  # fmt: skip
            assert sorted(h["events"][0]["name"] for h in listing["hits"]) == sorted(
                f"e{i}" for i in range(30)
            )
        assert len(streamed) == 30


# -- Redis -------------------------------------------------------------------------------------


def start_redis(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    """A real redis-server on a free loopback port (no disk); the caller stops it."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                    return proc, port
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.terminate()
            proc.wait(10)
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)


@pytest.fixture
def redis_url(tmp_path) -> Iterator[str]:
    proc, port = start_redis(tmp_path)
    try:
        yield f"redis://{LOOPBACK}:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "store.sqlite3", per_session=3, total=5)
    else:
        s = RedisStore(request.getfixturevalue("redis_url"), per_session=3, total=5)
    yield s
    s.close()


def summary(tid: str, name: str) -> dict[str, Any]:
    return {"id": tid, "time": time.time(), "events": [{"name": name}]}


def test_store_bounds_deliveries_and_feed(store):
    now = time.time()
    for sid in ("a", "b"):
        store.put_session({"id": sid, "name": sid, "created": now, "expires": now + 60,
                           "token": "t", "stopped": False})  # fmt: skip
    cursor = store.cursor()
    for i in range(4):
        store.add_hits([("a", summary(f"a{i}", f"a{i}"), {"id": f"a{i}", "n": i})])
    for i in range(4):
        store.add_hits([("b", summary(f"b{i}", f"b{i}"), {"id": f"b{i}", "n": i})])
    assert [h["id"] for h in store.hits("a", 100)] == ["a2", "a3"]
    assert [h["id"] for h in store.hits("b", 100)] == ["b1", "b2", "b3"]
    assert store.add_deliveries([("b3", {"outcome": "retry", "dedup_id": "m1"}),
                                 ("zz", {"outcome": "x"}),
                                 ("b3", {"outcome": "delivered", "dedup_id": "m1"}),
                                 ("b3", {"outcome": "dead_letter", "dedup_id": "m2"})]) == [1]  # fmt: skip
    detail = store.hit("b", "b3")
    assert detail["n"] == 3 and [d["outcome"] for d in detail["deliveries"]] == [
        "retry",
        "delivered",
        "dead_letter",
    ]
    assert store.hit("a", "b3") is None  # another session's hit is not reachable
    feed = store.changes("b", cursor)
    kinds = [(e["kind"], e.get("trace_id") or e["hit"]["id"]) for e in feed]
    assert ("hit", "b3") in kinds and kinds[-2:] == [("delivery", "b3"), ("delivery", "b3")]
    # each message counts once, by its latest result: m1 retried, then delivered; m2 dead
    assert feed[-1]["deliveries"] == {"total": 2, "delivered": 1, "retrying": 0, "failed": 1}
    assert store.changes("b", feed[-1]["seq"]) == []
    assert [s["id"] for s in store.list_sessions()] == ["b", "a"] or {
        s["id"] for s in store.list_sessions()} == {"a", "b"}  # fmt: skip
    store.delete_session("b")
    assert store.get_session("b") is None and store.hits("b", 100) == []
    for _ in range(3):
        store.count_failure("ip:1", 60)
    assert store.failures("ip:1", 60) == 3
    store.reset_failures("ip:1")
    assert store.failures("ip:1", 60) == 0


@pytest.mark.slow
def test_two_machines_share_previews_through_redis(tmp_path, redis_url):
    env = {"TAGSERVER_PREVIEW_PASSWORD": PASSWORD, "TAGSERVER_REDIS_URL": redis_url,
           "TAGSERVER_SECRET_KEY": "one key for every machine " * 2}  # fmt: skip
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with ServerProcess(tmp_path / "a", minimal_container(), env=env) as a, \
            ServerProcess(tmp_path / "b", minimal_container(), env=env) as b:  # fmt: skip
        ui = sign_in_http(a.url)
        session = ui.post("/preview/sessions", headers={"Accept": "application/json"}).json()
        for server, name in ((a, "on_a"), (b, "on_b")):
            r = httpx.post(server.url + "/api/events", json={"event_name": name},
                           headers={**API, "X-Tagserver-Preview": session["token"]})  # fmt: skip
            assert r.status_code == 200
        wait_until(lambda: len(ui.get(f"/preview/api/s/{session['id']}/hits").json()["hits"]) == 2)
        names = sorted(h["events"][0]["name"]
                       for h in ui.get(f"/preview/api/s/{session['id']}/hits").json()["hits"])  # fmt: skip
        assert names == ["on_a", "on_b"]
        # signing in on b works with a's cookie too: same key, same password
        ui_b = httpx.Client(base_url=b.url, cookies=ui.cookies)
        assert ui_b.get(f"/preview/api/s/{session['id']}").json()["live"] is True


def test_every_preview_route_answers_503_while_redis_is_down(tmp_path, caplog):
    """Redis stopped under a running server: each preview page and endpoint says so with a
    503 and a reason (never a 500, never the URL's password); hits and /healthz go on."""
    secret = "redis-Secret-5521"
    proc, port = start_redis(tmp_path, "--requirepass", secret)
    url = f"redis://:{secret}@{LOOPBACK}:{port}/0"
    try:
        with preview_app(tmp_path, redis_url=url) as c:
            assert sign_in(c).status_code == 303
            session = start_session(c)
            sid = session["id"]
            send(c, session["token"])
            tid = wait_hits(c, sid, 1)[0]["id"]
            proc.terminate()
            proc.wait(10)

            r = sign_in(c)
            assert r.status_code == 503, r.text
            assert "preview store (Redis" in r.text and "unreachable" in r.text
            assert r.headers["retry-after"]
            responses = [r]
            for method, path in [
                ("GET", "/preview"),
                ("GET", f"/preview/s/{sid}"),
                ("GET", "/preview/api/sessions"),
                ("POST", "/preview/sessions"),
                ("GET", f"/preview/api/s/{sid}"),
                ("GET", f"/preview/api/s/{sid}/hits"),
                ("GET", f"/preview/api/s/{sid}/hits/{tid}"),
                ("GET", f"/preview/api/s/{sid}/stream"),
                *[("POST", f"/preview/s/{sid}/{a}") for a in
                  ("renew", "stop", "clear", "mark", "unmark", "delete")],
            ]:  # fmt: skip
                r = c.request(method, path, headers={"Accept": "application/json"},
                              follow_redirects=False)  # fmt: skip
                assert r.status_code == 503, (method, path, r.status_code, r.text)
                assert "the preview store (Redis" in r.json()["error"], r.text
                assert r.headers["retry-after"]
                responses.append(r)
            page = c.get("/preview", headers={"Accept": "text/html"})
            assert page.status_code == 503 and "unreachable" in page.text
            assert page.headers["content-security-policy"]
            responses.append(page)
            for r in responses:
                assert secret not in r.text and secret not in str(r.headers)

            # hits are served, previewed or not, and /healthz is not concerned
            send(c, None)
            send(c, session["token"])
            health = c.get("/healthz")
            assert health.status_code == 200 and secret not in health.text
            assert c.get("/preview/api/container").status_code == 200
        assert "preview store failed" in caplog.text and "is unreachable" in caplog.text
        assert secret not in caplog.text
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


# -- the hot path ------------------------------------------------------------------------------


def test_token_lookup_reads_header_query_and_cookie_only():
    def scope(headers=(), query=b""):
        return {"headers": list(headers), "query_string": query}

    def raw_token(scope):  # as the hit path calls it, with the hit's decoded headers
        return preview_raw_token(scope, header_dict(scope))

    assert raw_token(scope([(b"user-agent", b"x"), (b"cookie", b"_fbp=1")])) is None
    assert raw_token(scope([(b"x-tagserver-preview", b" tsp_a.b.c ")])) == "tsp_a.b.c"
    assert raw_token(scope(query=b"a=1&tagserver_preview=tsp_q.r.s")) == "tsp_q.r.s"
    assert raw_token(scope([(b"cookie", b"a=1; tagserver_preview=tsp_c.d.e")])) == "tsp_c.d.e"
    assert raw_token(scope([(b"cookie", b"tagserver_preview_auth=zzz")])) is None
    started = time.perf_counter()
    plain = scope([(b"host", b"x"), (b"user-agent", b"y" * 100), (b"cookie", b"_fbp=fb.1.2.3")],
                  b"a=1")  # fmt: skip
    for _ in range(10_000):
        raw_token(plain)
    per_call = (time.perf_counter() - started) / 10_000
    assert per_call < 50e-6, per_call  # a hit without a token pays next to nothing
    assert os.environ.get("TAGSERVER_PREVIEW_PASSWORD") is None


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no shared memory on this system")
def test_the_default_store_lives_in_shared_memory_and_is_swept_with_its_data_dir(tmp_path):
    data = tmp_path / "data"
    store = open_store(Settings(data_dir=str(data)))
    assert isinstance(store, SqliteStore)
    assert store.path.parent == Path("/dev/shm") and not store.path.exists()  # created on use
    store.put_session({"id": "s", "name": "s", "created": 1.0, "expires": 2.0, "token": "t"})
    assert store.path.exists() and oct(store.path.stat().st_mode & 0o777) == "0o600"
    assert not list(data.glob("preview*"))  # nothing about hits on disk
    store.close()
    assert sweep_orphans() >= 0 and store.path.exists()  # its data dir still exists
    shutil.rmtree(data)
    assert sweep_orphans() >= 1
    assert not store.path.exists() and not Path(f"{store.path}.owner").exists()


@pytest.mark.slow
def test_the_start_up_link_signs_in_on_every_worker_and_open_streams_do_not_hold_a_stop(tmp_path):
    with ServerProcess(tmp_path, minimal_container(), workers=2) as server:
        link = wait_until(
            lambda: [ln for ln in server.logs().splitlines() if "/preview/login?token=" in ln]
        )
        token = link[0].split("?token=")[1].split()[0].rstrip(";")
        for _ in range(6):  # new connections land on either worker: all know the same token
            r = httpx.get(f"{server.url}/preview/login?token={token}",
                          headers={"Connection": "close"})  # fmt: skip
            assert r.status_code == 303 and "tagserver_preview_auth" in r.headers["set-cookie"]
        ui = httpx.Client(base_url=server.url, cookies=r.cookies, timeout=10)
        session = ui.post("/preview/sessions", headers={"Accept": "application/json"}).json()
        opened = threading.Event()

        def listen() -> None:
            with ui.stream("GET", f"/preview/api/s/{session['id']}/stream") as stream:
                opened.set()
                for _ in stream.iter_lines():
                    pass

        reader = threading.Thread(target=listen, daemon=True)
        reader.start()
        assert opened.wait(10)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 5  # not the whole graceful-shutdown timeout
        reader.join(5)
        assert not reader.is_alive()


def test_the_curl_example_comes_from_the_container_s_clients(tmp_path):
    """The session shows how to send a hit by hand: the example the container's client gives
    (the events API's, at its configured path), else a bare request marked for the session."""
    custom = minimal_container(clients=[{"name": "s2s", "type": "events_api",
                                         "params": {"path": "/crm/events"}}])  # fmt: skip
    with preview_app(tmp_path, custom) as c:
        sign_in(c)
        session = start_session(c)
        curl = session["curl"]
        assert curl.splitlines() == [
            "curl -X POST http://sgtm.shop.test/crm/events \\",
            "  -H 'Authorization: Bearer <one of TAGSERVER_API_KEYS>' \\",
            "  -H 'Content-Type: application/json' \\",
            f"  -H 'X-Tagserver-Preview: {session['token']}' \\",
            """  -d '{"event_name": "test_event", "page_title": "sent with curl"}'""",
        ]
    browser_only = minimal_container(clients=[{"name": "collector", "type": "collector"}])
    (tmp_path / "b").mkdir()
    with preview_app(tmp_path / "b", browser_only) as c:
        sign_in(c)
        session = start_session(c)
        assert session["curl"].splitlines() == [
            "curl http://sgtm.shop.test/ \\",
            f"  -H 'X-Tagserver-Preview: {session['token']}'",
        ]
