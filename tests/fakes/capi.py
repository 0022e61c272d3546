"""One fake-vendor kit for conversions APIs, and TikTok, Pinterest and Snapchat stand-ins on it
(the Graph API stand-in, fakes/graph.py, builds on it too).

`FakeApi` is a real HTTP server on 127.0.0.1 that records every request, validates each event
the way the vendor's reference says (`check_event`, per vendor) and answers in the vendor's
own shapes. Switches make it misbehave, the same way for every vendor:

    mode = "ok" | "outage" (5xx) | "throttle" (the vendor's rate-limit answer) | "invalid_token"
    outage_style = "answer" (the vendor's 5xx) | "html" (a proxy's 502 page) | "drop"
    reject = {event_id: reason}     events refused as invalid (the vendor decides whether that
                                    fails the whole request or only the event)
    delay = seconds                 before every answer (timeouts)

    with FakeTikTok(token="tok") as tiktok:
        settings = Settings(tiktok_api_url=tiktok.url, ...)
        ...
        assert tiktok.received_ids() == [...]
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

HEX64 = re.compile(r"[0-9a-f]{64}")
DAY = 86400


class Invalid(Exception):
    """An event the vendor refuses; the message is the vendor's reason."""


@dataclass
class ApiRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw_body: bytes = b""
    status: int = 0
    answer: Any = None

    @property
    def accepted(self) -> bool:
        taken = self.answer.get("_taken") if isinstance(self.answer, dict) else None
        return 200 <= self.status < 300 and taken != []

    @property
    def events(self) -> list[dict[str, Any]]:
        data = self.body.get("data") if isinstance(self.body, dict) else None
        return data if isinstance(data, list) else []


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeApi:
    token: str = "test-token"
    mode: str = "ok"
    reject: dict[str, Any] = field(default_factory=dict)
    now: Any = time.time
    delay: float = 0.0
    outage_style: str = "answer"
    requests: list[ApiRequest] = field(default_factory=list)

    # -- what a vendor stand-in provides

    def route(self, request: ApiRequest) -> Reply | None:
        """Path and token checks: a Reply to refuse the request, None when they hold."""
        raise NotImplementedError

    def check_event(self, event: Any) -> None:
        """Raise `Invalid` when the vendor would refuse `event`."""
        raise NotImplementedError

    def ok(self, request: ApiRequest, events: list[Any]) -> Reply:
        raise NotImplementedError

    def refused(self, request: ApiRequest, failures: dict[int, str]) -> Reply:
        """The answer when the events at these indexes are invalid."""
        raise NotImplementedError

    def throttled(self) -> Reply:
        raise NotImplementedError

    def unauthorized(self) -> Reply:
        raise NotImplementedError

    def outage(self) -> Reply:
        return Reply(503, {"message": "service unavailable"})

    def rejected(self, event_id: str, value: Any) -> Invalid:
        """The refusal of an event listed in `reject`."""
        return Invalid(str(value))

    def decode(self, raw: bytes, headers: dict[str, str], query: dict[str, str]) -> Any:
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def response_headers(self) -> dict[str, str]:
        return {}

    def get(self, request: ApiRequest) -> Reply:
        return Reply(405, {"message": "POST only"})

    # -- lifecycle

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> FakeApi:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                fake._handle(self)

            def do_GET(self) -> None:  # noqa: N802
                fake._handle(self, get=True)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a dropped connection (outage "drop") is on purpose

        self._server = Server(("127.0.0.1", 0), Handler)
        thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- what tests read

    def accepted_events(self) -> list[dict[str, Any]]:
        """Events the vendor took (per event: a partly refused request keeps the good ones
        only when the vendor answers per event)."""
        with self._lock:
            out = []
            for r in self.requests:
                taken = r.answer.get("_taken") if isinstance(r.answer, dict) else None
                if taken is not None:
                    out.extend(r.events[i] for i in taken)
                elif r.accepted:
                    out.extend(r.events)
            return out

    def received_ids(self) -> list[str]:
        return [e.get("event_id") for e in self.accepted_events()]

    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.accepted_events()
            if len(events) >= count:
                return events
            time.sleep(0.02)
        raise AssertionError(f"{len(self.accepted_events())} events accepted, expected {count}")

    # -- serving

    def _handle(self, handler: BaseHTTPRequestHandler, get: bool = False) -> None:
        if self.delay:
            time.sleep(self.delay)
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        parts = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        headers = {k.lower(): v for k, v in handler.headers.items()}
        if get:
            return self._send(
                handler, self.get(ApiRequest("GET", parts.path, query, headers, None))
            )
        body = self.decode(raw, headers, query)
        request = ApiRequest("POST", parts.path, query, headers, body, raw)
        with self._lock:
            self.requests.append(request)
        if self.mode == "outage" and self.outage_style == "drop":
            handler.close_connection = True
            handler.connection.shutdown(2)
            return None
        if self.mode == "outage" and self.outage_style == "html":
            reply = Reply(502, "<html>Bad gateway</html>")
        else:
            reply = self._reply(request)
        request.status, request.answer = reply.status, reply.body
        return self._send(handler, reply)

    def _send(self, handler: BaseHTTPRequestHandler, reply: Reply) -> None:
        if isinstance(reply.body, str):
            data, kind = reply.body.encode(), "text/html"
        else:
            shown = {k: v for k, v in reply.body.items() if k != "_taken"}
            data, kind = json.dumps(shown).encode(), "application/json"
        handler.send_response(reply.status)
        handler.send_header("content-type", kind)
        handler.send_header("content-length", str(len(data)))
        for key, value in {**self.response_headers(), **reply.headers}.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _reply(self, request: ApiRequest) -> Reply:
        if self.mode == "outage":
            return self.outage()
        refusal = self.route(request)
        if refusal is not None:
            return refusal
        if self.mode == "invalid_token":
            return self.unauthorized()
        if self.mode == "throttle":
            return self.throttled()
        events = request.events
        failures: dict[int, str] = {}
        for index, event in enumerate(events):
            try:
                self.check_event(event)
                if isinstance(event, dict) and event.get("event_id") in self.reject:
                    raise self.rejected(event["event_id"], self.reject[event["event_id"]])
            except Invalid as exc:
                failures[index] = str(exc)
        if failures:
            return self.refused(request, failures)
        return self.ok(request, events)

    # -- shared checks

    def require_hashes(self, user: dict[str, Any], keys: tuple[str, ...], *, lists: bool) -> None:
        for key in keys:
            if key not in user:
                continue
            values = user[key]
            if lists and not isinstance(values, list):
                raise Invalid(f"user_data.{key} must be an array of SHA-256 hashes")
            values = values if isinstance(values, list) else [values]
            if not values or not all(isinstance(v, str) and HEX64.fullmatch(v) for v in values):
                raise Invalid(f"{key} must be SHA-256 hashed (64 lowercase hex)")

    def require_time(self, event: dict[str, Any], max_age: int) -> None:
        event_time = event.get("event_time")
        if not isinstance(event_time, int) or isinstance(event_time, bool):
            raise Invalid("event_time must be an integer (unix seconds)")
        if self.now() - event_time > max_age:
            raise Invalid("Given timestamp is in the past")
        if event_time > self.now() + 300:
            raise Invalid("event_time is in the future")


