"""CORS for browser hits that carry cookies (`credentials: 'include'`).

A page on `www.shop.example` posting to `sgtm.shop.example` needs a credentialed CORS grant for
its cookies to be sent and set, and for the page to read the answer (the event ids). Shared by
the clients that take browser hits:

    grant = cors.grant_headers(hit.request, settings)     # {} when the origin is not allowed
    if request.method == "OPTIONS":
        return cors.preflight(hit.request, settings, methods=("POST",))
    response = ...
    cors.apply(response, grant)

Allowed origins: `settings.allowed_origin_list` when set (exact origins such as
`https://www.shop.example`; `*` allows any origin — it is echoed back, never sent as `*`).
Otherwise any origin whose host has the same registrable domain (eTLD+1) as the host the request
was sent to; for `localhost` and IP hosts, the same host name. A disallowed origin gets no grant:
the browser then keeps the answer from the page.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..event import RequestContext
from ..settings import Settings
from .cookies import registrable_domain

if TYPE_CHECKING:
    from starlette.responses import Response

__all__ = ["origin_allowed", "grant_headers", "preflight", "apply"]

PREFLIGHT_MAX_AGE = 86400
ALLOWED_REQUEST_HEADERS = ("content-type", "x-tagserver-preview")


def origin_allowed(origin: str, request: RequestContext, settings: Settings) -> bool:
    """May a page served from `origin` send credentialed hits to this request's host?"""
    if not origin or origin == "null":
        return False
    configured = settings.allowed_origin_list
    if configured:
        return "*" in configured or origin.rstrip("/") in configured
    try:
        parts = urlsplit(origin)
        origin_host = (parts.hostname or "").rstrip(".")
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not origin_host:
        return False
    host = request.hostname.lower().rstrip(".")
    if origin_host == host:
        return True
    site = registrable_domain(host)
    return site is not None and registrable_domain(origin_host) == site


def grant_headers(request: RequestContext, settings: Settings) -> dict[str, str]:
    """The CORS headers for the answer to `request`: a grant, or only `Vary` when refused."""
    origin = request.headers.get("origin", "")
    if not origin_allowed(origin, request, settings):
        return {"Vary": "Origin"}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }


def preflight(
    request: RequestContext, settings: Settings, methods: Sequence[str] = ("POST",)
) -> Response:
    """Answer an OPTIONS preflight: 204 with the grant, or 403 naming the refused origin."""
    from starlette.responses import JSONResponse, Response

    origin = request.headers.get("origin", "")
    if not origin_allowed(origin, request, settings):
        reason = (
            f"origin {origin[:200]!r} is not allowed (TAGSERVER_ALLOWED_ORIGINS)"
            if origin
            else "a preflight needs an Origin header"
        )
        return JSONResponse({"error": reason}, 403, headers={"Vary": "Origin"})
    asked = request.headers.get("access-control-request-headers", "")
    allowed = [h.strip() for h in asked.lower().split(",") if h.strip() in ALLOWED_REQUEST_HEADERS]
    headers = grant_headers(request, settings)
    headers["Access-Control-Allow-Methods"] = ", ".join(methods)
    headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE)
    if allowed:
        headers["Access-Control-Allow-Headers"] = ", ".join(allowed)
    return Response(status_code=204, headers=headers)


def apply(response: Response, headers: dict[str, str]) -> Response:
    """Set the CORS headers on `response` (returned for chaining)."""
    for name, value in headers.items():
        if name == "Vary" and "vary" in response.headers:
            if "origin" not in response.headers["vary"].lower():
                response.headers["vary"] = response.headers["vary"] + ", Origin"
        else:
            response.headers[name] = value
    return response
