"""Common event data → one TikTok Events API 2.0 event (`data[]`), personal data hashed here.

Rules from TikTok's own sGTM template, business SDK and Segment destination (see
docs/tiktok.md): email trimmed + lowercased; phone in E.164 with its `+`, except China's
numbers (country code 86), sent without the country code; first/last name and ZIP without
spaces, lowercased; external_id trimmed, case kept (it must equal what the Pixel sends); all
SHA-256, and a value that already is a SHA-256 passes through. City, state and country go
lowercased, letters and digits only, unhashed (as TikTok's Segment destination sends them).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from tagserver import Event, RequestContext
from tagserver.toolkit import conversions, identity

__all__ = ["DEFAULT_EVENT_NAMES", "STANDARD_EVENTS", "build", "tiktok_event_name", "TTP_RE"]

# GA4 and Meta standard names → TikTok's (TikTok's sGTM template; `Purchase` because TikTok
# maps its reserved `CompletePayment` to it); anything else passes through as a custom event
DEFAULT_EVENT_NAMES = {
    "page_view": "Pageview",
    "view_item": "ViewContent",
    "add_to_cart": "AddToCart",
    "add_to_wishlist": "AddToWishlist",
    "begin_checkout": "InitiateCheckout",
    "add_payment_info": "AddPaymentInfo",
    "purchase": "Purchase",
    "search": "Search",
    "generate_lead": "Lead",
    "sign_up": "CompleteRegistration",
    "PageView": "Pageview",
}
STANDARD_EVENTS = frozenset(
    {"Pageview", "AddPaymentInfo", "AddToCart", "AddToWishlist", "ApplicationApproval",
     "CompleteRegistration", "Contact", "CustomizeProduct", "Download", "FindLocation",
     "InitiateCheckout", "Lead", "Purchase", "Schedule", "Search", "StartTrial",
     "SubmitApplication", "Subscribe", "ViewContent", "SubmitForm", "ClickButton",
     "CompletePayment", "PlaceAnOrder"}
)  # fmt: skip
TTP_RE = re.compile(r"[A-Za-z0-9_.-]{8,128}")
TTCLID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,500}")
_SPACES = str.maketrans("", "", " \t")


def tiktok_event_name(name: str, custom: Any) -> str:
    """The tag's own map first, then the GA4/Meta → TikTok table, else the name unchanged."""
    return conversions.event_name(name, custom, DEFAULT_EVENT_NAMES)


def _phone(text: str, region: str | None) -> str | None:
    digits = identity.NORMALIZERS["ph"](text, region)
    if digits is None:
        return None
    return digits[2:] if digits.startswith("86") else "+" + digits


def _name(text: str, cc: str | None) -> str | None:
    found = identity.NORMALIZERS["fn"](text, cc)
    return found.translate(_SPACES) if found else None


def _zip(text: str, cc: str | None) -> str | None:
    found = identity.NORMALIZERS["zp"](text, cc)
    return found.translate(_SPACES) if found else None


def _place(text: str, cc: str | None) -> str | None:
    kept = "".join(ch for ch in identity.NORMALIZERS["ct"](text, None) or "" if ch.isalnum())
    return kept or None


# shared key → how TikTok sends it (email, phone and external_id as lists)
USER_KEYS = {
    "em": conversions.UserKey("email", "em"),
    "ph": conversions.UserKey("phone", _phone),
    "external_id": conversions.UserKey("external_id", "external_id"),
    "fn": conversions.UserKey("first_name", _name, many=False),
    "ln": conversions.UserKey("last_name", _name, many=False),
    "zp": conversions.UserKey("zip_code", _zip, many=False),
    "ct": conversions.UserKey("city", _place, hashed=False, many=False),
    "st": conversions.UserKey("state", _place, hashed=False, many=False),
    "country": conversions.UserKey("country", "country", hashed=False, many=False),
}


