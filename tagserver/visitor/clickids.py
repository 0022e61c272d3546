"""Other ad platforms' click ids, kept as first-party cookies set by the server.

Called by `cookies.visitor_cookies` when `ad_storage` is not denied, on the hit responses
tagserver already sends (no extra request). Values go on every event of the hit under
`x-tt-ck-ttclid`, `x-tt-ck-ttp`, `x-pin-ck-epik`, `x-sc-ck-sccid`, `x-sc-ck-scid`, where the
TikTok, Pinterest and Snapchat tags read them. None is HttpOnly: the vendors' pixels read them.

- `ttclid` → cookie `ttclid`, 30 days (TikTok's own template); written when the URL brings a
  new or different click id.
- `_ttp` (TikTok's browser id): kept as is and renewed for 13 months; created (27 letters and
  digits) when absent only where the client's `generate_ttp` is on.
- `epik` → `_epik`, and `ScCid` (any case) → `_scclid`: `cookie_max_age_days` (90), like ttclid.
- `_scid` (the Snap Pixel's own): read, never set.

A click id cookie that already holds the URL's click id is left alone: no new Set-Cookie, so
its lifetime counts from the click, like the vendor's attribution window, and it is never
re-timestamped. Click ids are forwarded exactly as given (case-sensitive), up to 500
characters of letters, digits and `_ - . = % + /`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from ..event import RequestContext
from ..settings import Settings

__all__ = ["resolve", "has_click_id", "CLICK_ID_RE", "TTP_RE", "TTP_MAX_AGE", "TTCLID_MAX_AGE"]

CLICK_ID_RE = re.compile(r"[A-Za-z0-9_.=%+/-]{1,500}")
TTP_RE = re.compile(r"[A-Za-z0-9_.-]{8,128}")
TTCLID_MAX_AGE = 30 * 86400
TTP_MAX_AGE = 34_190_000  # 13 months, as TikTok's cookies live

# URL parameter, its name matched case-insensitively?, cookie, event key, lifetime (None: setting)
_CLICK_IDS: tuple[tuple[str, bool, str, str, int | None], ...] = (
    ("ttclid", False, "ttclid", "x-tt-ck-ttclid", TTCLID_MAX_AGE),
    ("epik", False, "_epik", "x-pin-ck-epik", None),
    ("sccid", True, "_scclid", "x-sc-ck-sccid", None),
)


class Found(Protocol):
    """Where `resolve` writes: a `cookies.VisitorCookies` (its fields of the same names)."""

    set_cookie: list[str]
    click_ids: dict[str, str]
    actions: dict[str, str]


def resolve(
    out: Found,
    request: RequestContext,
    settings: Settings,
    page_location: str | None,
    attrs: str,
    token: Callable[[str, int], str],
    generate_ttp: bool = False,
) -> None:
    """Add the click ids (event keys, Set-Cookie values, preview actions) to `out`."""
    cookies = request.cookies
    params = _params(page_location)
    for name, any_case, cookie, key, lifetime in _CLICK_IDS:
        given = params.get(name) if any_case else params.get(name + "\0")
        existing = cookies.get(cookie)
        valid = existing if existing and CLICK_ID_RE.fullmatch(existing) else None
        if given and CLICK_ID_RE.fullmatch(given) and given != valid:
            max_age = lifetime or settings.cookie_max_age_days * 86400
            out.set_cookie.append(f"{cookie}={given}; Max-Age={max_age}{attrs}")
            out.click_ids[key] = given
            out.actions[cookie] = f"from {name}" if not existing else f"new {name}"
        elif valid:
            out.click_ids[key] = valid
            out.actions[cookie] = "kept"
    ttp = cookies.get("_ttp")
    if ttp and TTP_RE.fullmatch(ttp):
        out.actions["_ttp"] = "kept"
    elif generate_ttp:
        out.actions["_ttp"] = "replaced malformed" if ttp else "generated"
        ttp = token("ttp", 27)
    else:
        ttp = None
    if ttp:
        out.click_ids["x-tt-ck-ttp"] = ttp
        out.set_cookie.append(f"_ttp={ttp}; Max-Age={TTP_MAX_AGE}{attrs}")
    scid = cookies.get("_scid")
    if scid and CLICK_ID_RE.fullmatch(scid):
        out.click_ids["x-sc-ck-scid"] = scid


def has_click_id(url: Any) -> bool:
    """Does the URL carry an ad platform's click id (Meta's, TikTok's, Pinterest's, Snap's)?
    Clients pick such a page URL of a hit's events to resolve the cookies from."""
    if not isinstance(url, str) or "=" not in url:
        return False
    lowered = url.lower()
    return any(p in lowered for p in ("fbclid=", "ttclid=", "epik=", "sccid="))


def _params(url: Any) -> dict[str, str]:
    """Query parameters of `url` that may be click ids: exact names with a NUL suffix, and
    lowercased names (for `ScCid`); the first of each wins."""
    if not isinstance(url, str) or "=" not in url:
        return {}
    lowered = url.lower()
    if "ttclid=" not in lowered and "epik=" not in lowered and "sccid=" not in lowered:
        return {}
    try:
        query = urlsplit(url).query
    except ValueError:
        return {}
    found: dict[str, str] = {}
    for key, value in parse_qsl(query):
        if value:
            found.setdefault(key + "\0", value)
            found.setdefault(key.lower(), value)
    return found
