"""GA4 `/g/collect` parameters → common event data. Pure functions, no I/O.

A hit is a url-encoded parameter set in the query string (one event), or a shared query plus
one url-encoded line per event in the body (a batch): each line is merged over the shared
parameters. Parameter names follow gtag.js; the event keys follow sGTM's GA4 client, so a
container written for sGTM reads the same data here.

Bad input never raises anything but `HitParseError`: a broken shared query refuses the hit,
a broken body line is skipped and reported (`ParsedHit.skipped`), and a parameter that cannot
be used (a non-numeric `epn.`, an item index out of range) is dropped with a warning.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

from tagserver import Event
from tagserver.toolkit.events import add_page_parts, strip_preview

MAX_KEY_CHARS = 256
MAX_VALUE_CHARS = 8192
MAX_PARAMS = 1000  # per event, shared and line together
MAX_ITEMS = 200  # pr1 … pr200, as GA4
MAX_ITEM_FIELDS = 100
MAX_EVENT_NAME_CHARS = 100
MAX_REASONS = 20  # skipped-line reasons kept for the response and preview

# plain parameters: name → (event key, kind)
SIMPLE: dict[str, tuple[str, str]] = {
    "v": ("x-ga-protocol_version", "str"),
    "tid": ("x-ga-measurement_id", "str"),
    "cid": ("client_id", "str"),
    "uid": ("user_id", "str"),
    "sid": ("ga_session_id", "str"),
    "sct": ("ga_session_number", "int"),
    "seg": ("x-ga-mp2-seg", "str"),
    "_et": ("engagement_time_msec", "int"),
    "dl": ("page_location", "str"),
    "dt": ("page_title", "str"),
    "dr": ("page_referrer", "str"),
    "ul": ("language", "str"),
    "sr": ("screen_resolution", "str"),
    "cu": ("currency", "str"),
    "gcs": ("x-ga-gcs", "str"),
    "gcd": ("x-ga-gcd", "str"),
    "npa": ("x-ga-npa", "str"),
    "dma": ("x-ga-dma", "str"),
    "dma_cps": ("x-ga-dma_cps", "str"),
    "_p": ("x-ga-page_id", "str"),
    "_s": ("x-ga-request_count", "int"),
}

SYSTEM_PROPERTIES = {"_ss": "ss", "_fv": "fv", "_nsi": "nsi", "_c": "c", "_dbg": "dbg"}

CLIENT_HINTS = {
    "uaa": "architecture",
    "uab": "bitness",
    "uafvl": "full_version_list",
    "uamb": "mobile",
    "uam": "model",
    "uap": "platform",
    "uapv": "platform_version",
    "uaw": "wow64",
}

ITEM_KEYS = {
    "id": "item_id",
    "nm": "item_name",
    "br": "item_brand",
    "ca": "item_category",
    "c2": "item_category2",
    "c3": "item_category3",
    "c4": "item_category4",
    "c5": "item_category5",
    "va": "item_variant",
    "pr": "price",
    "qt": "quantity",
    "cp": "coupon",
    "ds": "discount",
    "ln": "item_list_name",
    "li": "item_list_id",
    "lp": "index",
    "af": "affiliation",
    "lo": "location_id",
    "cn": "creative_name",
    "cs": "creative_slot",
    "pi": "promotion_id",
    "pn": "promotion_name",
}
ITEM_NUMBERS = {"price", "quantity", "discount", "index"}

# plain-form user data sent as ep./up. (or bare) parameters → where it goes in user_data
USER_DATA: dict[str, tuple[str, ...]] = {}
for _path, _names in {
    ("email_address",): ("em", "email", "email_address", "user_email"),
    ("phone_number",): ("ph", "phone", "phone_number", "user_phone"),
    ("gender",): ("ge", "gender"),
    ("date_of_birth",): ("db", "date_of_birth", "birthday"),
    ("address", "first_name"): ("fn", "first_name", "firstname"),
    ("address", "last_name"): ("ln", "last_name", "lastname"),
    ("address", "street"): ("street", "street_address"),
    ("address", "city"): ("ct", "city"),
    ("address", "region"): ("st", "region"),
    ("address", "postal_code"): ("zp", "postal_code", "zip_code"),
    ("address", "country"): ("country", "country_code"),
}.items():
    for _name in _names:
        USER_DATA[_name] = _path
# bare (not ep./up.) forms accepted: only the explicit ones, short keys collide with GA's own
BARE_USER_DATA = {"em", "ph", "email", "phone", "email_address", "phone_number"}

# event keys a browser must not set through ep./epn.: they are filled from the request or
# built from dedicated parameters, and so is any `x-…` vendor key except the Meta pixel's own
# user/custom data keys a page may send (`x-fb-ud-em`, `x-fb-cd-…`, read by the Meta tag).
# Such a parameter is kept as `x-ga-ep.NAME`.
PAGE_SET = ("x-fb-ud-", "x-fb-cd-")
PROTECTED = {
    "event_name", "client_id", "ip_override", "user_agent", "event_time", "consent", "items",
    "user_data", "client_hints", "action_source", "x-ga-mp2-user_properties",
    "x-ga-system_properties",
}  # fmt: skip

GCD_GRANTED = set("tvnr")  # gcd letters whose final state is granted
GCD_DENIED = set("pqmu")
GCD_SIGNALS = ("ad_storage", "analytics_storage", "ad_user_data", "ad_personalization")

_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_INTEGER = re.compile(r"[+-]?\d{1,18}")
_GCS = re.compile(r"G1([01])([01])")
_ITEM_INDEX = re.compile(r"pr([1-9]\d{0,8})")


class HitParseError(ValueError):
    """The parameter set cannot be read; the message says where and why."""


class BatchTooLarge(HitParseError):
    """More event lines than one request may carry."""


@dataclass
class ParsedHit:
    events: list[Event]
    lines: int = 0  # event lines in the body (0: a query-only hit)
    skipped: int = 0  # lines that made no event
    reasons: list[str] = field(default_factory=list)  # why, first MAX_REASONS
    warnings: list[str] = field(default_factory=list)  # parameters dropped, per event

    def skip(self, reason: str) -> None:
        self.skipped += 1
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(reason)


def decode_params(raw: bytes) -> dict[str, str]:
    """`a=1&b=%C3%A9` → dict, strictly: bad percent-escapes and invalid UTF-8 are errors."""
    params: dict[str, str] = {}
    if not raw:
        return params
    for part in raw.split(b"&"):
        if not part:
            continue
        key_raw, _, value_raw = part.partition(b"=")
        key = _decode(key_raw)
        if key is None:
            raise HitParseError(f"a parameter name: {_why(key_raw)}")
        if not key:
            continue
        if len(key) > MAX_KEY_CHARS:
            raise HitParseError(f"a parameter name is longer than {MAX_KEY_CHARS} characters")
        value = _decode(value_raw)
        if value is None:
            raise HitParseError(f"parameter {_show(key)}: {_why(value_raw)}")
        if len(value) > MAX_VALUE_CHARS:
            raise HitParseError(
                f"parameter {_show(key)} has {len(value)} characters, "
                f"over the limit of {MAX_VALUE_CHARS}"
            )
        params[key] = value
        if len(params) > MAX_PARAMS:
            raise HitParseError(f"more than {MAX_PARAMS} parameters")
    return params


def _decode(raw: bytes) -> str | None:
    """Form-decode one name or value; None when it is unreadable (`_why` says how)."""
    if b"%" not in raw and raw.isascii():  # most gtag values: nothing to unescape
        text = raw.decode("ascii")
        if "+" in text:
            text = text.replace("+", " ")
    else:
        if b"%" in raw and _BAD_PERCENT.search(raw):
            return None
        try:
            text = unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None if "\x00" in text else text


def _why(raw: bytes) -> str:
    if _BAD_PERCENT.search(raw):
        return "malformed percent-encoding"
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return "not valid UTF-8"
    return "contains a NUL character"


def _show(text: str, limit: int = 40) -> str:
    """A name safe to quote in a reason: short, printable ASCII."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return ascii(shown)