# -- TikTok ---------------------------------------------------------------------------------------

TIKTOK_PATH = re.compile(r"/open_api/(v\d+\.\d+)/event/track/")


@dataclass
class FakeTikTok(FakeApi):
    """TikTok Events API 2.0: HTTP 200 always, the body's `code` says what happened; one bad
    event fails the whole batch with 40002."""

    pixel_code: str | None = None

    def route(self, request: ApiRequest) -> Reply | None:
        if not TIKTOK_PATH.fullmatch(request.path):
            return Reply(404, {"code": 40051, "message": "invalid API version or path"})
        token = request.headers.get("access-token")
        if not token:
            return _tiktok(40104, "Access token is empty")
        if token != self.token:
            return _tiktok(40105, "Access token is incorrect or has been revoked")
        body = request.body
        if not isinstance(body, dict) or body.get("event_source") != "web":
            return _tiktok(40002, "Invalid value for event_source")
        if self.pixel_code is not None and body.get("event_source_id") != self.pixel_code:
            return _tiktok(40001, "No permission to operate pixel")
        data = body.get("data")
        if not isinstance(data, list) or not 1 <= len(data) <= 1000:
            return _tiktok(40061, "Invalid batch size")
        return None

    def check_event(self, event: Any) -> None:
        if not isinstance(event, dict):
            raise Invalid("each event must be an object")
        if not isinstance(event.get("event"), str) or not event["event"]:
            raise Invalid("Invalid value for event")
        if not isinstance(event.get("event_id"), str) or not event["event_id"]:
            raise Invalid("Invalid value for event_id: not a valid string.")
        self.require_time(event, 28 * DAY)
        user = event.get("user")
        if not isinstance(user, dict):
            raise Invalid("user is required")
        for key in ("email", "phone", "external_id", "first_name", "last_name", "zip_code"):
            values = user.get(key)
            if values is None:
                continue
            values = values if isinstance(values, list) else [values]
            if not all(isinstance(v, str) and HEX64.fullmatch(v) for v in values):
                raise Invalid(f"PII not hashed: user.{key}")
        page = event.get("page")
        if not isinstance(page, dict) or not isinstance(page.get("url"), str):
            raise Invalid("Invalid value for page.url")
        props = event.get("properties") or {}
        if "value" in props and not isinstance(props["value"], (int, float)):
            raise Invalid("Invalid value for properties.value")
        if "currency" in props and not re.fullmatch(r"[A-Z]{3}", str(props["currency"])):
            raise Invalid("Invalid value for properties.currency")

    def ok(self, request: ApiRequest, events: list[Any]) -> Reply:
        return _tiktok(0, "OK")

    def refused(self, request: ApiRequest, failures: dict[int, str]) -> Reply:
        index, reason = next(iter(failures.items()))
        return _tiktok(40002, f"data[{index}]: {reason}")

    def throttled(self) -> Reply:
        return _tiktok(40100, "Request too frequent")

    def unauthorized(self) -> Reply:
        return _tiktok(40105, "Access token is incorrect or has been revoked")


