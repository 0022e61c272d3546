"""Common event data → one Snapchat Conversions API v3 event, personal data hashed here.

Snap's Parameters and Best Practices pages: normalize, then lowercase-hex SHA-256 (em trimmed
and lowercased; ph digits only with the country code, no `+`, no leading `00` or national
`0`; fn/ln lowercase letters, UTF-8 kept; ge, ct, st, zp, country, external_id likewise
hashed). IP and user agent go raw; `ScCid` as `sc_click_id`, the `_scid` cookie as
`sc_cookie1`. `event_id` sits at the top of each event (not in custom_data: Snap would not
deduplicate it).
"""

from __future__ import annotations

import re
from typing import Any

from tagserver import Event, RequestContext
from tagserver.toolkit import conversions

__all__ = ["DEFAULT_EVENT_NAMES", "STANDARD_EVENTS", "build", "snapchat_event_name"]

DEFAULT_EVENT_NAMES = {
    "page_view": "PAGE_VIEW",
    "view_item": "VIEW_CONTENT",
    "view_item_list": "LIST_VIEW",
    "add_to_cart": "ADD_CART",
    "add_to_wishlist": "ADD_TO_WISHLIST",
    "begin_checkout": "START_CHECKOUT",
    "add_payment_info": "ADD_BILLING",
    "purchase": "PURCHASE",
    "search": "SEARCH",
    "generate_lead": "SIGN_UP",
    "sign_up": "SIGN_UP",
    "login": "LOGIN",
    "share": "SHARE",
    "PageView": "PAGE_VIEW",
    "ViewContent": "VIEW_CONTENT",
    "AddToCart": "ADD_CART",
    "AddToWishlist": "ADD_TO_WISHLIST",
    "InitiateCheckout": "START_CHECKOUT",
    "AddPaymentInfo": "ADD_BILLING",
    "Purchase": "PURCHASE",
    "Search": "SEARCH",
    "Lead": "SIGN_UP",
    "CompleteRegistration": "SIGN_UP",
    "Subscribe": "SUBSCRIBE",
    "StartTrial": "START_TRIAL",
}
STANDARD_EVENTS = frozenset(
    {"PAGE_VIEW", "VIEW_CONTENT", "LIST_VIEW", "ADD_CART", "ADD_TO_WISHLIST",
     "START_CHECKOUT", "ADD_BILLING", "PURCHASE", "SIGN_UP", "LOGIN", "SEARCH", "SUBSCRIBE",
     "SAVE", "SHARE", "INVITE", "RESERVE", "RATE", "START_TRIAL", "AD_CLICK", "AD_VIEW",
     "COMPLETE_TUTORIAL", "LEVEL_COMPLETE", "ACHIEVEMENT_UNLOCKED", "SPENT_CREDITS",
     "APP_INSTALL", "APP_OPEN", "CUSTOM_EVENT_1", "CUSTOM_EVENT_2", "CUSTOM_EVENT_3",
     "CUSTOM_EVENT_4", "CUSTOM_EVENT_5"}
)  # fmt: skip
CLICK_ID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,500}")
SCID_RE = re.compile(r"[A-Za-z0-9_.\-]{8,128}")
HASHED_KEYS = ("em", "ph", "fn", "ln", "ge", "ct", "st", "zp", "country", "external_id")
USER_KEYS = {
    key: conversions.UserKey(key, key) for key in HASHED_KEYS
}  # the shared rules, Snap's names


def snapchat_event_name(name: str, custom: Any) -> str:
    return conversions.event_name(name, custom, DEFAULT_EVENT_NAMES)


def build(
    event: Event, params: dict[str, Any], request: RequestContext, hashes: conversions.Hashes
) -> tuple[dict[str, Any], dict[str, str]]:
    dropped: dict[str, str] = {}
    name = snapchat_event_name(str(event.get("event_name") or ""), params.get("event_name_map"))
    out = conversions.server_event(name, "WEB", event, request)
    if params.get("integration"):
        out["integration"] = str(params["integration"])
    out["user_data"] = _user(event, params, request, hashes, dropped)
    custom = _custom(event, params.get("custom_data"), hashes)
    if custom:
        out["custom_data"] = custom
    return out, dropped


def _user(
    event: Event,
    params: dict[str, Any],
    request: RequestContext,
    hashes: conversions.Hashes,
    dropped: dict[str, str],
) -> dict[str, Any]:
    raw = conversions.raw_identity(event, params.get("user_data"), hashes.memo)
    cc, region = conversions.regions(raw, params)
    user: dict[str, Any] = {}
    conversions.add_user_keys(user, raw, USER_KEYS, HASHED_KEYS, hashes, cc, region, dropped)
    conversions.add_client(user, event, "client_ip_address", "client_user_agent")
    sccid = (
        conversions.click_id(event.get("page_location"), "ScCid", ignore_case=True)
        or event.get("x-sc-ck-sccid")
        or request.cookies.get("_scclid")
    )
    if sccid.__class__ is str and CLICK_ID_RE.fullmatch(sccid):
        user["sc_click_id"] = sccid
    scid = event.get("x-sc-ck-scid") or request.cookies.get("_scid")
    if scid.__class__ is str and scid:
        if SCID_RE.fullmatch(scid):
            user["sc_cookie1"] = scid
        else:
            dropped["sc_cookie1"] = "malformed _scid value"
    return user


def _custom(event: Event, configured: Any, hashes: conversions.Hashes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    code = conversions.currency(event)
    if code:
        out["currency"] = code
    found = conversions.items(event, hashes.memo)
    value = conversions.amount(event, found)
    if value is not None:
        out["value"] = value
    if found and hashes.digest:  # the contents: nothing a dry run nobody sees checks
        contents = []
        for item in found:
            entry: dict[str, Any] = {"id": item.id, "quantity": item.quantity}
            if item.price is not None:
                entry["item_price"] = item.price
            if item.brand:
                entry["brand"] = item.brand
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
    conversions.add_configured(out, configured)
    return out