def parse_number(text: str) -> int | float | None:
    """`"30"` → 30, `"19.99"` → 19.99; None when not a finite number."""
    text = text.strip()
    if _INTEGER.fullmatch(text):
        return int(text)
    if len(text) > 64:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def parse_item(text: str, warnings: list[str], where: str) -> dict[str, Any] | None:
    """`idSKU1~nmShirt~pr9.5~k0color~v0blue` → an item dict; None when nothing usable."""
    item: dict[str, Any] = {}
    custom_names: dict[str, str] = {}
    custom_values: dict[str, str] = {}
    fields_ = text.split("~")
    if len(fields_) > MAX_ITEM_FIELDS:
        warnings.append(f"{where}: more than {MAX_ITEM_FIELDS} fields, the rest ignored")
        fields_ = fields_[:MAX_ITEM_FIELDS]
    for part in fields_:
        if len(part) < 2:
            continue
        code, value = part[:2], part[2:]
        if code[0] == "k" and code != "k":
            custom_names[code[1]] = value
            continue
        if code[0] == "v" and code != "va":
            custom_values[code[1]] = value
            continue
        key = ITEM_KEYS.get(code)
        if key is None:
            item[f"x-ga-{code}"] = value
        elif key in ITEM_NUMBERS:
            number = parse_number(value)
            if number is None:
                warnings.append(f"{where}: {code} {_show(value)} is not a number, dropped")
            else:
                item[key] = number
        else:
            item[key] = value
    for slot, name in custom_names.items():
        if not name or name in item:
            continue
        if slot in custom_values:
            item[name] = custom_values[slot]
    return item or None


