"""Common event data → GA4 `/g/collect` parameters (protocol v2). Pure functions, no I/O.

The reverse of `clients.ga4_params`: an event parsed from a gtag.js hit rebuilds to the same
parameters, so Google gets what the browser would have sent. Events from other clients
(collector, events API) are built from the common keys the same way.

Personal data is never written: `user_data`, top-level customer fields (`email`, `phone`,
names, addresses), every `x-…` vendor key (`x-fb-*` included), Google's own hashed
user-provided data (`em`) and any value that looks like an e-mail address are left out, and
so are page URL query parameters carrying one. GA4's terms forbid sending such data anyway.
"""

from __future__ import annotations

import ipaddress
import math
import re
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from tagserver.clients.ga4_params import (
    BARE_USER_DATA,
    CLIENT_HINTS,
    ITEM_KEYS,
    MAX_ITEMS,
    SIMPLE,
    SYSTEM_PROPERTIES,
    USER_DATA,
)

from tagserver import Event

GTAG_SAFE = "-_.!~*'()"  # what encodeURIComponent leaves as is

# event keys that have a parameter of their own, or are never sent
DEDICATED = {
    "event_name", "event_id", "event_time", "client_id", "user_id", "ip_override", "user_agent",
    "page_location", "page_referrer", "page_title", "page_hostname", "page_path", "language",
    "screen_resolution", "currency", "items", "consent", "user_data", "client_hints",
    "action_source", "ga_session_id", "ga_session_number", "engagement_time_msec", "custom_data",
}  # fmt: skip

# x-ga-<key> event keys that map back to a plain parameter (the other direction of SIMPLE)
FROM_SIMPLE = {key: param for param, (key, _) in SIMPLE.items()}
FROM_SYSTEM = {short: param for param, short in SYSTEM_PROPERTIES.items()}
FROM_HINTS = {hint: param for param, hint in CLIENT_HINTS.items()}
FROM_ITEM = {key: code for code, key in ITEM_KEYS.items()}

# parameters this module sets itself: a browser-sent value kept as x-ga-<name> never wins
OWN = {"v", "tid", "cid", "uid", "en", "_uip", "_et", "sid", "sct", "dl", "dt", "dr", "ul", "sr"}
OWN |= {"cu"} | set(SYSTEM_PROPERTIES) | set(CLIENT_HINTS)
# personal data by parameter name: the plain forms the client moves to user_data, Google's
# hashed user-provided data (`em=tv.1~…`) and our own js client id
PERSONAL = set(USER_DATA) | BARE_USER_DATA | {"em", "ud", "_ud", "ecid", "js_client_id"}
PERSONAL |= {"user_data", "address", "name", "full_name", "ip", "ip_address"}

CUSTOM_SLOTS = "0123456789abcdefghijklmnopqrstuvwxyz"
MAX_NAME_CHARS = 40
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
_GTAG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,39}")  # unknown gtag params: gtm, _fplc …
_EMAIL = re.compile(r"[^\s@/?&=:]+@[^\s@/?&=:]+\.[A-Za-z]{2,}")


def looks_personal(value: str) -> bool:
    """An e-mail address in the text (also percent-encoded: `%40`)."""
    if "@" not in value and "%40" not in value:
        return False
    return bool(_EMAIL.search(value.replace("%40", "@")))


