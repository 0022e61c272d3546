"""Client `webhook`: another system's JSON on a path of its own, mapped to events.

    {"name": "shopify", "type": "webhook",
     "params": {"path": "/hooks/shopify", "preset": "shopify_orders",
                "secret": "{{shopify_webhook_secret}}"}}

The sender is verified before anything is parsed: an HMAC-SHA256 signature of the raw body
(Shopify's `X-Shopify-Hmac-Sha256`, a generic hex or base64 one in a named header, HubSpot's
v3 signature) or a shared bearer secret, always compared in constant time. A request that
fails gets 401 and nothing of it reaches the container. The body is then mapped to events
(`webhook_mapping`), checked like events-API events, run through the container, and answered
2xx only once their messages are committed: a sender that retries re-sends the same event id,
which the outbox stores once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any
from urllib.parse import unquote

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tagserver import (
    MAX_EVENTS,
    BadRequest,
    Client,
    Event,
    Hit,
    HitError,
    Param,
    RequestContext,
    Settings,
    Unauthorized,
)
from tagserver.toolkit.events import EventError, check_event

from .webhook_mapping import MappingError, compile_mapping, read
from .webhook_presets import PRESETS

SCHEMES = ("shopify", "hmac_sha256_hex", "hmac_sha256_base64", "hubspot_v3", "bearer")
DEFAULT_HEADERS = {
    "shopify": "x-shopify-hmac-sha256",
    "hmac_sha256_hex": "x-signature",
    "hmac_sha256_base64": "x-signature",
    "hubspot_v3": "x-hubspot-signature-v3",
    "bearer": "authorization",
}
HUBSPOT_MAX_AGE_MS = 5 * 60 * 1000  # HubSpot: reject requests whose timestamp is older


class WebhookClient(Client):
    type_name = "webhook"
    description = "Another system's webhook (Shopify, a CRM …), verified and mapped to events."
    default_priority = 10
    request_is_visitor = (
        False  # the sender's servers: their address and agent are not the customer's
    )
    params = (
        Param("path", "string", required=True, description="Path this client claims, e.g. `/hooks/shopify`."),
        Param("preset", "string", choices=tuple(PRESETS), description="A ready mapping: " + ", ".join(PRESETS) + "."),
        Param("secret", "string", secret=True, description="Signing secret or bearer token; usually `{{an_env_variable}}`."),
        Param("signature", "string", choices=SCHEMES, description="How the sender signs (the preset's by default)."),
        Param("signature_header", "string", description="Header holding the signature (the scheme's usual one by default)."),
        Param("event_name", "string", description="Event name of every event (or map `event_name`)."),
        Param("each", "string", description="Dotted path of an array: one event per element."),
        Param("mapping", "object", description="Event key → source in the incoming JSON (see docs/offline.md)."),
        Param("action_source", "string", default="system_generated", description="`action_source` when the mapping gives none."),
        MAX_EVENTS,
    )  # fmt: skip

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> list[tuple[str, str]]:
        """Problems with these params, each with its place under `params`."""
        problems: list[tuple[str, str]] = []
        preset = PRESETS.get(params.get("preset") or "", {})
        mapping = params.get("mapping")
        if mapping is not None and not isinstance(mapping, dict):
            return [("mapping", "expected an object of event key → source")]
        if not preset and not mapping:
            problems.append(("mapping", "required unless a preset is given"))
        try:
            compile_mapping({**preset.get("mapping", {}), **(mapping or {})})
        except MappingError as exc:
            problems.extend(exc.problems)
        if not (params.get("signature") or preset.get("signature")):
            problems.append(
                ("signature", f"required unless a preset is given (one of {', '.join(SCHEMES)})")
            )
        return problems

    def __init__(self, name: str, params: dict[str, Any], settings: Settings) -> None:
        super().__init__(name, params, settings)
        preset = PRESETS.get(params.get("preset") or "", {})
        self.path = params["path"]
        self.scheme = params.get("signature") or preset.get("signature") or "bearer"
        self.header = (params.get("signature_header") or DEFAULT_HEADERS[self.scheme]).lower()
        secret = params.get("secret")
        self.secret = secret.encode() if isinstance(secret, str) and secret else b""
        self.event_name = params.get("event_name") or preset.get("event_name")
        self.each = params.get("each") or preset.get("each")
        self.build = compile_mapping({**preset.get("mapping", {}), **(params.get("mapping") or {})})
        self.action_source = params.get("action_source") or "system_generated"
        self.max_events = self.max_events_from(params)

    def claim(self, request: Request) -> bool:
        return request.scope["path"] == self.path

    async def handle(self, request: Request, hit: Hit) -> Response:
        if request.method != "POST":
            raise HitError(f"{self.path} accepts POST only", status=405, headers={"Allow": "POST"})
        if not self.secret:
            raise Unauthorized(
                f"webhook {self.name!r} has no secret configured: every request is refused"
            )
        problem = self.verify(hit.request, hit.body)
        if problem:
            raise Unauthorized(problem)
        try:
            document = orjson.loads(hit.body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None
        elements = self.elements(document)
        now = hit.request.received_at
        events: list[Event] = []
        rows: list[dict[str, Any] | None] = []
        for index, element in enumerate(elements):
            try:
                events.append(self.event_from(element, document, now))
                rows.append(None)
            except EventError as exc:
                rows.append({"index": index, "accepted": False, "reason": str(exc)})
                hit.reject(index, str(exc))  # shown in preview's hit list and Console
        results = iter(await hit.run(events))
        for index, row in enumerate(rows):
            if row is None:
                rows[index] = next(results).summary(index)
        body = {"accepted": len(events), "rejected": len(rows) - len(events), "results": rows}
        return JSONResponse(body, 200 if events else 400)

    # -- verifying the sender -------------------------------------------------------------

    def verify(self, request: RequestContext, body: bytes) -> str | None:
        """None when the request is signed with our secret, else why it is refused."""
        given = request.headers.get(self.header, "").strip()
        if not given:
            return f"missing {self.header} header: the request is not signed"
        if self.scheme == "bearer":
            scheme, _, token = given.partition(" ")
            ok = scheme.lower() == "bearer" and hmac.compare_digest(
                token.strip().encode(), self.secret
            )
            return None if ok else "wrong bearer secret"
        if self.scheme == "hubspot_v3":
            return self._verify_hubspot(request, body, given)
        digest = hmac.new(self.secret, body, hashlib.sha256).digest()
        if self.scheme == "hmac_sha256_hex":
            given = given.removeprefix("sha256=")
            expected = digest.hex().encode()
            ok = hmac.compare_digest(given.lower().encode(), expected)
        else:  # shopify and hmac_sha256_base64: base64 of the digest
            ok = hmac.compare_digest(given.encode(), base64.b64encode(digest))
        return None if ok else f"wrong signature in {self.header}"

    def _verify_hubspot(self, request: RequestContext, body: bytes, given: str) -> str | None:
        """HubSpot v3: base64 HMAC-SHA256 of method + URI + body + timestamp (ms), < 5 minutes old."""
        stamp = request.headers.get("x-hubspot-request-timestamp", "")
        if not stamp.isdigit():
            return "missing or malformed X-HubSpot-Request-Timestamp header"
        if abs(time.time() * 1000 - int(stamp)) > HUBSPOT_MAX_AGE_MS:
            return "X-HubSpot-Request-Timestamp is more than 5 minutes off: refused as a replay"
        source = request.method.encode() + unquote(request.url).encode() + body + stamp.encode()
        expected = base64.b64encode(hmac.new(self.secret, source, hashlib.sha256).digest())
        ok = hmac.compare_digest(given.encode(), expected)
        return None if ok else "wrong signature in X-HubSpot-Signature-v3"

    # -- mapping ------------------------------------------------------------------------------

    def elements(self, document: Any) -> list[Any]:
        """What each event is mapped from: the document, or each element of its `each` array."""
        if self.each is None:
            if not isinstance(document, dict):
                raise BadRequest(f"body must be a JSON object, got {_json_type(document)}")
            return [document]
        found = read(self.each, document, document)
        if not isinstance(found, list):
            raise BadRequest(f"{self.each}: expected an array of objects, got {_json_type(found)}")
        if not found:
            raise BadRequest(f"{self.each}: the array is empty")
        if len(found) > self.max_events:
            raise HitError(
                f"{self.each}: {len(found)} elements, more than the limit of {self.max_events}",
                status=413,
            )
        return found

    def event_from(self, element: Any, document: Any, now: float) -> Event:
        if not isinstance(element, dict):
            raise EventError(f"expected an object, got {_json_type(element)}")
        raw = self.build(element, document)
        if self.event_name and "event_name" not in raw:
            raw["event_name"] = self.event_name
        raw.setdefault("action_source", self.action_source)
        return check_event(raw, now)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "number"
    )