def parse_full_version_list(text: str) -> list[dict[str, str]]:
    """`Chromium;122.0.1|Not(A%3ABrand;24.0.0.0` → [{brand, version}, …] (brands re-escaped)."""
    out = []
    for entry in text.split("|")[:20]:
        brand, _, version = entry.rpartition(";")
        if not brand:
            brand, version = version, ""
        out.append({"brand": unquote(brand, errors="replace"), "version": version})
    return out


def consent_from(gcs: str | None, gcd: str | None, npa: str | None) -> dict[str, str]:
    """gcs gives ad_storage/analytics_storage; gcd adds ad_user_data/ad_personalization."""
    consent: dict[str, str] = {}
    if gcd:
        letters = [c for c in gcd if c.isalpha()][: len(GCD_SIGNALS)]
        for signal, letter in zip(GCD_SIGNALS, letters, strict=False):
            if letter in GCD_GRANTED:
                consent[signal] = "granted"
            elif letter in GCD_DENIED:
                consent[signal] = "denied"
    if gcs:
        match = _GCS.fullmatch(gcs)
        if match:
            consent["ad_storage"] = "granted" if match[1] == "1" else "denied"
            consent["analytics_storage"] = "granted" if match[2] == "1" else "denied"
    if npa == "1" and "ad_personalization" not in consent:
        consent["ad_personalization"] = "denied"
    return consent


def _put_user_data(event: Event, path: tuple[str, ...], value: str) -> None:
    if not value.strip():
        return
    user_data = event.setdefault("user_data", {})
    if len(path) == 2:
        user_data = user_data.setdefault(path[0], {})
    user_data.setdefault(path[-1], value)


