"""Client `ga4`: GA4 hits from gtag.js / GTM web containers at `/g/collect`.

A site that sets `server_container_url` (or `transport_url`) in its Google tag sends every
GA4 event here without changing its page code:

    GET|POST /g/collect?v=2&tid=G-XXXX&cid=…&en=page_view&dl=…          one event
    POST     /g/collect?v=2&tid=G-XXXX&cid=…   body: en=…&ep.x=…\\r\\nen=…   one event per line

Parsing lives in `tagserver.clients.ga4_params` (pure). This module adds what needs the request: the
visitor's `_fbp`/`_fbc` (and optionally a server-managed, HttpOnly client id — sGTM's `FPID`)
through the shared `tagserver.toolkit.cookies` rules, the CORS grant through `toolkit.cors`, and an
empty 204 as soon as the events' messages are in the outbox. Bad lines are skipped and
counted (`X-Tagserver-Skipped`); a hit with no usable event gets a 400 naming why.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import Response

from tagserver import (
    MAX_EVENTS,
    BadRequest,
    Client,
    Event,
    Hit,
    HitError,
    Param,
    PayloadTooLarge,
    RequestContext,
)
from tagserver.toolkit import cookies, cors, match

from .ga4_params import BatchTooLarge, HitParseError, ParsedHit, parse_hit

SKIPPED_LINES = Counter(
    "tagserver_ga4_skipped_lines_total", "GA4 batch lines skipped as unreadable", ["client"]
)

METHODS = ("GET", "POST")
FPID_COOKIE = "FPID"


class Ga4Client(Client):
    description = "GA4 hits from gtag.js / GTM web containers (server_container_url) at /g/collect."
    default_priority = 5
    params = (
        Param(
            "paths",
            "array",
            default=["/g/collect"],
            description="Paths this client claims (e.g. add an alternate like /j/collect).",
        ),
        Param(
            "identity_cookie",
            "boolean",
            default=True,
            description="Keep the user data of GA4 hits (hashed, encrypted) in the identity "
            "cookie for later events, with ad_user_data and ad_storage consent.",
        ),
        Param(
            "meta_cookies",
            "boolean",
            default=True,
            description="Set and forward the first-party ad cookies on GA4 hits: Meta's "
            "_fbp/_fbc and the click ids ttclid, _epik, _scclid.",
        ),
        Param(
            "generate_ttp",
            "boolean",
            default=False,
            description="Create TikTok's _ttp browser id when the TikTok pixel has not set one.",
        ),
        Param(
            "server_managed_client_id",
            "boolean",
            default=False,
            description="Keep the client id in a server-set HttpOnly cookie (sGTM's FPID); "
            "the JavaScript client id goes to x-ga-js_client_id.",
        ),
        Param(
            "client_id_cookie",
            "string",
            default=FPID_COOKIE,
            description="Name of the server-managed client id cookie.",
        ),
        Param(
            "migrate_client_id",
            "boolean",
            default=True,
            description="When the server-managed cookie is new, start it from the visitor's "
            "existing JavaScript client id so the visitor keeps one identity.",
        ),
        MAX_EVENTS,
    )

    def __init__(self, name: str, params: dict[str, Any], settings: Any) -> None:
        super().__init__(name, params, settings)
        paths = params.get("paths") or ["/g/collect"]
        self.paths = frozenset(p for p in paths if isinstance(p, str) and p.startswith("/"))
        self.meta_cookies = params.get("meta_cookies", True) is not False
        self.identity_cookie = params.get("identity_cookie", True) is not False
        self.generate_ttp = params.get("generate_ttp") is True
        self.server_managed = bool(params.get("server_managed_client_id", False))
        self.cookie_name = str(params.get("client_id_cookie") or FPID_COOKIE)
        self.migrate = params.get("migrate_client_id", True) is not False
        self.max_events = self.max_events_from(params)

    def claim(self, request: Request) -> bool:
        return request.scope["path"] in self.paths

    async def handle(self, request: Request, hit: Hit) -> Response:
        ctx = hit.request
        grant = cors.grant_headers(ctx, self.settings)
        if request.method == "OPTIONS":
            return cors.preflight(ctx, self.settings, methods=METHODS)
        if request.method not in METHODS:
            raise HitError(
                f"{request.url.path} accepts GET and POST",
                status=405,
                headers={"Allow": ", ".join(METHODS), **grant},
            )
        try:
            parsed = parse_hit(
                request.scope.get("query_string", b""), hit.body, max_events=self.max_events
            )
        except BatchTooLarge as exc:
            raise PayloadTooLarge(str(exc), headers=grant) from None
        except HitParseError as exc:
            raise BadRequest(str(exc), headers=grant) from None

        events = parsed.events
        visitor = self._identify(ctx, events)
        if hit.cookie_keeper is not None:
            visitor = visitor or cookies.VisitorCookies()
            consent = _strictest_consent(events)
            cookies.keep_others(visitor, ctx, self.settings, hit.cookie_keeper, consent)
        await hit.run(events)

        response = Response(status_code=204, headers=grant)  # the CORS grant, built in
        if visitor is not None:
            cookies.apply(response, visitor)
        if parsed.skipped:
            SKIPPED_LINES.labels(self.name).inc(parsed.skipped)
            response.headers["X-Tagserver-Skipped"] = str(parsed.skipped)
            response.headers["X-Tagserver-Skipped-Reason"] = parsed.reasons[0][:300]
        self._tell_preview(hit, parsed, visitor)
        if self.identity_cookie:
            self._remember(hit, events, response)
        return response

    def _remember(self, hit: Hit, events: list[Event], response: Response) -> None:
        """The hit's user data in the identity cookie (removed when consent denies it)."""
        stored = match.remember_identity(
            hit.request,
            self.settings,
            [(e.get("user_data"), e.get("user_id")) for e in events],
            _strictest_consent(events),
        )
        for header in stored.set_cookie:
            response.headers.append("set-cookie", header)
        if stored.action and hit.previewed:
            kept = f" ({', '.join(stored.keys)})" if stored.keys else ""
            hit.log("info", f"cookie {match.COOKIE}: {stored.action}{kept}")

    def _identify(self, ctx: RequestContext, events: list[Event]) -> cookies.VisitorCookies | None:
        """Resolve the visitor's cookies once per hit and put the ids on every event."""
        if not self.meta_cookies and not self.server_managed:
            return None
        js_client_id = next((e["client_id"] for e in events if e.get("client_id")), None)
        locations = [e["page_location"] for e in events if e.get("page_location")]
        page_location = next((u for u in locations if cookies.has_click_id(u)), None) or next(
            iter(locations), None
        )
        consent = _strictest_consent(events)
        cookie_name = self.cookie_name if self.server_managed else None
        request = ctx
        migrating = False
        if (
            cookie_name is not None
            and self.migrate
            and js_client_id
            and not ctx.cookies.get(cookie_name)
            and cookies.CLIENT_ID_RE.fullmatch(js_client_id)
        ):
            migrating = True
            # the shared rules keep a valid existing id: present the JS id as that id
            request = dataclasses.replace(ctx, cookies={**ctx.cookies, cookie_name: js_client_id})
        visitor = cookies.visitor_cookies(
            request,
            self.settings,
            page_location=page_location,
            consent=consent,
            client_id_cookie=cookie_name,
            seed=js_client_id,
            seed_ms=_first_visit_ms(js_client_id),
            generate_ttp=self.generate_ttp,
        )
        if migrating and cookie_name in visitor.actions:
            visitor.actions[cookie_name] = "migrated from the JavaScript client id"
        if not self.meta_cookies:
            assert cookie_name is not None  # without Meta's cookies, only server-managed ones
            visitor.fbp = visitor.fbc = None
            visitor.click_ids = {}
            visitor.set_cookie = [c for c in visitor.set_cookie if c.startswith(cookie_name + "=")]
        keys = visitor.event_keys()
        for event in events:
            if "client_id" in keys and event.get("client_id"):
                event["x-ga-js_client_id"] = event["client_id"]
            event.update(keys)
        return visitor

    def _tell_preview(
        self, hit: Hit, parsed: ParsedHit, visitor: cookies.VisitorCookies | None
    ) -> None:
        if not hit.previewed:
            return
        if parsed.lines:
            hit.log("info", f"GA4 batch: {parsed.lines} lines, {len(parsed.events)} events")
        for reason in parsed.reasons:
            hit.log("warning", f"skipped {reason}")
        if parsed.skipped > len(parsed.reasons):
            hit.log("warning", f"… and {parsed.skipped - len(parsed.reasons)} more lines")
        for warning in parsed.warnings[:50]:
            hit.log("warning", warning)
        if visitor is not None:
            for name, action in visitor.actions.items():
                hit.log("info", f"cookie {name}: {action}")


def _strictest_consent(events: list[Event]) -> dict[str, str]:
    """A denial on any event of the hit counts for the hit's cookies."""
    out: dict[str, str] = {}
    for event in events:
        for ctype, value in (event.get("consent") or {}).items():
            if out.get(ctype) != "denied":
                out[ctype] = value
    return out


def _first_visit_ms(client_id: str | None) -> int | None:
    """GA's client id is `<random>.<first visit unix seconds>`."""
    if not client_id:
        return None
    _, _, seconds = client_id.rpartition(".")
    return int(seconds) * 1000 if seconds.isdigit() and len(seconds) == 10 else None
