"""A fake Graph API for the Conversions API: a real HTTP server on 127.0.0.1.

It checks requests the way Meta does (path, token, batch size, required fields, hash formats,
the 7-day rule, customer information strength, test_event_code) and answers the way Graph
does: `{"events_received", "messages", "fbtrace_id"}` or an error envelope with code, subcode
and is_transient. Switches make it misbehave: `outage` (5xx or dropped connections),
`throttle` (codes 17/613/80004), `invalid_token` (190), and `reject` (events with chosen ids
refused with 100/2804xxx, which fails their whole request, as Meta does).

    with FakeGraph(token="tok") as graph:
        settings = Settings.from_env({}, meta_graph_url=graph.url, ...)
        ...
        assert graph.received_ids() == [...]
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

HEX64 = re.compile(r"[0-9a-f]{64}")
FBP = re.compile(r"fb\.\d{1,2}\.\d{1,13}\.\d{1,20}(?:\.[A-Za-z0-9_-]{1,64})?")
FBC = re.compile(r"fb\.\d{1,2}\.\d{1,13}\.[A-Za-z0-9_-]{1,500}(?:\.[A-Za-z0-9_-]{1,64})?")
PATH = re.compile(r"/(v\d+\.\d+)/(\d+)/events")
HASHED = ("em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country")
ACTION_SOURCES = {
    "website", "app", "email", "phone_call", "chat", "physical_store", "system_generated",
    "business_messaging", "other",
}  # fmt: skip
WEAK = (
    {"ct", "country", "st", "zp", "ge", "client_user_agent"},
    {"db", "client_user_agent"},
    {"fn", "ge"},
    {"ln", "ge"},
)
CURRENCIES = {"USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "SEK", "NOK", "DKK", "PLN", "BRL"}
DAY = 86400


class Refused(Exception):
    def __init__(self, subcode: int, message: str, title: str = "Invalid parameter") -> None:
        super().__init__(message)
        self.subcode, self.message, self.title = subcode, message, title


@dataclass
class GraphRequest:
    """One request as the fake saw it, and what it answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw_body: bytes = b""
    status: int = 0
    answer: Any = None

    @property
    def events(self) -> list[dict[str, Any]]:
        data = self.body.get("data") if isinstance(self.body, dict) else None
        return data if isinstance(data, list) else []

    @property
    def accepted(self) -> bool:
        return self.status == 200


