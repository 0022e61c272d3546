"""Common event data → one Conversions API server event, personal data hashed here.

The server event is final when it leaves this module: hashed keys are SHA-256 (or dropped),
and nothing raw about the person remains, so it can go to the outbox, the preview and a
dead-letter row as is. `checks` then decides whether Meta would take it.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from tagserver import Event, RequestContext
from tagserver.toolkit.conversions import (
    Hashes,
    add_configured,
    currency,
    event_name,
    order_id,
    search_term,
)
from tagserver.toolkit.cookies import (
    FBC_RE,
    FBP_RE,
    fbclid_from,
    registrable_domain,
    subdomain_index,
)

from .normalize import NORMALIZERS, hash_text, hash_value

__all__ = [
    "DEFAULT_EVENT_NAMES",
    "STANDARD_EVENTS",
    "ACTION_SOURCES",
    "USER_DATA_KEYS",
    "Built",
    "build",
    "meta_event_name",
]

# GA4-style names → Meta's standard names (Meta's own server-side GTM tag); others pass through
DEFAULT_EVENT_NAMES = {
    "page_view": "PageView",
    "view_item": "ViewContent",
    "add_to_cart": "AddToCart",
    "add_to_wishlist": "AddToWishlist",
    "begin_checkout": "InitiateCheckout",
    "add_payment_info": "AddPaymentInfo",
    "purchase": "Purchase",
    "search": "Search",
    "generate_lead": "Lead",
    "sign_up": "CompleteRegistration",
}
STANDARD_EVENTS = frozenset(
    {"PageView", "ViewContent", "Search", "AddToCart", "AddToWishlist", "InitiateCheckout",
     "AddPaymentInfo", "Purchase", "Lead", "CompleteRegistration", "Contact",
     "CustomizeProduct", "Donate", "FindLocation", "Schedule", "StartTrial",
     "SubmitApplication", "Subscribe"}
)  # fmt: skip
ACTION_SOURCES = (
    "website", "app", "email", "phone_call", "chat", "physical_store", "system_generated",
    "business_messaging", "other",
)  # fmt: skip

# the order Meta documents them; hashed keys first
USER_DATA_KEYS = (
    "em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country", "external_id",
    "client_ip_address", "client_user_agent", "fbc", "fbp",
)  # fmt: skip
PLAIN_KEYS = frozenset({"client_ip_address", "client_user_agent", "fbc", "fbp"})

_DROP_REASONS = {
    "em": "not an email address",
    "ph": "not a phone number (a national number needs the address country or "
    "default_phone_country)",
    "ge": "not a gender Meta knows (f or m)",
    "db": "not a date of birth",
    "country": "not a country name or ISO code",
}


@dataclass
class Built:
    """A server event and what could not be used (key → why; never the value itself)."""

    event: dict[str, Any]
    dropped: dict[str, str] = field(default_factory=dict)


def meta_event_name(name: str, custom: dict[str, Any] | None) -> str:
    """The tag's own map first, then the GA4 → Meta table, else the name unchanged."""
    return event_name(name, custom, DEFAULT_EVENT_NAMES)


def build(
    event: Event, params: dict[str, Any], request: RequestContext, hashes: Hashes | None = None
) -> Built:
    """The server event for `event` with the tag's resolved `params`. User data is hashed
    straight away, or by `hashes` when given (a dry run nobody sees: normalized, not hashed)."""
    dropped: dict[str, str] = {}
    name = event.get("event_name")
    event_time = event.get("event_time")
    if event_time.__class__ is not int and (
        event_time.__class__ is not float or not math.isfinite(event_time)
    ):
        event_time = request.received_at
    event_time = int(event_time)
    event_id = event.get("event_id") or request.derived_event_id(0)
    server: dict[str, Any] = {
        "event_name": meta_event_name(str(name or ""), params.get("event_name_map")),
        "event_time": event_time,
        "event_id": str(event_id),
        "action_source": event.get("action_source") or params.get("action_source") or "website",
    }
    location = event.get("page_location")
    if isinstance(location, str) and location:
        server["event_source_url"] = location
    referrer = event.get("page_referrer")
    if isinstance(referrer, str) and referrer:
        server["referrer_url"] = referrer
    if isinstance(event.get("opt_out"), bool):
        server["opt_out"] = event["opt_out"]
    server["user_data"] = user_data(event, params, request, event_time, dropped, hashes)
    custom = custom_data(event, params.get("custom_data"))
    if custom:
        server["custom_data"] = custom
    if "data_processing_options" in event or "data_processing_options" in params:
        _limited_data_use(server, event, params)
    return Built(server, dropped)


