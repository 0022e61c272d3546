"""Tag `http_request`: send the event to any webhook — one HTTP request per event.

    {"name": "crm_webhook", "type": "http_request", "fire_on": ["purchase"],
     "params": {"url": "https://crm.example/hooks/orders",
                "headers": {"X-Api-Key": "{{crm_key}}"},
                "body": {"order": "{{transaction_id}}", "value": "{{value}}"}}}

The body is built from `{{variables}}` by the engine; the message waits in the outbox and is
delivered with retries: 2xx = delivered; 408, 429 and 5xx, timeouts and connection errors =
retried (Retry-After honoured); any other status = dead letter with the response as reason.
The destination key shows the host only: the URL and header values are hashed, since webhook
URLs and API-key headers are credentials.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import orjson

from tagserver import (
    Delivery,
    Event,
    FireContext,
    Message,
    Outgoing,
    Param,
    Sender,
    StartupParams,
    Tag,
    TagRejected,
)
from tagserver.toolkit.events import value_text as text
from tagserver.toolkit.http import (
    elapsed_ms,
    error_outcome,
    forget_stream,
    retry_after_seconds,
    status_outcome,
    vendor_url,
    with_query,
)

METHODS = ("POST", "PUT", "PATCH", "GET", "DELETE")
MAX_RESPONSE_BYTES = 65536
SHOWN_RESPONSE_CHARS = 2000


def form_value(value: Any) -> str:
    return text(value)


def encode_form(body: Any) -> str:
    if isinstance(body, dict):
        return urlencode({str(k): form_value(v) for k, v in body.items()})
    return text(body)


def read_body(raw: bytes, content_type: str) -> Any:
    """The vendor's answer for preview and dead letters: JSON when it is, else short text."""
    if "json" in content_type:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    shown = raw[:SHOWN_RESPONSE_CHARS].decode("utf-8", "replace")
    return shown + ("…" if len(raw) > SHOWN_RESPONSE_CHARS else "")


def short(body: Any) -> str:
    shown = body if isinstance(body, str) else orjson.dumps(body, default=str).decode()
    return shown[:300] + ("…" if len(shown) > 300 else "")


class HttpRequestSender(Sender):
    """One request per message; the verdict comes from the HTTP status."""

    def __init__(self, http: httpx.AsyncClient, settings: Any) -> None:
        super().__init__(http, settings)
        self._urls: dict[str, tuple[httpx.URL, str]] = {}

    async def send(self, route: dict[str, Any], batch: list[Message]) -> list[Delivery]:
        return [await self.send_one(route, message) for message in batch]

    def build(self, route: dict[str, Any], message: Message) -> dict[str, Any]:
        method = route.get("method", "POST")
        headers = dict(route.get("headers") or {})
        names = {k.lower() for k in headers}
        idempotency = route.get("idempotency_header")
        if idempotency:
            headers[idempotency] = message.dedup_id
        request: dict[str, Any] = {"method": method, "url": route["url"], "headers": headers}
        body = message.payload
        if body is None:
            return request
        if route.get("body_format") == "form":
            if method == "GET":
                request["url"] = with_query(route["url"], encode_form(body))
                return request
            request["content"] = encode_form(body).encode()
            if "content-type" not in names:
                headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            if method == "GET":
                if isinstance(body, dict):
                    request["url"] = with_query(route["url"], encode_form(body))
                return request
            request["content"] = (
                body.encode() if isinstance(body, str) else orjson.dumps(body, default=str)
            )
            if "content-type" not in names:
                headers["Content-Type"] = "application/json"
        return request

    def parsed(self, url: str) -> tuple[httpx.URL, str]:
        """The URL parsed once (httpx takes ~20 us per parse, twice per send) and its
        scheme://host:port for the preview summary; remembered, since routes repeat."""
        found = self._urls.get(url)
        if found is None:
            parsed = httpx.URL(url)
            port = f":{parsed.port}" if parsed.port else ""
            if len(self._urls) > 1000:  # GET bodies make URLs per message: stay bounded
                self._urls.clear()
            found = self._urls[url] = (parsed, f"{parsed.scheme}://{parsed.host}{port}/…")
        return found

    async def send_one(self, route: dict[str, Any], message: Message) -> Delivery:
        request = self.build(route, message)
        url, shown = self.parsed(request["url"])
        headers = request["headers"]
        content = request.get("content")
        # the request summary and a delivered answer are only ever shown in preview
        traced = message.trace_id is not None
        summary = (
            {
                "method": request["method"],
                "url": shown,
                "headers": sorted(headers),
                "body_bytes": len(content or b""),
            }
            if traced
            else None
        )
        started = time.perf_counter()

        def done(outcome: str, **fields: Any) -> Delivery:
            return Delivery(outcome, latency_ms=elapsed_ms(started), request=summary, **fields)  # type: ignore[arg-type]

        http = self.http
        try:
            # send(stream=True) rather than the stream() context manager: the same request,
            # one layer less per message
            response = await http.send(
                http.build_request(request["method"], url, headers=headers, content=content),
                stream=True,
            )
            try:
                raw = b""
                async for chunk in response.aiter_bytes():
                    raw += chunk
                    if len(raw) >= MAX_RESPONSE_BYTES:
                        break
            finally:
                await response.aclose()
                forget_stream(response)
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            outcome, error = error_outcome(exc, self.settings.send_timeout_seconds)
            return done(outcome, error=error)

        status = response.status_code
        outcome = status_outcome(status)
        if outcome == "delivered" and not traced:
            return done(outcome, status=status)
        body = read_body(raw, response.headers.get("content-type", ""))
        if outcome == "delivered":
            return done(outcome, status=status, response=body)
        error = f"HTTP {status}: {short(body)}" if raw else f"HTTP {status}"
        if 300 <= status < 400:
            location = response.headers.get("location", "?")
            error = f"HTTP {status}: redirect not followed (to {location})"
        wait = retry_after_seconds(response.headers.get("retry-after"))
        return done(outcome, status=status, response=body, error=error, retry_after=wait)


