"""Tag `ga4`: forward events to Google Analytics 4 as `/g/collect` hits (sGTM's GA4 tag).

A site that sets `server_container_url` stops sending hits to Google itself; this tag sends
them on from the server, so its GA4 reports keep working:

    {"name": "ga4_forward", "type": "ga4", "fire_on": ["ga4_hits"]}

Each event becomes one `/g/collect` parameter set (protocol v2, built by `tags.ga4_hit`)
with the visitor's IP as `_uip` and their user agent as the request's User-Agent, as sGTM
does, so Google's geo and device reports stay right. Personal data is never sent.

The sender posts up to 20 events per request like gtag.js: parameters shared by all events
in the query string, one event per body line. Events of different visitors never share a
request (the User-Agent header is per request). 2xx = delivered (Google answers 204);
408, 429, 5xx, timeouts and connection errors = retried (Retry-After honoured); any other
status = dead letter.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

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
    Setting,
    Settings,
    StartupParams,
    Tag,
    TagRejected,
)
from tagserver.toolkit.http import (
    elapsed_ms,
    error_outcome,
    retry_after_seconds,
    status_outcome,
    vendor_url,
    with_query,
)

from .ga4_hit import build_params, encode

MAX_EVENTS_PER_REQUEST = 20  # GA4's own limit for a batched /g/collect request
DEADLINE_HOURS = 24  # Google dates a hit on arrival: a later one would skew the reports
_MEASUREMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{1,39}")
_SHOWN_RESPONSE_CHARS = 300


class Ga4Sender(Sender):
    """Posts batches of `/g/collect` hits for one destination (measurement id + endpoint)."""

    async def send(self, route: dict[str, Any], batch: list[Message]) -> list[Delivery]:
        url = str(route.get("url") or "")
        groups: dict[tuple[str, str], list[int]] = {}
        hits: list[dict[str, Any]] = []
        for index, message in enumerate(batch):
            hit = _hit(message.payload)
            hits.append(hit)
            visitor = (hit["ua"], hit["params"].get("cid", ""))
            groups.setdefault(visitor, []).append(index)

        results: list[Delivery | None] = [None] * len(batch)
        stopped: Delivery | None = None  # Google unreachable or throttling: stop calling it
        for (user_agent, _), indexes in groups.items():
            for start in range(0, len(indexes), MAX_EVENTS_PER_REQUEST):
                chunk = indexes[start : start + MAX_EVENTS_PER_REQUEST]
                if stopped is None:
                    delivery = await self._post(url, user_agent, [hits[i]["params"] for i in chunk])
                    if delivery.outcome == "retry":
                        stopped = delivery
                else:
                    delivery = Delivery("retry", error=f"not tried: {stopped.error}")
                for i in chunk:
                    results[i] = delivery
        return [r if r is not None else Delivery("retry", error="not sent") for r in results]

    async def _post(self, url: str, user_agent: str, events: list[dict[str, str]]) -> Delivery:
        query, body = request_parts(events)
        shown = {"method": "POST", "url": url, "events": len(events), "bytes": len(body)}
        headers = {"Content-Type": "text/plain;charset=UTF-8"}
        if user_agent:
            headers["User-Agent"] = user_agent
        timeout = self.settings.send_timeout_seconds
        started = time.perf_counter()

        def done(outcome: str, **fields: Any) -> Delivery:
            return Delivery(outcome, latency_ms=elapsed_ms(started), request=shown, **fields)  # type: ignore[arg-type]

        try:
            response = await self.http.post(
                with_query(url, query),
                content=body,
                headers=headers,
                timeout=timeout,
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            outcome, error = error_outcome(exc, timeout)
            return done(outcome, error=error)

        status = response.status_code
        text = " ".join(response.text[:_SHOWN_RESPONSE_CHARS].split())
        outcome = status_outcome(status)
        if outcome == "delivered":
            return done(outcome, status=status, response=text or None)
        error = f"HTTP {status} from GA4" + (f": {text}" if text else "")
        wait = retry_after_seconds(response.headers.get("retry-after"))
        return done(outcome, status=status, error=error, retry_after=wait, response=text)


def request_parts(events: list[dict[str, str]]) -> tuple[str, bytes]:
    """(query, body) of one request: one event all in the query (empty body), several with
    the parameters they share in the query and one line per event — as gtag.js batches."""
    if len(events) == 1:
        return encode(events[0]), b""
    first, rest = events[0], events[1:]
    shared = {k: v for k, v in first.items() if k != "en" and all(e.get(k) == v for e in rest)}
    lines = [encode({k: v for k, v in e.items() if k not in shared}) for e in events]
    return encode(shared), "\r\n".join(lines).encode()


def _hit(payload: Any) -> dict[str, Any]:
    """A stored payload (dict, or JSON text) → {"params": {…}, "ua": "…"}."""
    if isinstance(payload, (bytes, str)):
        payload = orjson.loads(payload)
    params = payload.get("params") if isinstance(payload, dict) else None
    params = {str(k): str(v) for k, v in params.items()} if isinstance(params, dict) else {}
    user_agent = payload.get("ua") if isinstance(payload, dict) else ""
    return {"params": params, "ua": user_agent if isinstance(user_agent, str) else ""}


COLLECT_URL = Setting(
    "ga4_collect_url",
    "https://region1.google-analytics.com/g/collect",
    "Where the `ga4` tag forwards GA4 hits (a tag's `endpoint` param wins).",
)


class Ga4Tag(Tag):
    description = (
        "Google Analytics 4: forward events as /g/collect hits with the visitor's IP and user "
        "agent, batched (20 per request), retried; personal data is never sent."
    )
    batch_size = MAX_EVENTS_PER_REQUEST
    sender_class = Ga4Sender
    server_settings = (COLLECT_URL,)
    params = (
        Param(
            "measurement_id",
            "string",
            description="GA4 measurement id (G-XXXXXXX). Empty: the event's own "
            "(x-ga-measurement_id, the tid of the gtag hit).",
        ),
        Param(
            "endpoint",
            "string",
            description="Collect URL (default: TAGSERVER_GA4_COLLECT_URL, Google's "
            "https://region1.google-analytics.com/g/collect).",
        ),
        Param(
            "event_parameters",
            "object",
            description="Extra event parameters (values may use {{variables}}); numbers are "
            "sent as epn., text as ep.; they win over the event's own.",
        ),
        Param(
            "redact_ip",
            "boolean",
            default=False,
            description="Send the visitor IP with the last IPv4 octet (IPv6: all but the "
            "first 48 bits) zeroed.",
        ),
    )

    def __init__(self, name: str, static_params: dict[str, Any], settings: Settings) -> None:
        super().__init__(name, static_params, settings)
        self.collect_url = settings.get(COLLECT_URL)
        self._destinations: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}

    def describe(self, params: StartupParams) -> str:
        endpoint = _text(params.get("endpoint")) or self.collect_url
        if "endpoint" in params.per_event:
            endpoint = f"the endpoint from {params.source('endpoint')}"
        else:
            endpoint = endpoint.split("?", 1)[0]
        if "measurement_id" in params.per_event:
            measurement = f"measurement id from {params.source('measurement_id')}"
        else:
            measurement = _text(params.get("measurement_id")) or "each hit's own measurement id"
        return f"LIVE → {endpoint} ({measurement})"

    def fire(self, event: Event, params: dict[str, Any], ctx: FireContext) -> list[Outgoing]:
        measurement_id = _text(params.get("measurement_id")) or _text(
            event.get("x-ga-measurement_id")
        )
        if not measurement_id:
            raise TagRejected(
                "no measurement id: set params.measurement_id (the event has no "
                "x-ga-measurement_id, it did not come from gtag.js)"
            )
        if not _MEASUREMENT_ID.fullmatch(measurement_id):
            raise TagRejected(f"measurement id {measurement_id[:40]!r} is not like G-XXXXXXX")
        client_id = event.get("client_id")
        if not isinstance(client_id, str) or not client_id.strip():
            raise TagRejected("no client_id: GA4 needs one (cid) for every event")
        if not _text(event.get("event_name")):
            raise TagRejected("no event_name")
        extra = params.get("event_parameters") or None
        if extra is not None and not isinstance(extra, dict):
            raise TagRejected("event_parameters must be an object of name: value")
        endpoint = _text(params.get("endpoint")) or self.collect_url
        destination, route = self._destination(measurement_id, endpoint)

        dropped: list[str] = []
        hit = build_params(
            event,
            measurement_id,
            extra=extra,
            redact_ip=params.get("redact_ip") is True,
            derived_event_id=_derived_event_id(event, ctx),
            dropped=dropped,
        )
        if dropped:
            ctx.note("not_sent_personal_data", sorted(set(dropped)))
        user_agent = event.get("user_agent")
        now = time.time()
        event_id = event.get("event_id")
        return [
            Outgoing(
                destination=destination,
                payload={"params": hit, "ua": user_agent if isinstance(user_agent, str) else ""},
                dedup_id=f"{hit['en']}:{event_id}" if event_id else f"{self.name}:{now}",
                route=route,
                deadline=now + DEADLINE_HOURS * 3600,
                created_at=now,
            )
        ]

    def _destination(self, measurement_id: str, endpoint: str) -> tuple[str, dict[str, Any]]:
        """(destination key, route): one lane per measurement id and endpoint."""
        found = self._destinations.get((measurement_id, endpoint))
        if found is None:
            url = vendor_url(endpoint, "endpoint")
            digest = hashlib.sha256(endpoint.encode()).hexdigest()[:8]
            if len(self._destinations) > 256:  # ids built from event data: stay bounded
                self._destinations.clear()
            found = (f"ga4:{measurement_id}:{url.host}:{digest}", {"url": endpoint})
            self._destinations[(measurement_id, endpoint)] = found
        return found


def _derived_event_id(event: Event, ctx: FireContext) -> str | None:
    """The id the server gave an event that came without one (Google never saw it)."""
    event_id = event.get("event_id")
    if isinstance(event_id, str) and event_id.startswith(ctx.request.hit_id[:24] + "."):
        return event_id
    return None


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""
