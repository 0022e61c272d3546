"""Client `events_api`: server-to-server, CRM, POS and offline events.

    POST /api/events
    Authorization: Bearer <one of TAGSERVER_API_KEYS>
    {"event_name": "purchase", ...}            one event, or
    {"events": [{...}, {...}]}                 several (up to the configured count)

Each event is checked on its own: the response lists, per index, whether it was accepted
(with its event id and the tags it fired) or why not. An event may carry its own
`event_time` (unix seconds or ISO 8601) and the customer's own `ip_override`/`user_agent`.
"""

from __future__ import annotations

import hmac
import ipaddress
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tagserver import (
    MAX_EVENTS,
    BadRequest,
    Client,
    Event,
    Example,
    Hit,
    HitError,
    Param,
    Setting,
    Settings,
    Unauthorized,
)
from tagserver.toolkit.events import CONSENT_TYPES, add_page_parts

MAX_STRING = 8192
STRING_FIELDS = frozenset((
    "event_name", "event_id", "client_id", "user_agent", "page_location", "page_referrer",
    "page_title", "page_hostname", "page_path", "language", "screen_resolution", "user_id",
    "currency", "transaction_id", "search_term", "action_source",
    # click ids and browser ids for the ad platforms' tags, as the browser clients set them
    "x-fb-ck-fbp", "x-fb-ck-fbc", "x-tt-ck-ttclid", "x-tt-ck-ttp", "x-pin-ck-epik",
    "x-sc-ck-sccid", "x-sc-ck-scid",
))  # fmt: skip
ID_FIELDS = frozenset(("event_id", "client_id", "user_id", "transaction_id"))  # ints become strings
OBJECT_FIELDS = ("user_data", "consent", "custom_data")

API_KEYS = Setting(
    "api_keys", "", "Comma-separated bearer keys accepted by the events API.", secret=True
)


class EventError(ValueError):
    """One event of the batch is invalid; the message names the field."""


class JsonResponse(Response):
    """A JSON response whose headers are built by hand: Starlette's `init_headers` costs
    microseconds per hit. Same bytes on the wire as `Response(..., media_type=json)`."""

    media_type = "application/json"

    def __init__(self, body: bytes, status_code: int = 200) -> None:
        self.status_code = status_code
        self.background = None
        self.body = body
        self.raw_headers = [
            (b"content-length", str(len(body)).encode("latin-1")),
            (b"content-type", b"application/json"),
        ]


def json_response(body: Any, status: int = 200) -> Response:
    return JsonResponse(orjson.dumps(body), status)


def parse_event_time(value: Any, now: float) -> int:
    """Unix seconds (int/float, milliseconds tolerated) or ISO 8601 → unix seconds."""
    if isinstance(value, bool):
        raise EventError("event_time: expected unix seconds or an ISO 8601 date, got boolean")
    if isinstance(value, (int, float)):
        seconds = float(value)
        if seconds > 1e11:  # clearly milliseconds
            seconds /= 1000
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                raise EventError(
                    f"event_time: {value[:40]!r} is neither unix seconds nor ISO 8601"
                ) from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            seconds = parsed.timestamp()
    else:
        raise EventError(
            f"event_time: expected unix seconds or an ISO 8601 date, got {type(value).__name__}"
        )
    if not 0 < seconds < now + 366 * 86400 * 10:
        raise EventError(f"event_time: {value!r} is out of range")
    return int(seconds)