@dataclass
class FakeGraph:
    token: str = "test-token"
    pixel_ids: set[str] | None = None  # None: any numeric id exists
    now: Any = time.time
    mode: str = "ok"  # ok | outage | throttle | invalid_token
    outage_style: str = "graph"  # graph (5xx with a transient envelope) | html | drop
    throttle_code: int = 17
    reject: dict[str, int] = field(default_factory=dict)  # event_id → subcode
    delay: float = 0.0
    requests: list[GraphRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> FakeGraph:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True
            wbufsize = 65536  # headers and body leave in one write (no delayed-ACK stall)

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                fake._handle(self)

            def do_GET(self) -> None:  # noqa: N802
                fake._send(self, 400, _error(100, None, "Unsupported get request."))

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a dropped connection (outage "drop") is on purpose

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeGraph:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- what tests read

    def accepted_events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [e for r in self.requests if r.accepted for e in r.events]

    def received_ids(self) -> list[str]:
        return [e.get("event_id") for e in self.accepted_events()]

    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- the Graph API

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        if self.delay:
            time.sleep(self.delay)
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        parts = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        headers = {k.lower(): v for k, v in handler.headers.items()}
        body = _decode(raw, headers.get("content-type", ""))
        if isinstance(body, dict) and "access_token" in body and "access_token" not in query:
            query["access_token"] = str(body.pop("access_token"))
        record = GraphRequest("POST", parts.path, query, headers, body, raw)
        with self._lock:
            self.requests.append(record)

        if self.mode == "outage":
            if self.outage_style == "drop":
                handler.close_connection = True
                handler.connection.shutdown(2)
                record.status = 0
                return
            if self.outage_style == "html":
                return self._send(handler, 502, "<html>Bad gateway</html>", record, html=True)
            answer = _error(2, None, "Service temporarily unavailable", transient=True)
            return self._send(handler, 503, answer, record)
        status, answer, extra = self._answer(parts.path, query, body)
        self._send(handler, status, answer, record, headers=extra)

    def _answer(
        self, path: str, query: dict[str, str], body: Any
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        match = PATH.fullmatch(path)
        if match is None:
            return 400, _error(2500, None, f"Unknown path components: {path}"), {}
        pixel = match.group(2)
        token = query.get("access_token")
        if not token:
            return (
                400,
                _error(104, None, "An access token is required to request this resource."),
                {},
            )
        if self.mode == "invalid_token" or token != self.token:
            return (
                400,
                _error(190, None, "Invalid OAuth access token - Cannot parse access token"),
                {},
            )
        if self.pixel_ids is not None and pixel not in self.pixel_ids:
            message = (
                f"Unsupported post request. Object with ID '{pixel}' does not exist, cannot be "
                "loaded due to missing permissions, or does not support this operation"
            )
            return 400, _error(100, 33, message), {}
        if self.mode == "throttle":
            usage = {pixel: [{"type": "ads_management", "call_count": 100,
                              "estimated_time_to_regain_access": 2}]}  # fmt: skip
            return (
                400,
                _error(self.throttle_code, None, "User request limit reached", transient=True),
                {"x-business-use-case-usage": json.dumps(usage)},
            )
        if not isinstance(body, dict):
            return 400, _error(100, None, "Invalid parameter: the body is not JSON"), {}
        data = body.get("data")
        if not isinstance(data, list) or not data:
            return 400, _error(100, None, "The parameter data is required"), {}
        if len(data) > 1000:
            return 400, _error(100, 2804019, "data: at most 1000 events per request"), {}
        code = body.get("test_event_code")
        if code is not None and (not isinstance(code, str) or not code):
            return 400, _error(100, None, "Invalid parameter test_event_code"), {}
        for index, event in enumerate(data):
            try:
                self._check_event(event)
            except Refused as refused:
                message = f"Invalid parameter: data[{index}]: {refused.message}"
                return 400, _error(100, refused.subcode, message, title=refused.title), {}
        return 200, {"events_received": len(data), "messages": [], "fbtrace_id": _trace()}, {}

    def _check_event(self, event: Any) -> None:
        if not isinstance(event, dict):
            raise Refused(2804019, "each event must be an object")
        name = event.get("event_name")
        if not isinstance(name, str) or not name or len(name) > 50:
            raise Refused(2804019, "event_name is required (at most 50 characters)")
        event_time = event.get("event_time")
        if not isinstance(event_time, int) or isinstance(event_time, bool):
            raise Refused(2804019, "event_time must be an integer (unix seconds)")
        source = event.get("action_source")
        if source not in ACTION_SOURCES:
            raise Refused(2804019, "action_source is required and must be a known value")
        age = self.now() - event_time
        if age > (62 if source == "physical_store" else 7) * DAY:
            raise Refused(2804003, "event_time is too far in the past", "Event Timestamp Too Old")
        if age < -60:
            raise Refused(2804004, "event_time is in the future", "Event Timestamp In Future")
        user = event.get("user_data")
        if not isinstance(user, dict) or not user:
            raise Refused(2804019, "user_data is required")
        if source == "website":
            if not isinstance(event.get("event_source_url"), str) or not event["event_source_url"]:
                raise Refused(2804019, "event_source_url is required for website events")
            if not isinstance(user.get("client_user_agent"), str) or not user["client_user_agent"]:
                raise Refused(2804019, "client_user_agent is required for website events")
        for key in HASHED:
            if key in user:
                values = user[key] if isinstance(user[key], list) else [user[key]]
                if not values or not all(isinstance(v, str) and HEX64.fullmatch(v) for v in values):
                    raise Refused(2804019, f"user_data.{key} must be SHA-256 hashes (64 hex)")
        if "external_id" in user:
            values = (
                user["external_id"]
                if isinstance(user["external_id"], list)
                else [user["external_id"]]
            )
            if not values or not all(isinstance(v, str) and v for v in values):
                raise Refused(2804019, "user_data.external_id must be strings")
        if "client_ip_address" in user:
            try:
                ipaddress.ip_address(user["client_ip_address"])
            except (ValueError, TypeError):
                raise Refused(2804019, "client_ip_address is not an IP address") from None
        if "fbc" in user and not (isinstance(user["fbc"], str) and FBC.fullmatch(user["fbc"])):
            raise Refused(2804001, "fbc is malformed", "Invalid Click ID")
        if "fbp" in user and not (isinstance(user["fbp"], str) and FBP.fullmatch(user["fbp"])):
            raise Refused(2804019, "fbp is malformed")
        keys = set(user)
        if any(keys <= weak for weak in WEAK):
            raise Refused(
                2804050,
                "the customer information parameters are too weak to match",
                "Too Little Customer Information",
            )
        custom = event.get("custom_data")
        if custom is not None:
            if not isinstance(custom, dict):
                raise Refused(2804019, "custom_data must be an object")
            value = custom.get("value")
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float))
            ):
                raise Refused(2804019, "custom_data.value must be a number")
            currency = custom.get("currency")
            if currency is not None and str(currency).upper() not in CURRENCIES:
                raise Refused(2804019, "custom_data.currency must be an ISO 4217 code")
            contents = custom.get("contents")
            if contents is not None and not (
                isinstance(contents, list)
                and all(isinstance(c, dict) and "id" in c for c in contents)
            ):
                raise Refused(2804019, "custom_data.contents must be a list of objects with id")
        event_id = event.get("event_id")
        if event_id in self.reject:
            raise Refused(self.reject[event_id], f"event {event_id} was refused")

    def _send(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        answer: Any,
        record: GraphRequest | None = None,
        html: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        body = answer.encode() if html else json.dumps(answer).encode()
        if record is not None:
            record.status, record.answer = status, answer
        handler.send_response(status)
        handler.send_header("content-type", "text/html" if html else "application/json")
        handler.send_header("content-length", str(len(body)))
        handler.send_header("x-fb-trace-id", _trace())
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(body)


def _decode(raw: bytes, content_type: str) -> Any:
    """JSON body, or form-encoded with `data` as a JSON string (both are Meta's)."""
    try:
        if "application/x-www-form-urlencoded" in content_type:
            form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            if "data" in form:
                form["data"] = json.loads(form["data"])
            return form
        return json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        return None


def _trace() -> str:
    return "A" + secrets.token_urlsafe(15)


def _error(
    code: int,
    subcode: int | None,
    message: str,
    *,
    transient: bool = False,
    title: str = "",
) -> dict[str, Any]:
    error: dict[str, Any] = {
        "message": message,
        "type": "OAuthException",
        "code": code,
        "is_transient": transient,
        "fbtrace_id": _trace(),
    }
    if subcode is not None:
        error["error_subcode"] = subcode
        error["error_user_title"] = title or "Invalid parameter"
        error["error_user_msg"] = message
    return {"error": error}
