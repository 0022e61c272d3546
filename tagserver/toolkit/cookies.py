"""First-party visitor cookies, the same rules for every client (see `tagserver.visitor.cookies`).

visitor = cookies.visitor_cookies(hit.request, settings, page_location=..., consent=...)
for event in events:
    event.update(visitor.event_keys())
cookies.keep_others(visitor, hit.request, settings, hit.cookie_keeper, consent)  # optional
cookies.apply(response, visitor)   # the Set-Cookie headers

`visitor_cookies` also resolves other ad platforms' click ids (ttclid, _ttp, _epik,
_scclid, _scid: see `tagserver.visitor.clickids`) onto `visitor.event_keys()`.
"""

from __future__ import annotations

from ..visitor.cookies import (
    CLIENT_ID_COOKIE,
    CLIENT_ID_RE,
    FBC_COOKIE,
    FBC_RE,
    FBP_COOKIE,
    FBP_RE,
    VisitorCookies,
    apply,
    consent_denied,
    fbclid_from,
    has_click_id,
    keep_others,
    registrable_domain,
    subdomain_index,
    visitor_cookies,
)

__all__ = [
    "CLIENT_ID_COOKIE", "CLIENT_ID_RE", "FBC_COOKIE", "FBC_RE", "FBP_COOKIE", "FBP_RE",
    "VisitorCookies", "apply", "consent_denied", "fbclid_from", "has_click_id", "keep_others",
    "registrable_domain",
    "subdomain_index", "visitor_cookies",
]  # fmt: skip
