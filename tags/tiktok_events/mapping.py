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
from tagserver.toolkit import identity
from tagserver.toolkit.conversions import click_id, event_time, items, number, raw_identity, total

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
    if custom.__class__ is dict and custom:
        mapped = custom.get(name)
        if isinstance(mapped, str) and mapped.strip():
            return mapped.strip()
    return DEFAULT_EVENT_NAMES.get(name, name)


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


# shared key → TikTok key, its normalizer, hashed?
_USER_KEYS: dict[str, tuple[str, Any, bool]] = {
    "em": ("email", identity.NORMALIZERS["em"], True),
    "ph": ("phone", _phone, True),
    "external_id": ("external_id", identity.NORMALIZERS["external_id"], True),
    "fn": ("first_name", _name, True),
    "ln": ("last_name", _name, True),
    "zp": ("zip_code", _zip, True),
    "ct": ("city", _place, False),
    "st": ("state", _place, False),
    "country": ("country", identity.NORMALIZERS["country"], False),
}
_LIST_KEYS = frozenset({"email", "phone", "external_id"})


def build(
    event: Event, params: dict[str, Any], request: RequestContext
) -> tuple[dict[str, Any], dict[str, str]]:
    dropped: dict[str, str] = {}
    name = tiktok_event_name(str(event.get("event_name") or ""), params.get("event_name_map"))
    event_id = event.get("event_id") or request.derived_event_id(0)
    out: dict[str, Any] = {
        "event": name,
        "event_time": event_time(event, request.received_at),
        "event_id": str(event_id),
    }
    out["user"] = _user(event, params, request, dropped)
    properties = _properties(event, name, params.get("properties"))
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
    event: Event, params: dict[str, Any], request: RequestContext, dropped: dict[str, str]
) -> dict[str, Any]:
    raw = raw_identity(event, params.get("user_data"))
    region = identity.NORMALIZERS["country"](raw.country.strip(), None) if raw.country else None
    if region is None:
        given = params.get("default_phone_country")
        if given.__class__ is str and given.strip():
            region = identity.NORMALIZERS["country"](given.strip(), None)
    user: dict[str, Any] = {}
    for key, values in raw.values.items():
        spec = _USER_KEYS.get(key)
        if spec is None:
            continue
        out_key, normalize, hashed = spec
        found: list[str] = []
        for value in values:
            if value.__class__ is float and value.is_integer():
                value = int(value)
            if value.__class__ is int and not isinstance(value, bool):
                value = str(value)
            if value.__class__ is not str or not value.strip():
                continue
            text = value.strip()
            context = region if key in ("ph", "zp") else None
            result = (
                identity.hash_with(normalize, text, context) if hashed else normalize(text, None)
            )
            if result and result not in found:
                found.append(result)
        if found:
            user[out_key] = found if out_key in _LIST_KEYS else found[0]
        else:
            dropped[out_key] = "not usable after normalization"
    ip = event.get("ip_override")
    if ip.__class__ is str and ip:
        user["ip"] = ip
    agent = event.get("user_agent")
    if agent.__class__ is str and agent:
        user["user_agent"] = agent
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
    found = click_id(location, "ttclid")
    if found is None:
        referrer = event.get("page_referrer")
        found = click_id(referrer, "ttclid")
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


def _properties(event: Event, name: str, configured: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    found = items(event)
    if found:
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
    value = event.get("value")
    if value.__class__ is str and value.strip():
        value = number(value) if number(value) is not None else value
    if value is None or value == "":
        value = total(found)
    if value is not None:
        out["value"] = value
    currency = event.get("currency")
    if currency.__class__ is str and currency.strip():  # an empty currency is left out
        out["currency"] = currency.strip().upper()
    search = event.get("search_term")
    if search.__class__ is str and search:
        out["query"] = search
    order = event.get("transaction_id")
    if (order.__class__ is str or order.__class__ is int) and order != "":
        out["order_id"] = str(order)
    if configured.__class__ is dict and configured:
        out.update({k: v for k, v in configured.items() if v is not None and v != ""})
    return out
