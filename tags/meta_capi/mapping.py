"""Common event data → one Conversions API server event, personal data hashed here.

The server event is final when it leaves this module: hashed keys are SHA-256 (or dropped),
and nothing raw about the person remains, so it can go to the outbox, the preview and a
dead-letter row as is. `checks` then decides whether Meta would take it.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from tagserver.cookies import FBC_RE, FBP_RE, fbclid_from, registrable_domain, subdomain_index
from tagserver.event import Event, RequestContext

from .normalize import NORMALIZERS, hash_value

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

# where each hashed key is found in common event data, first match wins
_PERSON_SOURCES: dict[str, tuple[tuple[str, ...], ...]] = {
    "em": (("user_data", "email_address"), ("user_data", "sha256_email_address"),
           ("user_data", "email"), ("x-fb-ud-em",)),
    "ph": (("user_data", "phone_number"), ("user_data", "sha256_phone_number"),
           ("user_data", "phone"), ("x-fb-ud-ph",)),
    "ge": (("user_data", "gender"), ("x-fb-ud-ge",)),
    "db": (("user_data", "date_of_birth"), ("x-fb-ud-db",)),
    "external_id": (("user_id",), ("user_data", "external_id"), ("x-fb-ud-external_id",)),
}  # fmt: skip
_ADDRESS_SOURCES: dict[str, tuple[str, ...]] = {
    "fn": ("first_name", "sha256_first_name"),
    "ln": ("last_name", "sha256_last_name"),
    "ct": ("city",),
    "st": ("region",),
    "zp": ("postal_code",),
    "country": ("country",),
}
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
    if custom:
        mapped = custom.get(name)
        if isinstance(mapped, str) and mapped.strip():
            return mapped.strip()
    return DEFAULT_EVENT_NAMES.get(name, name)


def build(event: Event, params: dict[str, Any], request: RequestContext) -> Built:
    """The server event for `event` with the tag's resolved `params`."""
    dropped: dict[str, str] = {}
    name = event.get("event_name")
    event_time = event.get("event_time")
    if not isinstance(event_time, (int, float)) or isinstance(event_time, bool):
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
    server["user_data"] = user_data(event, params, request, event_time, dropped)
    custom = custom_data(event, params.get("custom_data"))
    if custom:
        server["custom_data"] = custom
    _limited_data_use(server, event, params)
    return Built(server, dropped)


# -- user_data ---------------------------------------------------------------------------------


def user_data(
    event: Event,
    params: dict[str, Any],
    request: RequestContext,
    event_time: int,
    dropped: dict[str, str],
) -> dict[str, Any]:
    """Hashed customer information plus the never-hashed IP, user agent, fbc and fbp."""
    raw: dict[str, list[Any]] = {}
    ud = event.get("user_data")
    ud = ud if isinstance(ud, dict) else {}
    for key, sources in _PERSON_SOURCES.items():
        for source in sources:
            container = ud if source[0] == "user_data" else event
            value = container.get(source[-1])
            if _present(value):
                raw[key] = _values(value)
                break
    addresses = ud.get("address")
    if isinstance(addresses, dict):
        addresses = [addresses]
    countries: list[str | None] = []
    for address in addresses if isinstance(addresses, list) else ():
        if not isinstance(address, dict):
            continue
        given = address.get("country")
        country = NORMALIZERS["country"](given.strip(), None) if isinstance(given, str) else None
        countries.append(country)
        for key, fields in _ADDRESS_SOURCES.items():
            for f in fields:
                value = address.get(f)
                if _present(value):
                    raw.setdefault(key, []).extend((v, country) for v in _values(value))
                    break
    for key in _ADDRESS_SOURCES:  # the Meta pixel's own keys, as GA4 hits may carry them
        value = event.get("x-fb-ud-" + key)
        if key not in raw and _present(value):
            raw[key] = [(v, None) for v in _values(value)]

    configured = params.get("user_data")
    plain: dict[str, Any] = {}
    if isinstance(configured, dict):
        for key, value in configured.items():
            if key in PLAIN_KEYS:
                if _present(value):
                    plain[key] = value
            elif key in NORMALIZERS and _present(value):
                raw[key] = _values(value)

    address_country = next((c for c in countries if c), None)
    phone_region = address_country or _region(params.get("default_phone_country"))
    external_raw = params.get("external_id_hashing") == "raw"
    out: dict[str, Any] = {}
    for key in USER_DATA_KEYS:
        values = raw.get(key)
        if not values:
            continue
        hashed: list[str] = []
        for value in values:
            context = None
            if isinstance(value, tuple):
                value, context = value
            if key == "ph":
                context = context or phone_region
            elif key in ("st", "zp"):
                context = context or address_country
            if key == "external_id" and external_raw:
                result = str(value).strip() or None
            else:
                result = hash_value(key, value, context)
            if result is None:
                dropped.setdefault(key, _DROP_REASONS.get(key, "empty after normalization"))
            elif result not in hashed:
                hashed.append(result)
        if hashed:
            out[key] = hashed

    ip = plain.get("client_ip_address") or event.get("ip_override")
    if _present(ip):
        valid = _ip(str(ip).strip())
        if valid:
            out["client_ip_address"] = valid
        else:
            dropped["client_ip_address"] = "not an IP address"
    agent = plain.get("client_user_agent") or event.get("user_agent")
    if isinstance(agent, str) and agent.strip():
        out["client_user_agent"] = agent.strip()
    fbc = _fbc(plain.get("fbc"), event, request, event_time, dropped)
    if fbc:
        out["fbc"] = fbc
    fbp = plain.get("fbp") or event.get("x-fb-ck-fbp") or request.cookies.get("_fbp")
    if _present(fbp):
        if isinstance(fbp, str) and FBP_RE.fullmatch(fbp):
            out["fbp"] = fbp
        else:
            dropped["fbp"] = "malformed _fbp value (expected fb.N.TIME.RANDOM)"
    return out