def route_key(params: dict[str, Any]) -> tuple[Any, ...] | None:
    """What the route depends on, as a dict key; None when a value is not text (`1` and `True`
    are equal keys but different header values, so such routes are built every time)."""
    key = (
        params.get("url"),
        params.get("method"),
        params.get("body_format"),
        params.get("idempotency_header"),
    )
    for value in key:
        if value is not None and type(value) is not str:
            return None
    hours = params.get("deadline_hours")  # 72 and 72.0 are the same deadline
    if hours is not None and type(hours) is not str and type(hours) not in NUMBERS:
        return None
    key = (*key, hours)
    headers = params.get("headers")
    if headers is None:
        return key
    if type(headers) is not dict:
        return None
    for value in headers.values():
        if value is not None and type(value) is not str:
            return None
    return (*key, *headers.items())


NUMBERS = (int, float)
ROUTE_PARAMS = ("url", "method", "headers", "body_format", "idempotency_header", "deadline_hours")


class HttpRequestTag(Tag):
    description = "Send the event to any HTTP endpoint (webhook), with retries and dead letters."
    params = (
        Param("url", "string", required=True, description="http(s) URL of the endpoint."),
        Param("method", "string", default="POST", choices=METHODS),
        Param(
            "headers",
            "object",
            secret=True,
            description="Request headers, e.g. an API key; values may use {{variables}}.",
        ),
        Param(
            "body",
            "any",
            description="Object (sent as JSON or form fields) or text, built from {{variables}}. "
            "With GET an object becomes the query string.",
        ),
        Param("body_format", "string", default="json", choices=("json", "form")),
        Param(
            "idempotency_header",
            "string",
            description="Header carrying the event id, so the receiver can drop a repeat "
            "(e.g. Idempotency-Key).",
        ),
        Param(
            "deadline_hours",
            "number",
            default=72,
            description="Give up (dead letter) when not delivered within this many hours.",
        ),
    )
    batch_size = 1
    sender_class = HttpRequestSender

    def __init__(self, name: str, static_params: dict[str, Any], settings: Any) -> None:
        super().__init__(name, static_params, settings)
        # resolved (url, method, headers, body_format, idempotency header, deadline) → route;
        # most tags use a fixed URL and headers, so this is checked and built once
        self._routes: dict[tuple[Any, ...], tuple[str, dict[str, Any], float]] = {}
        # the literal route params: resolved params that hold these very objects (not
        # templated) have the same route, found without building `route_key` (~1 us)
        self._literal = tuple(static_params.get(name) for name in ROUTE_PARAMS)
        self._literal_route: tuple[str, dict[str, Any], float] | None = None

    def describe(self, params: StartupParams) -> str:
        method = text(params.get("method", "POST")).upper()
        if "url" in params.per_event:
            return f"LIVE → {method} to the URL from {params.source('url')}"
        url = text(params.get("url"))
        try:  # shown without user info, query and fragment: they may hold a key
            parts = urlsplit(url)
            url = f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"
        except ValueError:
            return f"REFUSES EVERY EVENT — url {url[:40]!r} is not a URL"
        return f"LIVE → {method} {url}"

    def fire(self, event: Event, params: dict[str, Any], ctx: FireContext) -> list[Outgoing]:
        url, method, headers, body_format, idem, hours = self._literal
        get = params.get
        literal = (
            get("url") is url
            and get("headers") is headers
            and get("method") is method
            and get("body_format") is body_format
            and get("idempotency_header") is idem
            and get("deadline_hours") is hours
        )
        found = self._literal_route if literal else None
        if found is None:
            found = self._route_for(params)
            if literal:
                self._literal_route = found
        destination, route, lifetime = found
        now = time.time()
        event_id = event.get("event_id")
        dedup_id = str(event_id) if event_id else f"{self.name}:{now}"
        body = params.get("body")
        return [
            Outgoing(
                destination, body, dedup_id, route=route, deadline=now + lifetime, created_at=now
            )
        ]

    def route_for(self, params: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        try:
            destination, route, _ = self._route_for(params)
        except Exception:  # e.g. a URL that only an event's data completes
            return None
        return destination, route

    def _route_for(self, params: dict[str, Any]) -> tuple[str, dict[str, Any], float]:
        key = route_key(params)
        found = self._routes.get(key) if key is not None else None
        if found is None:
            found = self.route(params)
            if key is not None:
                if len(self._routes) > 1000:  # URLs built from event data: stay bounded
                    self._routes.clear()
                self._routes[key] = found
        return found

    @staticmethod
    def route(params: dict[str, Any]) -> tuple[str, dict[str, Any], float]:
        """Check the resolved params: (destination key, route, seconds until the deadline)."""
        url = params.get("url")
        if not isinstance(url, str) or not url.strip():
            raise TagRejected("url is empty")
        url = url.strip()
        method = str(params.get("method") or "POST").upper()
        if method not in METHODS:
            raise TagRejected(f"method {method!r} is not one of {', '.join(METHODS)}")
        raw_headers = params.get("headers") or {}
        if not isinstance(raw_headers, dict):
            raise TagRejected("headers must be an object of name: value")
        headers = {}
        for name, value in raw_headers.items():
            if value is None or value == "":
                continue  # a header whose variable is empty is left out
            value = text(value)
            if "\n" in value or "\r" in value or "\n" in str(name) or ":" in str(name):
                raise TagRejected(f"header {name!r} has a line break or colon")
            headers[str(name)] = value
        body_format = str(params.get("body_format") or "json")
        idem = str(params.get("idempotency_header") or "")
        hours = params.get("deadline_hours")
        try:
            hours = float(hours) if hours not in (None, "") else 72.0
        except (TypeError, ValueError):
            raise TagRejected(f"deadline_hours: {hours!r} is not a number") from None
        parsed = vendor_url(url, "url")
        identity = orjson.dumps(
            [method, url, headers, body_format, idem], option=orjson.OPT_SORT_KEYS
        )
        digest = hashlib.sha256(identity).hexdigest()[:12]
        route = {"method": method, "url": url, "headers": headers, "body_format": body_format}
        if idem:
            route["idempotency_header"] = idem
        return f"http_request:{parsed.host}:{digest}", route, hours * 3600