def build_event(params: dict[str, str], warnings: list[str], where: str = "hit") -> Event:
    """One GA4 parameter set → common event data. Raises HitParseError without `en`."""
    name = params.get("en", "").strip()
    if not name:
        raise HitParseError("missing en (the event name)")
    if len(name) > MAX_EVENT_NAME_CHARS:
        raise HitParseError(f"en is longer than {MAX_EVENT_NAME_CHARS} characters")
    if any(ord(c) < 32 for c in name):
        raise HitParseError("en contains control characters")

    event: Event = {"event_name": name}
    items: dict[int, dict[str, Any]] = {}
    user_properties: dict[str, Any] = {}
    system: dict[str, str] = {}
    hints: dict[str, Any] = {}

    for key, value in params.items():
        if key == "en":
            continue
        simple = SIMPLE.get(key)
        if simple is not None:
            target, kind = simple
            if kind == "int":
                number = parse_number(value)
                if isinstance(number, float) and number.is_integer():
                    number = int(number)
                if not isinstance(number, int):
                    warnings.append(f"{where}: {key} {_show(value)} is not an integer, dropped")
                    continue
                event[target] = number
            elif value != "" or target.startswith("x-ga-"):
                event[target] = value
            continue

        prefix, dot, rest = key.partition(".")
        if dot and prefix in ("ep", "epn", "up", "upn"):
            if not rest:
                warnings.append(f"{where}: {key} has no name, dropped")
                continue
            typed: Any = value
            if prefix in ("epn", "upn"):
                typed = parse_number(value)
                if typed is None:
                    warnings.append(f"{where}: {key} {_show(value)} is not a number, dropped")
                    continue
            person = rest[8:] if rest.startswith("x-fb-ud-") else rest
            if person in USER_DATA:
                _put_user_data(event, USER_DATA[person], value)
            elif prefix in ("up", "upn"):
                user_properties[rest] = typed
            elif rest in PROTECTED or (rest.startswith("x-") and not rest.startswith(PAGE_SET)):
                event[f"x-ga-{key}"] = value
                warnings.append(f"{where}: {key} may not set {rest}, kept as x-ga-{key}")
            elif rest == "value" and isinstance(typed, str):
                number = parse_number(typed)
                if number is None:
                    warnings.append(f"{where}: ep.value {_show(value)} is not a number, dropped")
                else:
                    event["value"] = number
            else:
                event[rest] = typed
            continue

        if key.startswith("pr") and key[2:3].isdigit():
            match = _ITEM_INDEX.fullmatch(key)
            if match is None or int(match[1]) > MAX_ITEMS:
                warnings.append(f"{where}: {_show(key)} is not an item pr1..pr{MAX_ITEMS}, dropped")
                continue
            item = parse_item(value, warnings, f"{where}: {key}")
            if item is None:
                warnings.append(f"{where}: {key} has no item fields, dropped")
            else:
                items[int(match[1])] = item
            continue

        if key in SYSTEM_PROPERTIES:
            system[SYSTEM_PROPERTIES[key]] = value
        elif key in CLIENT_HINTS:
            hint = CLIENT_HINTS[key]
            if hint in ("mobile", "wow64"):
                hints[hint] = value == "1"
            elif hint == "full_version_list":
                hints[hint] = parse_full_version_list(value)
            else:
                hints[hint] = value
        elif key in BARE_USER_DATA and not value.startswith("tv."):
            # `tv.1~em.…` is Google's own hashed user-provided data: Google normalizes before
            # hashing differently from Meta, so it is kept (as x-ga-em) but not used
            _put_user_data(event, USER_DATA[key], value)
        else:
            event[f"x-ga-{key}"] = value

    if items:
        event["items"] = [items[index] for index in sorted(items)]
    if user_properties:
        event["x-ga-mp2-user_properties"] = user_properties
    if system:
        event["x-ga-system_properties"] = system
    if hints:
        event["client_hints"] = hints
    consent = consent_from(params.get("gcs"), params.get("gcd"), params.get("npa"))
    if consent:
        event["consent"] = consent
    if "gcs" in params and not _GCS.fullmatch(params["gcs"]):
        warnings.append(f"{where}: gcs {_show(params['gcs'])} is not G1xy, consent not read")
    for key in ("page_location", "page_referrer"):
        if "tagserver_preview=" in event.get(key, ""):  # the token must not reach vendors
            event[key] = strip_preview(event[key])
    add_page_parts(event)
    return event


def split_lines(body: bytes) -> list[bytes]:
    """Body lines (`\\r\\n` or `\\n`), empty ones left out."""
    return [line for line in (raw.rstrip(b"\r") for raw in body.split(b"\n")) if line.strip()]


def parse_hit(query: bytes, body: bytes, *, max_events: int) -> ParsedHit:
    """A whole hit: raises HitParseError when the shared query is unreadable, the batch is too
    large, or no event is left; otherwise the events and the lines that were skipped."""
    try:
        shared = decode_params(query)
    except HitParseError as exc:
        raise HitParseError(f"query string: {exc}") from None
    lines = split_lines(body) if body else []
    if len(lines) > max_events:
        raise BatchTooLarge(
            f"{len(lines)} events in one request, more than the limit of {max_events}"
        )
    parsed = ParsedHit(events=[], lines=len(lines))
    if not lines:
        parsed.events.append(build_event(shared, parsed.warnings))
        return parsed

    for number, line in enumerate(lines, 1):
        where = f"line {number}"
        try:
            merged = {**shared, **decode_params(line)}
            if len(merged) > MAX_PARAMS:
                raise HitParseError(f"more than {MAX_PARAMS} parameters")
            parsed.events.append(build_event(merged, parsed.warnings, where))
        except HitParseError as exc:
            parsed.skip(f"{where}: {exc}")
    if not parsed.events:
        reasons = "; ".join(parsed.reasons[:3])
        raise HitParseError(f"no event in the hit ({parsed.skipped} lines skipped: {reasons})")
    return parsed
