"""CORS for credentialed browser hits (see `tagserver.visitor.cors`).

grant = cors.grant_headers(hit.request, settings)   # {} when the origin is not allowed
if request.method == "OPTIONS":
    return cors.preflight(hit.request, settings, methods=("POST",))
cors.apply(response, grant)
"""

from __future__ import annotations

from ..visitor.cors import apply, grant_headers, origin_allowed, preflight

__all__ = ["apply", "grant_headers", "origin_allowed", "preflight"]