def _tiktok(code: int, message: str, status: int = 200) -> Reply:
    body: dict[str, Any] = {"code": code, "message": message, "request_id": "req-1", "data": {}}
    if code != 0:
        body["_taken"] = []  # HTTP 200, yet nothing was taken
    return Reply(status, body)


# -- Pinterest ------------------------------------------------------------------------------------

PINTEREST_PATH = re.compile(r"/v5/ad_accounts/(\d+)/events")
PINTEREST_NAMES = {
    "add_payment_info", "add_to_cart", "add_to_wishlist", "app_install", "checkout", "custom",
    "initiate_checkout", "lead", "page_visit", "search", "signup", "subscribe",
    "view_category", "view_content", "watch_video",
}  # fmt: skip


@dataclass
class FakePinterest(FakeApi):
    """Pinterest Conversions API v5: per-event statuses; a 422 when some events failed."""

    def route(self, request: ApiRequest) -> Reply | None:
        if not PINTEREST_PATH.fullmatch(request.path):
            return Reply(404, {"code": 3, "message": "not found"})
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return self.unauthorized()
        body = request.body
        if not isinstance(body, dict) or set(body) != {"data"}:
            return Reply(400, {"code": 4196, "message": "The request was invalid."})
        if not isinstance(body["data"], list) or not 1 <= len(body["data"]) <= 1000:
            return Reply(400, {"code": 4196, "message": "The request was invalid."})
        return None

    def check_event(self, event: Any) -> None:
        if not isinstance(event, dict):
            raise Invalid("each event must be an object")
        if event.get("event_name") not in PINTEREST_NAMES:
            raise Invalid("event_name is not a known value")
        if event.get("action_source") not in ("web", "app_android", "app_ios", "offline"):
            raise Invalid("action_source is required")
        if not isinstance(event.get("event_id"), str) or not event["event_id"]:
            raise Invalid("event_id is required")
        self.require_time(event, 7 * DAY)
        user = event.get("user_data")
        if not isinstance(user, dict):
            raise Invalid("user_data is required")
        keys = ("em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country", "external_id")
        self.require_hashes(user, keys, lists=True)
        if "em" not in user and not ("client_ip_address" in user and "client_user_agent" in user):
            raise Invalid("user_data needs em, hashed_maids, or client_ip_address and ua")
        custom = event.get("custom_data") or {}
        if "value" in custom and not isinstance(custom["value"], str):
            raise Invalid("custom_data.value must be a string")
        for item in custom.get("contents") or []:
            if "item_price" in item and not isinstance(item["item_price"], str):
                raise Invalid("contents.item_price must be a string")

    def ok(self, request: ApiRequest, events: list[Any]) -> Reply:
        statuses = [{"status": "processed", "error_message": None, "warning_message": None}
                    for _ in events]  # fmt: skip
        body = {"num_events_received": len(events), "num_events_processed": len(events),
                "events": statuses}  # fmt: skip
        return Reply(200, body)

    def refused(self, request: ApiRequest, failures: dict[int, str]) -> Reply:
        events = request.events
        statuses = [
            {"status": "failed", "error_message": failures[i], "warning_message": None}
            if i in failures
            else {"status": "processed", "error_message": None, "warning_message": None}
            for i in range(len(events))
        ]
        details = {"num_events_received": len(events),
                   "num_events_processed": len(events) - len(failures), "events": statuses}  # fmt: skip
        taken = [i for i in range(len(events)) if i not in failures]
        return Reply(422, {"code": 953, "message": "Not all events were successfully processed",
                           "details": details, "_taken": taken})  # fmt: skip

    def throttled(self) -> Reply:
        return Reply(429, {"code": 8, "message": "Rate limit exceeded"}, {"retry-after": "1"})

    def unauthorized(self) -> Reply:
        return Reply(401, {"code": 2, "message": "Authentication failed."})