def number_text(value: float | int) -> str:
    """19.99 → "19.99", 25.0 → "25" (how JavaScript prints numbers)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (isinstance(value, int) or math.isfinite(value))
    )


def scalar_text(value: Any) -> str | None:
    """A parameter value, or None when it cannot be one (objects, lists, nothing)."""
    kind = type(value)  # exact types first: this runs for every key of every event
    if kind is str:
        return value
    if kind is int:
        return str(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is float:
        return number_text(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return str(value)
    return number_text(value) if is_number(value) else None


def clean_url(url: str) -> str | None:
    """The URL without query parameters that carry an e-mail address; None when unreadable."""
    if not looks_personal(url):
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    kept = [(k, v) for k, v in query if not looks_personal(v) and k.lower() not in PERSONAL]
    rebuilt = urlunsplit(parts._replace(query=urlencode(kept)))
    return None if looks_personal(rebuilt) else rebuilt


@lru_cache(maxsize=4096)
def visitor_ip(ip: str, redact: bool) -> str | None:
    """The address for `_uip`; with `redact` the IPv4 last octet and the IPv6 tail after the
    first 48 bits are zeroed. None when it is not an IP address."""
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    if not redact:
        return str(address)
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


def item_text(item: dict[str, Any]) -> str | None:
    """An item dict → `idSKU1~nmShirt~pr9.5~k0color~v0blue` (None when nothing is left)."""
    fields: list[str] = []
    custom: list[tuple[str, str]] = []
    for key, value in item.items():
        shown = scalar_text(value)
        if shown is None or not isinstance(key, str):
            continue
        shown = shown.replace("~", " ")  # `~` separates fields: it cannot be in a value
        if looks_personal(shown):
            continue
        code = FROM_ITEM.get(key)
        if code is not None:
            fields.append(code + shown)
        elif key.startswith("x-ga-") and len(key) == 7 and key[5:] not in ITEM_KEYS:
            fields.append(key[5:] + shown)  # an unknown two-letter field, as received
        elif _NAME.fullmatch(key) and key.lower() not in PERSONAL:
            custom.append((key, shown))
    for slot, (name, shown) in zip(CUSTOM_SLOTS, custom, strict=False):
        fields.append(f"k{slot}{name}~v{slot}{shown}")
    return "~".join(fields) or None


def _derived_gcs(consent: Any) -> str | None:
    """`G1` + ad_storage bit + analytics_storage bit, for events that carry no gcs."""
    if not isinstance(consent, dict):
        return None
    known = [consent.get(k) for k in ("ad_storage", "analytics_storage")]
    if all(v is None for v in known):
        return None
    bits = ["0" if str(v).strip().lower() in ("denied", "false", "0", "no") else "1" for v in known]
    return "G1" + "".join(bits)


def build_params(
    event: Event,
    measurement_id: str,
    *,
    extra: dict[str, Any] | None = None,
    redact_ip: bool = False,
    derived_event_id: str | None = None,
    dropped: list[str] | None = None,
) -> dict[str, str]:
    """The `/g/collect` parameters of one event. `dropped` collects the names left out as
    personal data (for preview). `derived_event_id`: the id the server made up for this
    event, which is not sent (Google never saw it)."""
    out: dict[str, str] = {"v": "2", "tid": measurement_id}
    drop = dropped if dropped is not None else []

    # parameters kept as received (gtm, _p, gcs …), and the unknown ones gtag sent
    unknown: dict[str, str] = {}
    for key, value in event.items():
        if not key.startswith("x-ga-"):
            continue
        param = FROM_SIMPLE.get(key)
        if param is not None:
            if param not in OWN and param != "v" and (shown := scalar_text(value)) is not None:
                out[param] = shown
            continue
        name = key[5:]
        if name.startswith(("ep.", "epn.", "up.", "upn.", "mp2-")) or name in (
            "system_properties",
            "measurement_id",
        ):
            continue
        if name.lower() in PERSONAL:
            drop.append(name)
            continue
        shown = scalar_text(value)
        if shown is None or name in OWN or not _GTAG_NAME.fullmatch(name):
            continue
        if name.lower().startswith("tagserver"):  # a preview token must not reach Google
            continue
        if looks_personal(shown):
            drop.append(name)
            continue
        unknown[name] = shown
    if "gcs" not in out and (gcs := _derived_gcs(event.get("consent"))):
        out["gcs"] = gcs

    client_id = scalar_text(event.get("client_id"))
    if client_id:
        out["cid"] = client_id
    user_id = scalar_text(event.get("user_id"))
    if user_id:
        if looks_personal(user_id):
            drop.append("uid")
        else:
            out["uid"] = user_id
    for key, param in (("language", "ul"), ("screen_resolution", "sr")):
        if (shown := scalar_text(event.get(key))) is not None:
            out[param] = shown

    hints = event.get("client_hints")
    if isinstance(hints, dict):
        for hint, value in hints.items():
            param = FROM_HINTS.get(hint)
            if param is None:
                continue
            if hint == "full_version_list" and isinstance(value, list):
                out[param] = "|".join(
                    f"{quote(str(b.get('brand', '')), safe=GTAG_SAFE)};{b.get('version', '')}"
                    for b in value[:20]
                    if isinstance(b, dict)
                )
            elif hint in ("mobile", "wow64"):
                out[param] = "1" if value is True else "0"
            elif (shown := scalar_text(value)) is not None:
                out[param] = shown

    ip = event.get("ip_override")
    if isinstance(ip, str) and (sent_ip := visitor_ip(ip, redact_ip)):
        out["_uip"] = sent_ip

    for key, param in (("ga_session_id", "sid"), ("ga_session_number", "sct")):
        if (shown := scalar_text(event.get(key))) is not None:
            out[param] = shown
    for key, param in (("page_location", "dl"), ("page_referrer", "dr")):
        value = event.get(key)
        if isinstance(value, str):
            url = clean_url(value)
            if url is None or url != value:
                drop.append(param)
            if url is not None:
                out[param] = url
    title = scalar_text(event.get("page_title"))
    if title is not None:
        if looks_personal(title):
            drop.append("dt")
        else:
            out["dt"] = title

    out["en"] = str(event.get("event_name") or "")
    system = event.get("x-ga-system_properties")
    if isinstance(system, dict):
        for short, value in system.items():
            param = FROM_SYSTEM.get(short)
            if param is not None and (shown := scalar_text(value)) is not None:
                out[param] = shown
    if (shown := scalar_text(event.get("engagement_time_msec"))) is not None:
        out["_et"] = shown
    currency = scalar_text(event.get("currency"))
    if currency:
        out["cu"] = currency

    items = event.get("items")
    if isinstance(items, list):
        index = 0
        for item in items:
            if index >= MAX_ITEMS:
                drop.append(f"pr{MAX_ITEMS + 1}…")
                break
            shown = item_text(item) if isinstance(item, dict) else None
            if shown is not None:
                index += 1
                out[f"pr{index}"] = shown

    custom = event.get("custom_data")  # events API: custom_data is an object of its own
    event_params = {k: v for k, v in custom.items()} if isinstance(custom, dict) else {}
    event_params.update((k, v) for k, v in event.items() if _is_event_param(k))
    event_id = event.get("event_id")
    if event_id and event_id != derived_event_id:
        event_params["event_id"] = event_id
    if extra:
        event_params.update(extra)
    for name, value in event_params.items():
        _put_param(out, "ep", name, value, drop)

    properties = event.get("x-ga-mp2-user_properties")
    if isinstance(properties, dict):
        for name, value in properties.items():
            _put_param(out, "up", name, value, drop)

    for name, shown in unknown.items():
        out.setdefault(name, shown)
    return out


def _is_event_param(key: str) -> bool:
    return key not in DEDICATED and not key.startswith("x-") and not key.startswith("x_")


def _put_param(out: dict[str, str], kind: str, name: Any, value: Any, drop: list[str]) -> None:
    """`ep.NAME` (text) / `epn.NAME` (number), or `up.` / `upn.` for user properties."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return
    if name.lower() in PERSONAL:
        drop.append(f"{kind}.{name}")
        return
    shown = scalar_text(value)
    if shown is None or shown == "":
        return
    if looks_personal(shown):
        drop.append(f"{kind}.{name}")
        return
    typed = f"{kind}n" if is_number(value) else kind
    out.pop(f"{kind}.{name}", None)  # an extra parameter replaces the event's own
    out.pop(f"{kind}n.{name}", None)
    out[f"{typed}.{name}"] = shown


def encode(params: dict[str, str]) -> str:
    """url-encode like gtag.js (encodeURIComponent)."""
    return "&".join(
        quote(k, safe=GTAG_SAFE) + "=" + quote(v, safe=GTAG_SAFE) for k, v in params.items()
    )
