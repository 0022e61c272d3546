"""What preview records about a hit beyond its events: events a client refused, the answer sent
back, where each message's delivery stands, dry runs; and the small things around it (header
charsets, static files). The browser side of the same is in test_preview_browser_trace.py."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from support import LOOPBACK, minimal_container, wait_until
from test_preview import API, hits, preview_app, sign_in, start_session, wait_hits

from tagserver.web.app import header_dict


def detail(c: Any, sid: str, trace_id: str) -> dict[str, Any]:
    r = c.get(f"/preview/api/s/{sid}/hits/{trace_id}")
    assert r.status_code == 200, r.text
    return r.json()


def tag_results(c: Any, tag: str) -> dict[str, float]:
    """`tagserver_tag_results_total` of one tag, by status, as /metrics shows it."""
    pattern = re.compile(r'tagserver_tag_results_total\{status="(\w+)",tag="' + tag + r'"\} (\S+)')
    return {m[1]: float(m[2]) for m in pattern.finditer(c.get("/metrics").text)}


def collector_container(**overrides: Any) -> dict[str, Any]:
    return minimal_container(
        clients=[{"name": "collector", "type": "collector"},
                 {"name": "events_api", "type": "events_api"}],
        **overrides,
    )  # fmt: skip


class StatusVendor:
    """A webhook receiver on loopback: `/ok` answers 200, `/refuse` 400 with a reason, `/busy`
    503 (try again later)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("content-length") or 0))
                ok = self.path == "/ok"
                body = json.dumps({"ok": True} if ok else {"error": "unknown list id 42"}).encode()
                self.send_response({"/ok": 200, "/busy": 503}.get(self.path, 400))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.base = f"http://{LOOPBACK}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StatusVendor:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- rejected events ---------------------------------------------------------------------------


def test_an_event_the_events_api_rejects_shows_with_its_index_and_reason(tmp_path):
    with preview_app(tmp_path) as c:
        sign_in(c)
        session = start_session(c)
        r = c.post(
            "/api/events",
            json={"events": [{"event_name": "purchase", "value": 10},
                             {"event_name": "purchase", "value": "ten"}]},
            headers={**API, "X-Tagserver-Preview": session["token"]},
        )  # fmt: skip
        assert r.status_code == 200 and r.json()["rejected"] == 1
        [hit] = wait_hits(c, session["id"], 1)
        assert hit["rejected"] == 1 and hit["event_count"] == 1  # the list shows the count
        trace = detail(c, session["id"], hit["id"])
        reason = "value: 'ten' is not a number"
        assert trace["rejected"] == [{"index": 1, "reason": reason}]
        messages = [line["message"] for line in trace["console"]]
        assert f"event 1 rejected: {reason}" in messages


def test_a_collector_event_with_a_reserved_parameter_shows_as_rejected(tmp_path):
    with preview_app(tmp_path, collector_container()) as c:
        sign_in(c)
        session = start_session(c)
        body = {"events": [{"name": "page_view"},
                           {"name": "purchase", "params": {"client_id": "forged"}}]}  # fmt: skip
        r = c.post(f"/collect?tagserver_preview={session['token']}", content=json.dumps(body))
        assert r.status_code == 200 and r.json()["rejected"] == 1
        [hit] = wait_hits(c, session["id"], 1)
        assert hit["rejected"] == 1
        reason = "events[1].params.client_id: set by the server, not by the page"
        trace = detail(c, session["id"], hit["id"])
        assert trace["rejected"] == [{"index": 1, "reason": reason}]
        assert f"event 1 rejected: {reason}" in [line["message"] for line in trace["console"]]

        # every event refused: the hit is a 400, and each refusal is still there
        only_bad = {"events": [{"name": "x", "params": {"user_id": "u"}}]}
        r = c.post(f"/collect?tagserver_preview={session['token']}", content=json.dumps(only_bad))
        assert r.status_code == 400
        newest = wait_hits(c, session["id"], 2)[-1]
        assert newest["rejected"] == 1 and newest["status"] == 400
        assert detail(c, session["id"], newest["id"])["rejected"][0]["index"] == 0


# -- the answer sent back ----------------------------------------------------------------------


def test_the_answer_sent_back_shows_status_headers_and_cookie_names_never_values(tmp_path):
    with preview_app(tmp_path, collector_container()) as c:
        sign_in(c)
        session = start_session(c)
        page = "https://www.shop.test/product/mug?fbclid=AbC123"
        body = {"events": [{"name": "page_view", "page": {"page_location": page}}]}
        r = c.post(f"/collect?tagserver_preview={session['token']}", content=json.dumps(body))
        assert r.status_code == 200
        values = [v.split(";", 1)[0].split("=", 1)[1] for v in r.headers.get_list("set-cookie")]
        [hit] = wait_hits(c, session["id"], 1)
        assert hit["page"] == page  # the hit list shows where the hit came from
        assert (hit["method"], hit["path"]) == ("POST", "/collect")
        response = detail(c, session["id"], hit["id"])["response"]
        assert response["status"] == 200
        assert response["headers"]["content-type"] == "application/json"
        names = {cookie["name"]: cookie["attributes"] for cookie in response["cookies"]}
        assert set(names) == {"_fbp", "_fbc", "tagserver_cid"}
        assert "HttpOnly" in names["tagserver_cid"] and "Path=/" in names["_fbp"]
        assert values and all(value not in json.dumps(response) for value in values)


