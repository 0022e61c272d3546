"""A fake Graph API for the Conversions API: a real HTTP server on 127.0.0.1, on the
fake-vendor kit (fakes/capi.py) like the other conversions APIs' stand-ins.

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
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from .capi import ApiRequest, FakeApi, Invalid, Reply

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


class Refused(Invalid):
    def __init__(self, subcode: int, message: str, title: str = "Invalid parameter") -> None:
        super().__init__(message)
        self.subcode, self.message, self.title = subcode, message, title


GraphRequest = ApiRequest


@dataclass
class FakeGraph(FakeApi):
    pixel_ids: set[str] | None = None  # None: any numeric id exists
    outage_style: str = "graph"  # graph (5xx with a transient envelope) | html | drop
    throttle_code: int = 17
    reject: dict[str, Any] = field(default_factory=dict)  # event_id → subcode

    def start(self) -> FakeGraph:
        super().start()
        return self

    def __enter__(self) -> FakeGraph:
        return self.start()

    # -- the kit's hooks

    def decode(self, raw: bytes, headers: dict[str, str], query: dict[str, str]) -> Any:
        body = _decode(raw, headers.get("content-type", ""))
        if isinstance(body, dict) and "access_token" in body and "access_token" not in query:
            query["access_token"] = str(body.pop("access_token"))
        return body

    def response_headers(self) -> dict[str, str]:
        return {"x-fb-trace-id": _trace()}

    def outage(self) -> Reply:
        return Reply(503, _error(2, None, "Service temporarily unavailable", transient=True))

    def get(self, request: ApiRequest) -> Reply:
        return Reply(400, _error(100, None, "Unsupported get request."))

    def _reply(self, request: ApiRequest) -> Reply:
        if self.mode == "outage":
            return self.outage()
        status, answer, extra = self._answer(request.path, request.query, request.body)
        return Reply(status, answer, extra)

    # -- the Graph API

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