# -- Snapchat -------------------------------------------------------------------------------------

SNAP_PATH = re.compile(r"/v3/([0-9a-f-]{36})/events")
SNAP_NAMES = {
    "PAGE_VIEW", "VIEW_CONTENT", "LIST_VIEW", "ADD_CART", "ADD_TO_WISHLIST", "START_CHECKOUT",
    "ADD_BILLING", "PURCHASE", "SIGN_UP", "LOGIN", "SEARCH", "SUBSCRIBE", "SAVE", "SHARE",
    "START_TRIAL", "CUSTOM_EVENT_1", "CUSTOM_EVENT_2", "CUSTOM_EVENT_3", "CUSTOM_EVENT_4",
    "CUSTOM_EVENT_5",
}  # fmt: skip


@dataclass
class FakeSnapchat(FakeApi):
    """Snapchat Conversions API v3: the token in the query; 400 INVALID for a bad event."""

    def route(self, request: ApiRequest) -> Reply | None:
        if not SNAP_PATH.fullmatch(request.path):
            return Reply(404, {"status": "INVALID", "reason": "unknown path"})
        if request.query.get("access_token") != self.token:
            return self.unauthorized()
        body = request.body
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            return Reply(400, {"status": "INVALID", "reason": "data is required"})
        return None

    def check_event(self, event: Any) -> None:
        if not isinstance(event, dict):
            raise Invalid("each event must be an object")
        if event.get("event_name") not in SNAP_NAMES:
            raise Invalid("event_name is not a standard event")
        if event.get("action_source") != "WEB":
            raise Invalid("action_source is required")
        if not event.get("event_source_url"):
            raise Invalid("event_source_url is required for web events")
        if not isinstance(event.get("event_id"), str):
            raise Invalid("event_id must be a string at the top of the event")
        self.require_time(event, 37 * DAY)
        user = event.get("user_data")
        if not isinstance(user, dict):
            raise Invalid("user_data is required")
        keys = ("em", "ph", "fn", "ln", "ge", "ct", "st", "zp", "country", "external_id")
        self.require_hashes(user, keys, lists=False)
        if not ({"em", "ph"} & set(user)) and not (
            "client_ip_address" in user and "client_user_agent" in user
        ):
            raise Invalid("insufficient PII")
        custom = event.get("custom_data") or {}
        if event["event_name"] == "PURCHASE" and not ("value" in custom and "currency" in custom):
            raise Invalid("PURCHASE needs price and currency")

    def ok(self, request: ApiRequest, events: list[Any]) -> Reply:
        return Reply(200, {"status": "VALID", "reason": ""})

    def refused(self, request: ApiRequest, failures: dict[int, str]) -> Reply:
        index, reason = next(iter(failures.items()))
        return Reply(400, {"status": "INVALID", "reason": reason, "event": index,
                           "errors": {"codes": ["INVALID_EVENT"], "error_msgs": [reason]}})  # fmt: skip

    def throttled(self) -> Reply:
        return Reply(429, {"status": "INVALID", "reason": "rate limited"}, {"retry-after": "1"})

    def unauthorized(self) -> Reply:
        return Reply(401, {"status": "INVALID", "reason": "invalid access token"})
