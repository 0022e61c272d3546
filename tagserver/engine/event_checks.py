"""Checking one event given as JSON: shared by every source that accepts events in tagserver's
own format (the events API, `tagserver events import`, webhooks mapped to events).

`check_event` returns a validated copy or raises `EventError` with a message that names the
field, so a caller can report it per event (and per line of a file).
"""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime
from typing import Any

from ..event import CONSENT_TYPES, Event, add_page_parts

__all__ = ["EventError", "MAX_STRING", "check_event", "parse_event_time"]

MAX_STRING = 8192
STRING_FIELDS = frozenset((
    "event_name", "event_id", "client_id", "user_agent", "page_location", "page_referrer",
    "page_title", "page_hostname", "page_path", "language", "screen_resolution", "user_id",
    "currency", "transaction_id", "search_term", "action_source",
    # click ids and browser ids for the ad platforms' tags, as the browser clients set them
    "x-fb-ck-fbp", "x-fb-ck-fbc", "x-tt-ck-ttclid", "x-tt-ck-ttp", "x-pin-ck-epik",
    "x-sc-ck-sccid", "x-sc-ck-scid",
))  # fmt: skip
ID_FIELDS = frozenset(("event_id", "client_id", "user_id", "transaction_id"))  # ints become strings
OBJECT_FIELDS = ("user_data", "consent", "custom_data")
# a dotted-quad IPv4 address as `ipaddress` accepts it (no leading zeros): most addresses,
# told without parsing; anything else is left to `ipaddress`
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


class EventError(ValueError):
    """One event of the batch is invalid; the message names the field."""


def parse_event_time(value: Any, now: float) -> int:
    """Unix seconds (int/float, milliseconds tolerated) or ISO 8601 → unix seconds."""
    if isinstance(value, bool):
        raise EventError("event_time: expected unix seconds or an ISO 8601 date, got boolean")
    if isinstance(value, (int, float)):
        seconds = float(value)
        if seconds > 1e11:  # clearly milliseconds
            seconds /= 1000
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                raise EventError(
                    f"event_time: {value[:40]!r} is neither unix seconds nor ISO 8601"
                ) from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            seconds = parsed.timestamp()
    else:
        raise EventError(
            f"event_time: expected unix seconds or an ISO 8601 date, got {type(value).__name__}"
        )
    if not 0 < seconds < now + 366 * 86400 * 10:
        raise EventError(f"event_time: {value!r} is out of range")
    return int(seconds)


def check_event(raw: Any, now: float) -> Event:
    """A validated copy of one event, or EventError naming the field."""
    if not isinstance(raw, dict):
        raise EventError(f"expected an object, got {type(raw).__name__}")
    event: Event = dict(raw)
    name = event.get("event_name")
    if not isinstance(name, str) or not name.strip():
        raise EventError("event_name: required, a non-empty string")
    if len(name) > 100:
        raise EventError("event_name: longer than 100 characters")
    # most values are plain strings, whose length is all there is to check: test that first
    for key, value in event.items():
        if type(value) is str:
            if len(value) > MAX_STRING and key in STRING_FIELDS:
                raise EventError(f"{key}: longer than {MAX_STRING} characters")
        elif value is not None and key in STRING_FIELDS:
            if key in ID_FIELDS and isinstance(value, int) and not isinstance(value, bool):
                event[key] = value = str(value)
            if not isinstance(value, str):
                raise EventError(f"{key}: expected a string, got {type(value).__name__}")
            if len(value) > MAX_STRING:
                raise EventError(f"{key}: longer than {MAX_STRING} characters")
    for key in OBJECT_FIELDS:
        if key in event and not isinstance(event[key], dict):
            raise EventError(f"{key}: expected an object, got {type(event[key]).__name__}")
    consent = event.get("consent")
    for key, value in consent.items() if consent else ():
        if key not in CONSENT_TYPES:
            raise EventError(
                f"consent.{key}: unknown consent type (known: {', '.join(CONSENT_TYPES)})"
            )
        if value not in ("granted", "denied", True, False):
            raise EventError(f'consent.{key}: expected "granted" or "denied"')
    value = event.get("value")  # a plain float or int (most events) needs no more checks
    if value is not None and type(value) is not float and type(value) is not int:
        if isinstance(value, str):
            try:
                event["value"] = float(value)
            except ValueError:
                raise EventError(f"value: {value[:40]!r} is not a number") from None
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EventError(f"value: expected a number, got {type(value).__name__}")
    if "items" in event:
        items = event["items"]
        if not isinstance(items, list):
            raise EventError("items: expected a list of objects")
        for item in items:
            if not isinstance(item, dict):
                raise EventError("items: expected a list of objects")
        if len(items) > 1000:
            raise EventError("items: more than 1000 items")
    ip = event.get("ip_override")
    if ip is not None and not (type(ip) is str and IPV4.fullmatch(ip)):
        try:
            ipaddress.ip_address(ip if isinstance(ip, str) else "")
        except ValueError:
            raise EventError(f"ip_override: {str(ip)[:60]!r} is not an IP address") from None
    if "event_time" in event and event["event_time"] is not None:
        event["event_time"] = parse_event_time(event["event_time"], now)
    add_page_parts(event)
    return event