# -- user_data ---------------------------------------------------------------------------------


def user_data(
    event: Event,
    params: dict[str, Any],
    request: RequestContext,
    event_time: int,
    dropped: dict[str, str],
    hashes: Hashes | None,
) -> dict[str, Any]:
    """Hashed customer information plus the never-hashed IP, user agent, fbc and fbp.

    Sources, first match wins: the tag's `user_data` param; sGTM's `user_data` (email_address,
    phone_number, gender, date_of_birth, address{first_name, last_name, city, region,
    postal_code, country} — an address may be a list — and their sha256_* forms); `user_id`
    for external_id; the Meta pixel's `x-fb-ud-*` keys.
    """
    acc: dict[str, list[str]] = {}
    raw_ids = params.get("external_id_hashing") == "raw"
    hash_one = hash_text if hashes is None else hashes.hash
    configured = params.get("user_data")
    plain: dict[str, Any] = {}
    address_fields, person_fields = _ADDRESS_FIELDS, _PERSON_FIELDS
    if configured.__class__ is dict and configured:
        taken = set()
        for key, value in configured.items():
            if value is None or value == "":
                continue
            if key in PLAIN_KEYS:
                plain[key] = value
            elif key in NORMALIZERS:
                taken.add(key)
                cc = _region(configured.get("country")) if key in ("st", "zp", "ph") else None
                if key == "ph" and cc is None:
                    cc = _region(params.get("default_phone_country"))
                _add(acc, key, value, cc, dropped, raw_ids, hash_one)
        if taken:  # what the tag configures is not read from the event
            address_fields = tuple(f for f in address_fields if f[0] not in taken)
            person_fields = tuple(f for f in person_fields if f[0] not in taken)

    ud = event.get("user_data")
    if ud.__class__ is not dict:
        ud = _NO_USER_DATA
    address_cc = None
    addresses = ud.get("address")
    if addresses.__class__ is dict:
        addresses = (addresses,)
    if addresses.__class__ is tuple or addresses.__class__ is list:
        for address in addresses:
            if address.__class__ is not dict:
                continue
            given = address.get("country")
            cc = _COUNTRY(given.strip(), None) if given.__class__ is str and given else None
            if address_cc is None:
                address_cc = cc
            for key, field, hashed_field, _pixel_key in address_fields:
                value = address.get(field) or (hashed_field and address.get(hashed_field))
                if value:
                    _add(acc, key, value, cc, dropped, raw_ids, hash_one)
    for key, sources, pixel_key in person_fields:
        value = event.get("user_id") if key == "external_id" else None
        if not value:
            for source in sources:
                value = ud.get(source)
                if value:
                    break
            else:
                value = event.get(pixel_key)
        if value:
            cc = None
            if key == "ph":
                cc = address_cc or _region(params.get("default_phone_country"))
            _add(acc, key, value, cc, dropped, raw_ids, hash_one)
    for key, _field, _hashed, pixel_key in address_fields:  # the pixel's own keys (GA4 hits)
        if key not in acc:
            value = event.get(pixel_key)
            if value:
                _add(acc, key, value, address_cc, dropped, raw_ids, hash_one)

    out: dict[str, Any] = {key: acc[key] for key in HASHED_ORDER if key in acc}
    ip = plain.get("client_ip_address") or event.get("ip_override")
    if ip:
        valid = _ip(ip.strip()) if ip.__class__ is str else None
        if valid:
            out["client_ip_address"] = valid
        else:
            dropped["client_ip_address"] = "not an IP address"
    agent = plain.get("client_user_agent") or event.get("user_agent")
    if agent.__class__ is str and agent:
        agent = agent.strip()
        if agent:
            out["client_user_agent"] = agent
    fbc = _fbc(plain.get("fbc"), event, request, event_time, dropped)
    if fbc:
        out["fbc"] = fbc
    fbp = plain.get("fbp") or event.get("x-fb-ck-fbp") or request.cookies.get("_fbp")
    if fbp:
        if fbp.__class__ is str and FBP_RE.fullmatch(fbp):
            out["fbp"] = fbp
        else:
            dropped["fbp"] = "malformed _fbp value (expected fb.N.TIME.RANDOM)"
    return out