def _present(value: Any) -> bool:
    if value is None or value == "" or isinstance(value, bool):
        return False
    if isinstance(value, list):
        return any(_present(v) for v in value)
    return isinstance(value, (str, int, float))


def _values(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [v for v in value if _present(v)]
    if isinstance(value, float) and value.is_integer():
        return [int(value)]
    return [value]


def _region(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return NORMALIZERS["country"](value.strip(), None)
    return None


@lru_cache(maxsize=4096)
def _ip(text: str) -> str | None:
    """A valid IP as Meta wants it (IPv4-mapped IPv6 unwrapped), or None."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:  # type: ignore[union-attr]
        return str(addr.ipv4_mapped)  # type: ignore[union-attr]
    return text if addr.version == 4 else str(addr)


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
    if _present(given):
        if isinstance(given, str) and FBC_RE.fullmatch(given):
            return given
        dropped["fbc"] = "malformed _fbc value (expected fb.N.TIME.FBCLID)"
    location = event.get("page_location")
    fbclid = fbclid_from(location) if isinstance(location, str) else None
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
    if value is not None and value != "":
        out["value"] = _number(value)
    currency = event.get("currency")
    if isinstance(currency, str) and currency.strip():
        out["currency"] = currency.strip().upper()
    items = event.get("items")
    if isinstance(items, list) and items:
        contents = list(_contents(items))
        if contents:
            out["contents"] = contents
            out["content_ids"] = [c["id"] for c in contents]
            out["num_items"] = sum(c["quantity"] for c in contents)
            out["content_type"] = "product"
    order = event.get("transaction_id")
    if order is not None and order != "":
        out["order_id"] = str(order)
    search = event.get("search_term")
    if isinstance(search, str) and search:
        out["search_string"] = search
    for key, value in event.items():  # the Meta pixel's own custom data keys (GA4 hits)
        if key.startswith("x-fb-cd-") and len(key) > 8 and value is not None and value != "":
            out[key[8:]] = value
    own = event.get("custom_data")
    if isinstance(own, dict):
        out.update({k: v for k, v in own.items() if v is not None and v != ""})
    if isinstance(configured, dict):
        out.update({k: v for k, v in configured.items() if v is not None and v != ""})
    if "value" in out:
        out["value"] = _number(out["value"])
    return out


def _contents(items: list[Any]) -> Iterator[dict[str, Any]]:
    for item in items:
        if not isinstance(item, dict):
            continue
        ident = item.get("item_id")
        if ident is None or ident == "":
            ident = item.get("item_name")
        if ident is None or ident == "" or isinstance(ident, (dict, list, bool)):
            continue
        quantity = _number(item.get("quantity", 1))
        entry: dict[str, Any] = {
            "id": str(ident),
            "quantity": int(quantity) if isinstance(quantity, (int, float)) and quantity > 0 else 1,
        }
        price = _number(item.get("price"))
        if isinstance(price, (int, float)):
            entry["item_price"] = price
        category = item.get("delivery_category")
        if isinstance(category, str) and category:
            entry["delivery_category"] = category
        yield entry


def _number(value: Any) -> Any:
    """A number from a number or numeric text; anything else is returned unchanged (and
    `checks` refuses it where a number is required)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
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


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().lstrip("-").isdigit()
