"""Client `events_api`: server-to-server, CRM, POS and offline events.

    POST /api/events
    Authorization: Bearer <one of TAGSERVER_API_KEYS>
    {"event_name": "purchase", ...}            one event, or
    {"events": [{...}, {...}]}                 several (up to the configured count)

Each event is checked on its own: the response lists, per index, whether it was accepted
(with its event id and the tags it fired) or why not. An event may carry its own
`event_time` (unix seconds or ISO 8601) and the customer's own `ip_override`/`user_agent`.

The request comes from the customer's backend, not from the customer: its IP address and
User-Agent are the caller's, so they are never used as the customer's (an event without its
own gets a warning) unless the container opts in with `use_request_ip_and_user_agent`.
"""

from __future__ import annotations

import hmac
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
from tagserver.toolkit.events import EventError, check_event

API_KEYS = Setting(
    "api_keys", "", "Comma-separated bearer keys accepted by the events API.", secret=True
)


def json_response(body: Any, status: int = 200) -> Response:
    # Starlette's own headers: building them by hand saved ~0.5 us a hit (timeit), not worth
    # a Response made without its __init__
    return Response(orjson.dumps(body), status, media_type="application/json")


def missing_customer_context(event: Event) -> str | None:
    """A warning when the event lacks the customer's IP address or user agent, or None."""
    missing = [key for key in ("ip_override", "user_agent") if not event.get(key)]
    if not missing:
        return None
    what = " or ".join(CONTEXT_NAMES[key] for key in missing)
    verb = "is" if len(missing) == 1 else "are"
    return (
        f"no {' or '.join(missing)}: the event carries no customer {what}, and the calling "
        f"server's {verb} not used in {'its' if len(missing) == 1 else 'their'} place; "
        "vendors match the event less well"
    )


CONTEXT_NAMES = {"ip_override": "IP address", "user_agent": "user agent"}


class EventsApiClient(Client):
    description = "Server-to-server events: POST /api/events with a bearer API key."
    default_priority = 10
    params = (
        Param("path", "string", default="/api/events", description="Path this client claims."),
        MAX_EVENTS,
        Param(
            "use_request_ip_and_user_agent",
            "boolean",
            default=False,
            description="Treat the calling request's IP address and User-Agent as the "
            "customer's when an event has no `ip_override`/`user_agent` (only when the caller "
            "relays the customer's own request, e.g. a proxy in front of a browser).",
        ),
    )
    server_settings = (API_KEYS,)

    def __init__(self, name: str, params: dict[str, Any], settings: Settings) -> None:
        super().__init__(name, params, settings)
        self.path = params.get("path") or "/api/events"
        self.max_events = self.max_events_from(params)
        self.keys = [k.strip().encode() for k in settings.get(API_KEYS).split(",") if k.strip()]
        self.request_is_visitor = bool(params.get("use_request_ip_and_user_agent"))

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
                hit.reject(index, str(exc))
        # one result per event, in order (no `zip(strict=True)`: its keyword costs ~0.3 us)
        results = iter(await hit.run(events))
        for index, row in enumerate(rows):
            if row is None:
                result = next(results)
                row = rows[index] = result.summary(index)
                if not self.request_is_visitor:
                    warning = missing_customer_context(result.event)
                    if warning:
                        row["warnings"] = [warning]
                        hit.log("warning", f"event {index}: {warning}")
        body = {"accepted": len(events), "rejected": len(rows) - len(events), "results": rows}
        return json_response(body, 200 if events else 400)