HASHED_ORDER = ("em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country", "external_id")
# key, user_data fields in order of preference, the Meta pixel's top-level key
_PERSON_FIELDS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("em", ("email_address", "sha256_email_address", "email"), "x-fb-ud-em"),
    ("ph", ("phone_number", "sha256_phone_number", "phone"), "x-fb-ud-ph"),
    ("ge", ("gender",), "x-fb-ud-ge"),
    ("db", ("date_of_birth",), "x-fb-ud-db"),
    ("external_id", ("external_id",), "x-fb-ud-external_id"),
)
# key, address field, its already-hashed form, the Meta pixel's top-level key
_ADDRESS_FIELDS: tuple[tuple[str, str, str, str], ...] = (
    ("fn", "first_name", "sha256_first_name", "x-fb-ud-fn"),
    ("ln", "last_name", "sha256_last_name", "x-fb-ud-ln"),
    ("ct", "city", "", "x-fb-ud-ct"),
    ("st", "region", "", "x-fb-ud-st"),
    ("zp", "postal_code", "", "x-fb-ud-zp"),
    ("country", "country", "", "x-fb-ud-country"),
)
_COUNTRY = NORMALIZERS["country"]
_NO_USER_DATA: dict[str, Any] = {}  # read only
Hash = Callable[[str, str, "str | None"], "str | None"]


def _add(
    acc: dict[str, list[str]],
    key: str,
    value: Any,
    context: str | None,
    dropped: dict[str, str],
    raw_ids: bool,
    hash_one: Hash,
) -> None:
    """Normalize + hash one raw value (or each of a list) into `acc[key]`, without repeats."""
    if value.__class__ is str and not (raw_ids and key == "external_id"):
        text = value.strip()  # the common case: one text value, straight to its hasher
        result = hash_one(key, text, context) if text else None
    elif value.__class__ is list:
        for item in value:
            if item is not None and item != "":
                _add(acc, key, item, context, dropped, raw_ids, hash_one)
        return
    else:
        result = _other_value(key, value, context, raw_ids)
    if not result:
        dropped.setdefault(key, _DROP_REASONS.get(key, "empty after normalization"))
    elif key not in acc:
        acc[key] = [result]
    elif result not in acc[key]:
        acc[key].append(result)


def _other_value(key: str, value: Any, context: str | None, raw_ids: bool) -> str | None:
    """A raw external_id as given, or the hash of a number (phones, ZIPs, ids typed as
    numbers; 42.0 counts as 42); None when unusable."""
    if key == "external_id" and raw_ids:
        if value.__class__ is str:
            return value.strip()
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return None
    if value.__class__ is float and value.is_integer():
        value = int(value)
    return hash_value(key, value, context)


def _region(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return NORMALIZERS["country"](value.strip(), None)
    return None


_IPV4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
)


def _ip(text: str) -> str | None:
    """A valid IP as Meta wants it (IPv4-mapped IPv6 unwrapped), or None."""
    if _IPV4.fullmatch(text):  # the common case, without ipaddress's slow parser
        return text
    return _ipv6(text)


def _ipv6(text: str) -> str | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _fbc(
    configured: Any,
    event: Event,
    request: RequestContext,
    event_time: int,
    dropped: dict[str, str],
) -> str | None:
    """`fbc`: the tag's or the event's value (the collector resolved it), else the `_fbc`
    cookie unless the page URL brings another click id, else one built from that `fbclid`."""
    given = configured or event.get("x-fb-ck-fbc")
    if given:
        if isinstance(given, str) and FBC_RE.fullmatch(given):
            return given
        dropped["fbc"] = "malformed _fbc value (expected fb.N.TIME.FBCLID)"
    location = event.get("page_location")
    # most URLs have no click id: the substring test spares fbclid_from's call
    fbclid = fbclid_from(location) if isinstance(location, str) and "fbclid=" in location else None
    cookie = request.cookies.get("_fbc")
    match = FBC_RE.fullmatch(cookie) if cookie else None
    if match and (fbclid is None or match.group(1) == fbclid):
        return cookie
    if cookie and not match and "fbc" not in dropped:
        dropped["fbc"] = "malformed _fbc cookie (expected fb.N.TIME.FBCLID)"
    if fbclid is None:
        return None
    try:
        host = urlsplit(location).hostname or ""
    except ValueError:
        host = ""
    domain = registrable_domain(host)
    index = subdomain_index(domain) if domain else 1
    # the event's own time, so a retried or re-fired event builds the very same value
    return f"fb.{index}.{event_time * 1000}.{fbclid}"


# -- custom_data ------------------------------------------------------------------------------