def check_event(raw: Any, now: float) -> Event:
    """A validated copy of one event, or EventError naming the field."""
    if not isinstance(raw, dict):
        raise EventError(f"expected an object, got {type(raw).__name__}")
    event: Event = dict(raw)
    name = event.get("event_name")
    if not isinstance(name, str) or not name.strip():
        raise EventError("event_name: required, a non-empty string")
    if len(name) > 100:
        raise EventError("event_name: longer than 100 characters")
    # most values are plain strings, whose length is all there is to check: test that first
    for key, value in event.items():
        if type(value) is str:
            if len(value) > MAX_STRING and key in STRING_FIELDS:
                raise EventError(f"{key}: longer than {MAX_STRING} characters")
        elif value is not None and key in STRING_FIELDS:
            if key in ID_FIELDS and isinstance(value, int) and not isinstance(value, bool):
                event[key] = value = str(value)
            if not isinstance(value, str):
                raise EventError(f"{key}: expected a string, got {type(value).__name__}")
            if len(value) > MAX_STRING:
                raise EventError(f"{key}: longer than {MAX_STRING} characters")
    for key in OBJECT_FIELDS:
        if key in event and not isinstance(event[key], dict):
            raise EventError(f"{key}: expected an object, got {type(event[key]).__name__}")
    consent = event.get("consent")
    for key, value in consent.items() if consent else ():
        if key not in CONSENT_TYPES:
            raise EventError(
                f"consent.{key}: unknown consent type (known: {', '.join(CONSENT_TYPES)})"
            )
        if value not in ("granted", "denied", True, False):
            raise EventError(f'consent.{key}: expected "granted" or "denied"')
    value = event.get("value")  # a plain float or int (most events) needs no more checks
    if value is not None and type(value) is not float and type(value) is not int:
        if isinstance(value, str):
            try:
                event["value"] = float(value)
            except ValueError:
                raise EventError(f"value: {value[:40]!r} is not a number") from None
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EventError(f"value: expected a number, got {type(value).__name__}")
    if "items" in event:
        items = event["items"]
        if not isinstance(items, list):
            raise EventError("items: expected a list of objects")
        for item in items:
            if not isinstance(item, dict):
                raise EventError("items: expected a list of objects")
        if len(items) > 1000:
            raise EventError("items: more than 1000 items")
    if event.get("ip_override") is not None:
        ip = event["ip_override"]
        try:
            ipaddress.ip_address(ip if isinstance(ip, str) else "")
        except ValueError:
            raise EventError(f"ip_override: {str(ip)[:60]!r} is not an IP address") from None
    if "event_time" in event and event["event_time"] is not None:
        event["event_time"] = parse_event_time(event["event_time"], now)
    add_page_parts(event)
    return event


class EventsApiClient(Client):
    type_name = "events_api"
    description = "Server-to-server events: POST /api/events with a bearer API key."
    default_priority = 10
    params = (
        Param("path", "string", default="/api/events", description="Path this client claims."),
        MAX_EVENTS,
    )
    server_settings = (API_KEYS,)

    def __init__(self, name: str, params: dict[str, Any], settings: Settings) -> None:
        super().__init__(name, params, settings)
        self.path = params.get("path") or "/api/events"
        self.max_events = self.max_events_from(params)
        self.keys = [k.strip().encode() for k in settings.get(API_KEYS).split(",") if k.strip()]

    def claim(self, request: Request) -> bool:
        return request.scope["path"] == self.path

    def example(self) -> Example:
        return Example(
            "POST",
            self.path,
            (
                ("Authorization", "Bearer <one of TAGSERVER_API_KEYS>"),
                ("Content-Type", "application/json"),
            ),
            '{"event_name": "test_event", "page_title": "sent with curl"}',
        )

    def authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        given = token.strip().encode()
        ok = False
        for key in self.keys:  # compare with every key, always: no timing hint of which matched
            ok |= hmac.compare_digest(given, key)
        return ok

    async def handle(self, request: Request, hit: Hit) -> Response:
        if request.method != "POST":
            raise HitError(f"{self.path} accepts POST only", status=405, headers={"Allow": "POST"})
        if not self.keys:
            raise Unauthorized("the events API is disabled: set TAGSERVER_API_KEYS")
        if not self.authorized(hit.request.headers.get("authorization", "")):
            raise Unauthorized("missing or wrong API key (send Authorization: Bearer <key>)")
        try:
            body = orjson.loads(hit.body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None
        if isinstance(body, dict) and "events" in body:
            raw_events = body["events"]
            if not isinstance(raw_events, list):
                raise BadRequest("events: expected a list of event objects")
        elif isinstance(body, dict):
            raw_events = [body]
        else:
            raise BadRequest('body must be an event object or {"events": [...]}')
        if not raw_events:
            raise BadRequest("events: the list is empty")
        if len(raw_events) > self.max_events:
            raise HitError(
                f"events: {len(raw_events)} events, more than the limit of {self.max_events}",
                status=413,
            )

        now = hit.request.received_at
        events: list[Event] = []
        rows: list[dict[str, Any] | None] = []
        for index, raw in enumerate(raw_events):
            try:
                events.append(check_event(raw, now))
                rows.append(None)  # an accepted event: summarised below, once it has run
            except EventError as exc:
                rows.append({"index": index, "accepted": False, "reason": str(exc)})
        # one result per event, in order (no `zip(strict=True)`: its keyword costs ~0.3 us)
        results = iter(await hit.run(events))
        for index, row in enumerate(rows):
            if row is None:
                rows[index] = next(results).summary(index)
        body = {"accepted": len(events), "rejected": len(rows) - len(events), "results": rows}
        return json_response(body, 200 if events else 400)