def build(
    event: Event, params: dict[str, Any], request: RequestContext, hashes: conversions.Hashes
) -> tuple[dict[str, Any], dict[str, str]]:
    dropped: dict[str, str] = {}
    name = tiktok_event_name(str(event.get("event_name") or ""), params.get("event_name_map"))
    out: dict[str, Any] = {
        "event": name,
        "event_time": conversions.event_time(event, request.received_at),
        "event_id": conversions.event_id(event, request),
    }
    out["user"] = _user(event, params, request, hashes, dropped)
    properties = _properties(event, params.get("properties"), hashes)
    if properties:
        out["properties"] = properties
    page: dict[str, Any] = {}
    location = event.get("page_location")
    if location.__class__ is str and location:
        page["url"] = location
    referrer = event.get("page_referrer")
    if referrer.__class__ is str and referrer:
        page["referrer"] = referrer
    if page:
        out["page"] = page
    ldu = event.get("limited_data_use")
    if ldu is None:
        ldu = params.get("limited_data_use")
    if isinstance(ldu, bool):
        out["limited_data_use"] = ldu
    return out, dropped


def _user(
    event: Event,
    params: dict[str, Any],
    request: RequestContext,
    hashes: conversions.Hashes,
    dropped: dict[str, str],
) -> dict[str, Any]:
    raw = conversions.raw_identity(event, params.get("user_data"), hashes.memo)
    _, region = conversions.regions(raw, params)
    user: dict[str, Any] = {}
    # TikTok reads ZIPs, like phones, in the phone region; in the event's order of keys
    conversions.add_user_keys(user, raw, USER_KEYS, raw.values, hashes, region, region, dropped)
    conversions.add_client(user, event, "ip", "user_agent")
    ttclid = _ttclid(event, request)
    if ttclid:
        user["ttclid"] = ttclid
    ttp = event.get("x-tt-ck-ttp") or request.cookies.get("_ttp")
    if ttp.__class__ is str and ttp:
        if TTP_RE.fullmatch(ttp):
            user["ttp"] = ttp
        else:
            dropped["ttp"] = "malformed _ttp value"
    locale = event.get("language")
    if locale.__class__ is str and locale.strip():
        user["locale"] = locale.strip()
    return user


def _ttclid(event: Event, request: RequestContext) -> str | None:
    """TikTok's template's order: the event's (the collector resolved URL and cookie), the
    page URL, the referrer when it is the same host, the `ttclid` cookie."""
    given = event.get("x-tt-ck-ttclid")
    if given.__class__ is str and TTCLID_RE.fullmatch(given):
        return given
    location = event.get("page_location")
    found = conversions.click_id(location, "ttclid")
    if found is None:
        referrer = event.get("page_referrer")
        found = conversions.click_id(referrer, "ttclid")
        if found is not None and _host(referrer) != _host(location):
            found = None
    if found is None:
        found = request.cookies.get("ttclid")
    return found if found and TTCLID_RE.fullmatch(found) else None


def _host(url: Any) -> str:
    try:
        return (urlsplit(url).hostname or "") if url.__class__ is str else ""
    except ValueError:
        return ""


def _properties(event: Event, configured: Any, hashes: conversions.Hashes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    found = conversions.items(event, hashes.memo)
    if found and hashes.digest:  # the contents: nothing a dry run nobody sees checks
        contents = []
        for item in found:
            entry: dict[str, Any] = {"content_id": item.id, "quantity": item.quantity}
            if item.name:
                entry["content_name"] = item.name
            if item.category:
                entry["content_category"] = item.category
            if item.brand:
                entry["brand"] = item.brand
            if item.price is not None:
                entry["price"] = item.price
            contents.append(entry)
        out["contents"] = contents
        out["content_type"] = "product"
    value = conversions.amount(event, found)
    if value is not None:
        out["value"] = value
    code = conversions.currency(event)
    if code:  # an empty currency is left out
        out["currency"] = code
    search = conversions.search_term(event)
    if search:
        out["query"] = search
    order = conversions.order_id(event)
    if order:
        out["order_id"] = order
    conversions.add_configured(out, configured)
    return out