def custom_data(event: Event, configured: Any) -> dict[str, Any]:
    """From value, currency, items, transaction_id, search_term; then `x-fb-cd-*` keys, the
    event's own `custom_data` object, and the tag's configured params (empty values skipped),
    each winning over the one before."""
    out: dict[str, Any] = {}
    value = event.get("value")
    if value.__class__ is float or value.__class__ is int:  # the common case, as is
        out["value"] = value
    elif value is not None and value != "":
        out["value"] = _number(value)
    code = currency(event)
    if code:
        out["currency"] = code
    items = event.get("items")
    if items.__class__ is list and items:
        _contents(items, out)
    order = order_id(event)
    if order:
        out["order_id"] = order
    search = search_term(event)
    if search:
        out["search_string"] = search
    if _PIXEL_CD in "\n".join(event):  # most events have none: one search, not one per key
        _pixel_custom_data(event, out)
    own = event.get("custom_data")
    if (own.__class__ is dict and own) or (configured.__class__ is dict and configured):
        add_configured(out, own)
        add_configured(out, configured)
        if "value" in out:
            out["value"] = _number(out["value"])
    return out


_PIXEL_CD = "x-fb-cd-"


def _pixel_custom_data(event: Event, out: dict[str, Any]) -> None:
    """The Meta pixel's own custom data keys (`x-fb-cd-value` ..., on GA4 hits)."""
    for key in event:
        if key[:8] == _PIXEL_CD and len(key) > 8:
            value = event[key]
            if value is not None and value != "":
                out[key[8:]] = value


def _contents(items: list[Any], out: dict[str, Any]) -> None:
    """GA4 items → Meta `contents` (item_id, else item_name → id; quantity, default 1;
    price → item_price; delivery_category), `content_ids`, `num_items`, `content_type`.
    Items without an id are skipped."""
    contents, ids, count = [], [], 0
    for item in items:
        if item.__class__ is not dict:
            continue
        ident = item.get("item_id")
        if ident.__class__ is not str or not ident:  # the common case (an id) checked first
            if ident is None or ident == "":
                ident = item.get("item_name")
            if ident is None or ident == "" or isinstance(ident, (dict, list, bool)):
                continue
            if ident.__class__ is not str:
                ident = str(ident)
        quantity = item.get("quantity", 1)
        if quantity.__class__ is not int:
            quantity = _number(quantity)
            if quantity.__class__ is float and math.isfinite(quantity):
                quantity = int(quantity)
            elif quantity.__class__ is not int:
                quantity = 1
        if quantity < 1:
            quantity = 1
        entry: dict[str, Any] = {"id": ident, "quantity": quantity}
        price = item.get("price")
        if price.__class__ is float:  # the common case, without _number
            if math.isfinite(price):
                entry["item_price"] = price
        elif price is not None:
            price = _number(price)
            if price.__class__ is int or (price.__class__ is float and math.isfinite(price)):
                entry["item_price"] = price
        category = item.get("delivery_category")
        if category.__class__ is str and category:
            entry["delivery_category"] = category
        contents.append(entry)
        ids.append(ident)
        count += quantity
    if contents:
        out["contents"] = contents
        out["content_ids"] = ids
        out["num_items"] = count
        out["content_type"] = "product"


def _number(value: Any) -> Any:
    """A number from a number or numeric text; anything else is returned unchanged (and
    `checks` refuses it where a number is required)."""
    if value.__class__ is float or value.__class__ is int:
        return value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return value
        if math.isfinite(number):
            return int(number) if number.is_integer() and "." not in value else number
    return value


# -- Limited Data Use --------------------------------------------------------------------------


def _limited_data_use(server: dict[str, Any], event: Event, params: dict[str, Any]) -> None:
    """`data_processing_options` from the event, else the tag; with LDU also country and
    state (0 = let Meta geolocate)."""
    options = event.get("data_processing_options")
    source: dict[str, Any] = event
    if options is None:
        options, source = params.get("data_processing_options"), params
    if options is None:
        return
    if isinstance(options, str):
        options = [options] if options.strip() else []
    if not isinstance(options, list):
        return
    server["data_processing_options"] = [str(o) for o in options]
    if any(str(o).upper() == "LDU" for o in options):
        for key in ("data_processing_options_country", "data_processing_options_state"):
            value = source.get(key)
            if value is None and source is event:
                value = params.get(key)
            server[key] = int(value) if _is_int(value) else 0


def _is_int(value: Any) -> TypeGuard[int | str]:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().lstrip("-").isdigit()