# -- delivery state and dry runs ---------------------------------------------------------------


def test_each_message_shows_where_its_delivery_stands_named_by_its_tag(tmp_path):
    with StatusVendor() as vendor:
        container = minimal_container(tags=[
            {"name": "crm_ok", "type": "http_request", "fire_on": ["all"],
             "params": {"url": vendor.base + "/ok", "body": {"e": "{{event_name}}"}}},
            {"name": "crm_refused", "type": "http_request", "fire_on": ["all"],
             "params": {"url": vendor.base + "/refuse", "body": {"e": "{{event_name}}"}}},
        ])  # fmt: skip
        with preview_app(tmp_path, container) as c:
            sign_in(c)
            session = start_session(c)
            c.post("/api/events", json={"event_name": "lead"},
                   headers={**API, "X-Tagserver-Preview": session["token"]})  # fmt: skip
            [hit] = wait_hits(c, session["id"], 1)
            stats = wait_until(
                lambda: (h := hits(c, session["id"])[0]["deliveries"])["total"] == 2 and h, 15
            )
            assert stats == {"total": 2, "delivered": 1, "retrying": 0, "failed": 1}
            trace = detail(c, session["id"], hit["id"])
            by_tag = {d["tag"]: d for d in trace["deliveries"]}
            assert by_tag["crm_ok"]["outcome"] == "delivered"
            dead = by_tag["crm_refused"]
            assert dead["outcome"] == "dead_letter" and dead["tag_type"] == "http_request"
            assert dead["reason"] == "refused by the vendor"
            assert "unknown list id 42" in dead["error"]


def test_a_dry_run_is_its_own_status_with_its_payload_and_metric(tmp_path):
    container = minimal_container(tags=[
        {"name": "meta", "type": "meta_capi", "fire_on": ["all"], "params": {"pixel_id": ""}},
    ])  # fmt: skip
    with preview_app(tmp_path, container) as c:
        sign_in(c)
        session = start_session(c)
        before = tag_results(c, "meta")  # metrics are the process's: other tests count too
        event = {"event_name": "purchase", "event_id": "o-1", "value": 5, "currency": "EUR",
                 "page_location": "https://shop.test/done", "action_source": "website",
                 "user_agent": "Mozilla/5.0", "ip_override": "203.0.113.9"}  # fmt: skip
        r = c.post(
            "/api/events", json=event, headers={**API, "X-Tagserver-Preview": session["token"]}
        )
        reason = "dry run: no pixel_id and access_token, so nothing is sent"
        assert r.json()["results"][0]["tags_not_fired"] == {"meta": reason}
        [hit] = wait_hits(c, session["id"], 1)
        assert hit["events"][0]["dry_run"] == 1 and hit["events"][0]["fired"] == 0
        [tag] = detail(c, session["id"], hit["id"])["events"][0]["tags"]
        assert tag["status"] == "dry_run" and tag["reason"] == reason and tag["outgoing"] == []
        [dry] = tag["dry_run"]
        assert dry["payload"]["data"][0]["event_id"] == "o-1"
        after = tag_results(c, "meta")
        assert after.get("dry_run", 0) - before.get("dry_run", 0) == 1
        assert after.get("fired", 0) == before.get("fired", 0)


# -- headers and static files ------------------------------------------------------------------


def test_header_values_are_read_as_utf8_with_a_latin1_fallback():
    scope = {"headers": [(b"x-city", "Zürich ✓".encode()), (b"x-old", "café".encode("latin-1"))]}
    assert header_dict(scope) == {"x-city": "Zürich ✓", "x-old": "café"}


def test_a_non_ascii_header_shows_in_preview_as_sent(tmp_path):
    with preview_app(tmp_path) as c:
        sign_in(c)
        session = start_session(c)
        headers = {**API, "X-Tagserver-Preview": session["token"],
                   "X-Store": "Zürich Hauptbahnhof".encode()}  # fmt: skip
        c.post("/api/events", json={"event_name": "visit"}, headers=headers)
        [hit] = wait_hits(c, session["id"], 1)
        shown = detail(c, session["id"], hit["id"])["request"]["headers"]["x-store"]
        assert shown == "Zürich Hauptbahnhof"


def test_static_files_tell_browsers_not_to_sniff(tmp_path):
    with preview_app(tmp_path) as c:
        for path in ("/static/preview.js", "/static/preview.css", "/static/nothing-here.js"):
            r = c.get(path)
            assert r.status_code == (404 if "nothing" in path else 200), path
            assert r.headers["x-content-type-options"] == "nosniff", path
