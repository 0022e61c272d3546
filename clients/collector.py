"""Client `collector`: hits sent by our own `collector.js` from the site's pages.

    POST /collect[?tagserver_preview=<token>]        (text/plain, so no CORS preflight)
    {
      "pid": "k3j4h5...",          page id: the same for every hit of one page view
      "ts": 1700000000000,         page load time (ms); with pid, makes new cookies identical
                                   for a new visitor's parallel first hits
      "consent": {"ad_storage": "granted", ...},           optional
      "user": {"email": "...", "phone": "...", "first_name": "...", ...,
               "external_id": "..."},                      optional, raw (hashed by the tags)
      "events": [
        {"name": "purchase", "id": "<uuid>", "params": {"value": 12.5, "currency": "EUR"},
         "page": {"page_location": "...", "page_referrer": "...", "page_title": "...",
                  "language": "en-GB", "screen_resolution": "1920x1080"}}
      ]
    }

Each event becomes one event with the common keys (page data, `params` at the top level like
GA4 event parameters, `user_data{email_address, phone_number, address{...}}`, `user_id`,
`consent`, `action_source: "website"`) plus the visitor's `client_id`, `x-fb-ck-fbp` and
`x-fb-ck-fbc` resolved by `tagserver.toolkit.cookies`, whose `Set-Cookie` headers go on the response.
The request's IP (trusted proxies only) and User-Agent are added by the engine.

The answer is JSON: per event its index, `event_name` and the `event_id` the server used, or
the reason it was rejected. A broken envelope (not JSON, invalid UTF-8, too many events, a
wrong type, control characters) is refused as a whole with a 4xx and a reason. Every answer,
errors included, carries the CORS grant so the page can read it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tagserver import MAX_EVENTS, BadRequest, Client, Event, Hit, HitError, Param
from tagserver.toolkit import cookies, cors, match
from tagserver.toolkit.events import CONSENT_TYPES, add_page_parts, strip_preview

MAX_STRING = 8192
MAX_KEY = 100
MAX_DEPTH = 6
MAX_PARAMS = 200
MAX_ITEMS = 200
MAX_NODES = 20_000  # values in one body, all events together

PAGE_FIELDS = {
    "page_location": MAX_STRING,
    "page_referrer": MAX_STRING,
    "page_title": 1000,
    "language": 35,
    "screen_resolution": 20,
}
USER_FIELDS = {
    "email": ("email_address",),
    "phone": ("phone_number",),
    "first_name": ("address", "first_name"),
    "last_name": ("address", "last_name"),
    "street": ("address", "street"),
    "city": ("address", "city"),
    "region": ("address", "region"),
    "postal_code": ("address", "postal_code"),
    "country": ("address", "country"),
}
TEXT_KEYS = (*PAGE_FIELDS, "page_hostname", "page_path")  # strings wherever they come from
USER_ID_FIELDS = ("external_id", "user_id")
MAX_USER_STRING = 512
# keys the server sets; a page may not send them as event parameters
RESERVED = frozenset(
    {"event_name", "event_id", "event_time", "client_id", "ip_override", "user_agent",
     "user_data", "user_id", "consent", "x-fb-ck-fbp", "x-fb-ck-fbc", "action_source"}
)  # fmt: skip
ENVELOPE_KEYS = frozenset({"v", "pid", "ts", "consent", "user", "logout", "events"})
EVENT_KEYS = frozenset({"name", "id", "params", "page"})
EVENT_ID_RE = re.compile(r"[\x21-\x7e]{1,100}")
CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
SCREEN_RE = re.compile(r"\d{1,6}x\d{1,6}")


class EventError(ValueError):
    """One event of the batch is invalid; the message names the field."""


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body),
        status,
        headers={"Cache-Control": "no-store", **(headers or {})},
        media_type="application/json",
    )


# -- validation -----------------------------------------------------------------------------------


def check_string(value: Any, where: str, limit: int = MAX_STRING) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where}: expected a string, got {type_name(value)}")
    if len(value) > limit:
        raise BadRequest(f"{where}: longer than {limit} characters")
    if CONTROL_RE.search(value):
        raise BadRequest(f"{where}: contains control characters")
    return value


def check_value(
    value: Any, where: str, depth: int, budget: list[int], controls: bool = True
) -> Any:
    """A JSON value within the limits (depth, string sizes, no control characters).

    `controls`: whether strings may hold control characters at all (`may_hold_controls`);
    when not, strings are only measured. The path of a key is spelled out only for a key
    that is refused."""
    budget[0] -= 1
    if budget[0] < 0:
        raise BadRequest(f"body: more than {MAX_NODES} values")
    if isinstance(value, str):
        if len(value) > MAX_STRING or (controls and CONTROL_RE.search(value)):
            check_string(value, where)  # raises, saying why
        return value
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadRequest(f"{where}: not a finite number")
        return value
    if depth >= MAX_DEPTH:
        raise BadRequest(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_value(item, f"{where}[{i}]", depth + 1, budget, controls)
        return value
    if isinstance(value, dict):
        for key, item in value.items():
            if len(key) > MAX_KEY or (controls and CONTROL_RE.search(key)):
                check_string(key, f"{where}: key {key[:40]!r}", MAX_KEY)  # raises
            check_value(item, f"{where}.{key}", depth + 1, budget, controls)
        return value
    raise BadRequest(f"{where}: unsupported type {type_name(value)}")  # pragma: no cover


def fits(value: dict[str, Any] | list[Any], controls: bool) -> bool:
    """True when `check_value` surely accepts this parsed body: the same limits, checked
    without spelling out a path for every value. Most bodies fit; any other is walked again by
    `check_value`, which says what is wrong (so only a True answer must be right)."""
    return _fits(value, 0, [MAX_NODES - 1], controls)


def _fits(value: dict[str, Any] | list[Any], depth: int, budget: list[int], controls: bool) -> bool:
    if depth >= MAX_DEPTH:
        return False
    budget[0] -= len(value)
    if budget[0] < 0:
        return False
    items: Iterable[Any] = value
    if type(value) is dict:
        for key in value:
            if len(key) > MAX_KEY or (controls and CONTROL_RE.search(key)):
                return False
        items = value.values()
    for item in items:
        kind = type(item)  # the parser's own types: a subclass is left to check_value
        if kind is str:
            if len(item) > MAX_STRING or (controls and CONTROL_RE.search(item)):
                return False
        elif kind is dict or kind is list:
            if not _fits(item, depth + 1, budget, controls):
                return False
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif kind is not int and kind is not bool and item is not None:
            return False
    return True


def may_hold_controls(body: bytes) -> bool:
    """False when no string parsed from the JSON `body` can hold a control character: those
    come from an escape (`\\b`, `\\f`, `\\uXXXX`) or a raw DEL, JSON refuses the others
    unescaped. Most bodies have neither, and their strings need no search."""
    return b"\\" in body or b"\x7f" in body


def type_name(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number" if isinstance(value, (int, float)) else "value")


def parse_body(body: bytes, max_events: int) -> dict[str, Any]:
    """The validated envelope, or BadRequest/HitError saying what is wrong."""
    if not body.strip():
        raise BadRequest("empty body: expected a JSON object with an events list")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not valid UTF-8 (byte {exc.start})") from None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"body: expected a JSON object, got {type_name(data)}")
    if not ENVELOPE_KEYS.issuperset(data):
        unknown = sorted(set(data) - ENVELOPE_KEYS)
        raise BadRequest(f"body: unknown field {unknown[0][:40]!r}")
    events = data.get("events")
    if not isinstance(events, list):
        raise BadRequest("events: required, a list of event objects")
    logout = data.get("logout")
    if logout is not None and not isinstance(logout, bool):
        raise BadRequest(f"logout: expected true or false, got {type_name(logout)}")
    if not events and not logout:  # a logout alone may come without events
        raise BadRequest("events: the list is empty")
    if len(events) > max_events:
        raise HitError(
            f"events: {len(events)} events, more than the limit of {max_events}", status=413
        )
    # the parsed body itself (fresh from the parser), checked in place
    controls = may_hold_controls(body)
    if not fits(data, controls):
        check_value(data, "body", 0, [MAX_NODES], controls)  # raises, saying where
    envelope: dict[str, Any] = data
    for key in ("pid",):
        if key in envelope and envelope[key] is not None:
            check_string(envelope[key], key, 128)
    ts = envelope.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float))):
        raise BadRequest(f"ts: expected a number (ms), got {type_name(ts)}")
    envelope["consent"] = parse_consent(envelope.get("consent"))
    envelope["user"] = parse_user(envelope.get("user"))
    return envelope


def parse_consent(raw: Any) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise BadRequest(f"consent: expected an object, got {type_name(raw)}")
    out = {}
    for key, value in raw.items():
        if key not in CONSENT_TYPES:
            raise BadRequest(
                f"consent.{key[:40]}: unknown consent type (known: {', '.join(CONSENT_TYPES)})"
            )
        if value in ("granted", True):
            out[key] = "granted"
        elif value in ("denied", False):
            out[key] = "denied"
        else:
            raise BadRequest(f'consent.{key}: expected "granted" or "denied"')
    return out


def parse_user(raw: Any) -> tuple[dict[str, Any], str | None]:
    """(`user_data` in sGTM's shape, `user_id`) from the page's `user` call."""
    if raw is None:
        return {}, None
    if not isinstance(raw, dict):
        raise BadRequest(f"user: expected an object, got {type_name(raw)}")
    user_data: dict[str, Any] = {}
    user_id = None
    for key, value in raw.items():
        if value is None or value == "":
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # phone numbers, postal codes and ids typed as numbers
        value = check_string(value, f"user.{key}", MAX_USER_STRING).strip()
        if key in USER_ID_FIELDS:
            user_id = value
        elif key in USER_FIELDS:
            *parents, leaf = USER_FIELDS[key]
            target = user_data
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = value
        else:
            known = ", ".join([*USER_FIELDS, *USER_ID_FIELDS])
            raise BadRequest(f"user.{key[:40]}: unknown field (known: {known})")
    return user_data, user_id


def build_event(raw: Any, index: int, envelope: dict[str, Any]) -> Event:
    """One event with the common keys, or EventError naming the field."""
    where = f"events[{index}]"
    if not isinstance(raw, dict):
        raise EventError(f"{where}: expected an object, got {type_name(raw)}")
    if not EVENT_KEYS.issuperset(raw):
        unknown = sorted(set(raw) - EVENT_KEYS)
        raise EventError(
            f"{where}: unknown field {unknown[0][:40]!r} (known: id, name, page, params)"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise EventError(f"{where}.name: required, a non-empty string")
    if len(name) > 100:
        raise EventError(f"{where}.name: longer than 100 characters")
    event: Event = {"event_name": name.strip()}
    event_id = raw.get("id")
    if event_id is not None and event_id != "":
        if not isinstance(event_id, str) or not EVENT_ID_RE.fullmatch(event_id):
            raise EventError(f"{where}.id: expected up to 100 printable characters without spaces")
        event["event_id"] = event_id
    page = raw.get("page") or {}
    if not isinstance(page, dict):
        raise EventError(f"{where}.page: expected an object, got {type_name(page)}")
    for key, value in page.items():
        if key not in PAGE_FIELDS:
            raise EventError(
                f"{where}.page.{key[:40]}: unknown field (known: {', '.join(PAGE_FIELDS)})"
            )
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise EventError(f"{where}.page.{key}: expected a string, got {type_name(value)}")
        if len(value) > PAGE_FIELDS[key]:
            raise EventError(f"{where}.page.{key}: longer than {PAGE_FIELDS[key]} characters")
        if key == "screen_resolution" and not SCREEN_RE.fullmatch(value):
            raise EventError(f"{where}.page.screen_resolution: expected WIDTHxHEIGHT")
        event[key] = value
    params = raw.get("params") or {}
    if not isinstance(params, dict):
        raise EventError(f"{where}.params: expected an object, got {type_name(params)}")
    if len(params) > MAX_PARAMS:
        raise EventError(f"{where}.params: more than {MAX_PARAMS} parameters")
    for key, value in params.items():
        if key in RESERVED:
            raise EventError(f"{where}.params.{key}: set by the server, not by the page")
        event[key] = value
    check_params(event, where)
    consent, (user_data, user_id) = envelope.get("consent"), envelope["user"]
    if consent:
        event["consent"] = dict(consent)
    if user_data:
        event["user_data"] = {
            k: dict(v) if isinstance(v, dict) else v for k, v in user_data.items()
        }
    if user_id:
        event["user_id"] = user_id
    event["action_source"] = "website"
    add_page_parts(event)
    return event


def check_params(event: Event, where: str) -> None:
    """The well-known parameters must have the types tags rely on."""
    value = event.get("value")
    if value is not None:
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise EventError(f"{where}.params.value: {value[:40]!r} is not a number") from None
            event["value"] = value = number
            if not math.isfinite(value):
                raise EventError(f"{where}.params.value: not a finite number")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EventError(f"{where}.params.value: expected a number, got {type_name(value)}")
    for key in ("currency", "transaction_id", "search_term"):
        value = event.get(key)
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and key == "transaction_id"
        ):
            event[key] = value = str(value)
        if value is not None and not isinstance(value, str):
            raise EventError(f"{where}.params.{key}: expected a string, got {type_name(value)}")
    for key in TEXT_KEYS:
        if key in event and not isinstance(event[key], str):
            raise EventError(
                f"{where}.params.{key}: expected a string, got {type_name(event[key])}"
            )
    for key in ("page_location", "page_referrer"):
        if "tagserver_preview=" in event.get(key, ""):
            event[key] = strip_preview(event[key])
    items = event.get("items")
    if items is not None:
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise EventError(f"{where}.params.items: expected a list of objects")
        if len(items) > MAX_ITEMS:
            raise EventError(f"{where}.params.items: more than {MAX_ITEMS} items")


# -- the client -----------------------------------------------------------------------------------


class CollectorClient(Client):
    description = "Hits from collector.js: POST /collect, sets first-party _fbp/_fbc/client id."
    default_priority = 20
    params = (
        Param("path", "string", default="/collect", description="Path this client claims."),
        MAX_EVENTS,
        Param(
            "client_id_cookie",
            "string",
            default=cookies.CLIENT_ID_COOKIE,
            description="Name of the HttpOnly client id cookie.",
        ),
        Param(
            "set_cookies",
            "boolean",
            default=True,
            description="Set _fbp/_fbc/client id and click-id cookies (off: read nothing, set "
            "nothing).",
        ),
        Param(
            "generate_ttp",
            "boolean",
            default=False,
            description="Create TikTok's _ttp browser id when the TikTok pixel has not set one.",
        ),
    )

    def __init__(self, name: str, params: dict[str, Any], settings: Any) -> None:
        super().__init__(name, params, settings)
        self.path = params.get("path") or "/collect"
        self.max_events = self.max_events_from(params)
        self.client_id_cookie = params.get("client_id_cookie") or cookies.CLIENT_ID_COOKIE
        self.set_cookies = params.get("set_cookies", True) is not False
        self.generate_ttp = params.get("generate_ttp") is True
        cookies.registrable_domain("example.com")  # load the Public Suffix List now, not on a hit

    def claim(self, request: Request) -> bool:
        path: str = request.scope["path"]
        return path == self.path

    def script_endpoint(self) -> str:
        return str(self.path)

    async def handle(self, request: Request, hit: Hit) -> Response:
        grant = cors.grant_headers(hit.request, self.settings)
        if request.method == "OPTIONS":
            return cors.preflight(hit.request, self.settings, methods=("POST",))
        try:
            if request.method != "POST":
                raise HitError(
                    f"{self.path} accepts POST only", status=405, headers={"Allow": "POST, OPTIONS"}
                )
            return await self.collect(hit, grant)
        except HitError as exc:
            hit.record_error(exc.reason)
            return json_response({"error": exc.reason}, exc.status, {**exc.headers, **grant})

    async def collect(self, hit: Hit, grant: dict[str, str]) -> Response:
        """Run the hit's events; the answer carries `grant` (the CORS headers) and the
        visitor's cookies."""
        envelope = parse_body(hit.body, self.max_events)
        accepted: list[tuple[int, Event]] = []
        rows: list[dict[str, Any]] = []
        for index, raw in enumerate(envelope["events"]):
            try:
                accepted.append((index, build_event(raw, index, envelope)))
                rows.append({})
            except EventError as exc:
                rows.append({"index": index, "accepted": False, "reason": str(exc)})
                hit.reject(index, str(exc))
        if not accepted and rows:
            reasons = "; ".join(row["reason"] for row in rows[:3])
            raise BadRequest(f"no valid event: {reasons}")
        if not accepted:  # a logout alone: forget the visitor's identity, nothing to run
            answer = {"accepted": 0, "rejected": 0, "events": []}
            return self.remember(hit, envelope, json_response(answer, headers=grant))

        visitor = None
        if self.set_cookies:
            events = [event for _, event in accepted]
            location = next(
                (
                    e["page_location"]
                    for e in events
                    if cookies.has_click_id(e.get("page_location"))
                ),
                events[0].get("page_location"),
            )
            ts = envelope.get("ts")
            visitor = cookies.visitor_cookies(
                hit.request,
                self.settings,
                page_location=location,
                consent=envelope.get("consent"),
                client_id_cookie=self.client_id_cookie,
                seed=envelope.get("pid") or None,
                seed_ms=int(ts) if isinstance(ts, (int, float)) and math.isfinite(ts) else None,
                generate_ttp=self.generate_ttp,
            )
            consent = envelope.get("consent")
            cookies.keep_others(visitor, hit.request, self.settings, hit.cookie_keeper, consent)
            keys = visitor.event_keys()
            for event in events:
                event.update(keys)
            if hit.previewed:
                for cookie, action in visitor.actions.items():
                    hit.log("info", f"cookie {cookie}: {action}")

        results = await hit.run([event for _, event in accepted])
        for (index, _), result in zip(accepted, results, strict=True):
            row = rows[index] = {
                "index": index,
                "accepted": True,
                "event_name": result.event.get("event_name"),
                "event_id": result.event.get("event_id"),
            }
            if result.warnings:  # e.g. a reused event id: the page's developer should know
                row["warnings"] = result.warnings
        response = json_response(
            {"accepted": len(accepted), "rejected": len(rows) - len(accepted), "events": rows},
            headers=grant,
        )
        if visitor is not None:
            cookies.apply(response, visitor)
        return self.remember(hit, envelope, response)

    def remember(self, hit: Hit, envelope: dict[str, Any], response: Response) -> Response:
        """The identity cookie: what the page's `user` call gave, kept while consent allows;
        removed on denial and on logout (see `tagserver.toolkit.match`)."""
        if not self.set_cookies:
            return response
        stored = match.remember_identity(
            hit.request,
            self.settings,
            [envelope["user"]],
            envelope.get("consent"),
            forget=envelope.get("logout") is True,
        )
        for header in stored.set_cookie:
            response.headers.append("set-cookie", header)
        if stored.action and hit.previewed:
            kept = f" ({', '.join(stored.keys)})" if stored.keys else ""
            hit.log("info", f"cookie {match.COOKIE}: {stored.action}{kept}")
        return response
