"""Common event data → one Pinterest Conversions API v5 event, personal data hashed here.

Pinterest's OpenAPI spec: hashed keys are arrays of lowercase-hex SHA-256 of the normalized
value (em lowercase; ph digits with country code; fn/ln lowercase; ge f, m or n; db YYYYMMDD;
ct letters only; st two letters; zp; country ISO alpha-2; external_id). `value` and
`item_price` are strings. The `epik` click id goes raw as `click_id`.
"""

from __future__ import annotations

import re
from typing import Any

from tagserver import Event, RequestContext
from tagserver.toolkit import conversions, identity

__all__ = ["DEFAULT_EVENT_NAMES", "EVENT_NAMES", "build", "pinterest_event_name", "EPIK_RE"]

# GA4 and Meta standard names → Pinterest's enum (stape-io/pinterest-capi-tag)
DEFAULT_EVENT_NAMES = {
    "page_view": "page_visit",
    "view_item": "view_content",
    "view_item_list": "view_category",
    "add_to_cart": "add_to_cart",
    "add_to_wishlist": "add_to_wishlist",
    "begin_checkout": "initiate_checkout",
    "add_payment_info": "add_payment_info",
    "purchase": "checkout",
    "search": "search",
    "generate_lead": "lead",
    "sign_up": "signup",
    "PageView": "page_visit",
    "ViewContent": "view_content",
    "AddToCart": "add_to_cart",
    "AddToWishlist": "add_to_wishlist",
    "InitiateCheckout": "initiate_checkout",
    "AddPaymentInfo": "add_payment_info",
    "Purchase": "checkout",
    "Search": "search",
    "Lead": "lead",
    "CompleteRegistration": "signup",
    "Subscribe": "subscribe",
}
# Pinterest's enum (OpenAPI 5.23): nothing else is accepted, so any other name goes as `custom`
EVENT_NAMES = frozenset(
    {"add_payment_info", "add_to_cart", "add_to_wishlist", "app_install", "checkout", "custom",
     "initiate_checkout", "lead", "page_visit", "search", "signup", "subscribe",
     "view_category", "view_content", "watch_video"}
)  # fmt: skip
EPIK_RE = re.compile(r"[A-Za-z0-9_.=%+/-]{1,1000}")
_GENDERS = {"n": "n", "non-binary": "n", "nonbinary": "n", "non binary": "n"}


def pinterest_event_name(name: str, custom: Any) -> str:
    found = conversions.event_name(name, custom, DEFAULT_EVENT_NAMES)
    return found if found in EVENT_NAMES else "custom"


def _gender(text: str, cc: str | None) -> str | None:
    return identity.NORMALIZERS["ge"](text, cc) or _GENDERS.get(text.lower())


HASHED_KEYS = ("em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country", "external_id")
# every key hashed by the shared rules under its own name, but gender (Pinterest knows `n`)
USER_KEYS = {key: conversions.UserKey(key, _gender if key == "ge" else key) for key in HASHED_KEYS}


def build(
    event: Event, params: dict[str, Any], request: RequestContext, hashes: conversions.Hashes
) -> tuple[dict[str, Any], dict[str, str]]:
    dropped: dict[str, str] = {}
    name = pinterest_event_name(str(event.get("event_name") or ""), params.get("event_name_map"))
    out = conversions.server_event(name, "web", event, request)
    if isinstance(event.get("opt_out"), bool):
        out["opt_out"] = event["opt_out"]
    if params.get("partner_name"):
        out["partner_name"] = str(params["partner_name"])
    language = event.get("language")
    if language.__class__ is str and len(language.strip()) >= 2:
        code = language.strip()[:2].lower()
        if code.isalpha():
            out["language"] = code
    raw = conversions.raw_identity(event, params.get("user_data"), hashes.memo)
    cc, region = conversions.regions(raw, params)
    user: dict[str, Any] = {}
    conversions.add_user_keys(user, raw, USER_KEYS, HASHED_KEYS, hashes, cc, region, dropped)
    conversions.add_client(user, event, "client_ip_address", "client_user_agent")
    epik = _epik(event, request)
    if epik:
        user["click_id"] = epik
    out["user_data"] = user
    custom = _custom(event, params, hashes)
    if custom:
        out["custom_data"] = custom
    return out, dropped


def _epik(event: Event, request: RequestContext) -> str | None:
    """The URL's `epik` first (a new click), then the event's (the collector's cookie), then
    the `_epik` cookie; forwarded byte-exact."""
    found = conversions.click_id(event.get("page_location"), "epik") or event.get("x-pin-ck-epik")
    if not found:
        found = request.cookies.get("_epik")
    return found if found.__class__ is str and EPIK_RE.fullmatch(found) else None


def _custom(event: Event, params: dict[str, Any], hashes: conversions.Hashes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    code = conversions.currency(event)
    if code:
        out["currency"] = code
    found = conversions.items(event, hashes.memo)
    value = conversions.amount(event, found)
    if value is not None:
        out["value"] = _decimal(value) if conversions.number(value) is not None else value
    if found and hashes.digest:  # the contents: nothing a dry run nobody sees checks
        contents = []
        for item in found:
            entry: dict[str, Any] = {"id": item.id, "quantity": item.quantity}
            if item.price is not None:
                entry["item_price"] = _decimal(item.price)
            if item.name:
                entry["item_name"] = item.name
            if item.category:
                entry["item_category"] = item.category
            if item.brand:
                entry["item_brand"] = item.brand
            contents.append(entry)
        out["contents"] = contents
        out["content_ids"] = [item.id for item in found]
        out["num_items"] = sum(item.quantity for item in found)
    order = conversions.order_id(event)
    if order:
        out["order_id"] = order
    search = conversions.search_term(event)
    if search:
        out["search_string"] = search
    if params.get("limited_data_processing") is True:
        out["opt_out_type"] = "LDP"
    conversions.add_configured(out, params.get("custom_data"))
    return out


def _decimal(value: float | int) -> str:
    """A number as Pinterest's string (`12`, `12.5`), never in exponent notation."""
    if value.__class__ is int or float(value).is_integer():
        return str(int(value))
    return format(value, ".10f").rstrip("0").rstrip(".")
