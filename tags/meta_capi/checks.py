"""What Meta would refuse, decided before anything is stored or sent.

One refused event fails Meta's whole request (up to 1000 events), so an event Meta would
refuse never reaches the outbox: the tag result says exactly why (preview, events API,
metrics by `code`, a log line). Each check mirrors a rule of Meta's server event reference.
"""

from __future__ import annotations

import math
from typing import Any

from tagserver import TagRejected

from .mapping import ACTION_SOURCES
from .normalize import CURRENCIES as ISO_CURRENCIES
from .normalize import currency as iso_currency

__all__ = ["MetaRefusal", "check", "WEAK_SUBSETS", "MAX_AGE_SECONDS", "FUTURE_TOLERANCE_SECONDS"]

DAY = 86400
MAX_AGE_SECONDS = {"physical_store": 62 * DAY}  # every other action source: 7 days
DEFAULT_MAX_AGE = 7 * DAY
FUTURE_TOLERANCE_SECONDS = 60  # clock skew between this server and Meta
MAX_CUSTOM_NAME = 50

# customer information that is only a subset of one of these is refused (100/2804050)
WEAK_SUBSETS = (
    frozenset({"ct", "country", "st", "zp", "ge", "client_user_agent"}),
    frozenset({"db", "client_user_agent"}),
    frozenset({"fn", "ge"}),
    frozenset({"ln", "ge"}),
)


_LARGEST_WEAK = max(len(w) for w in WEAK_SUBSETS)


class MetaRefusal(TagRejected):
    """An event Meta would refuse. `code` is a short, fixed label for metrics."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def max_age(action_source: str) -> int:
    return MAX_AGE_SECONDS.get(action_source, DEFAULT_MAX_AGE)


def check(server: dict[str, Any], now: float) -> None:
    """Raise `MetaRefusal` when Meta would refuse `server`; uppercases a valid currency."""
    name = server.get("event_name") or ""
    if not name:
        raise MetaRefusal("no_event_name", "event_name is empty")
    if len(name) > MAX_CUSTOM_NAME:
        raise MetaRefusal(
            "event_name_too_long",
            f"event_name {name[:60]!r} is {len(name)} characters long; Meta allows "
            f"{MAX_CUSTOM_NAME} (map it with event_name_map)",
        )
    source = server.get("action_source")
    if source not in ACTION_SOURCES:
        raise MetaRefusal(
            "bad_action_source",
            f"action_source {str(source)[:60]!r} is not one of {', '.join(ACTION_SOURCES)}",
        )

    event_time = server["event_time"]
    age = now - event_time
    limit = MAX_AGE_SECONDS.get(source, DEFAULT_MAX_AGE)  # max_age(), without the call
    if age > limit:
        raise MetaRefusal(
            "event_too_old",
            f"event_time {event_time} is {age / DAY:.1f} days old; Meta refuses {source} "
            f"events older than {limit // DAY} days (100/2804003)",
        )
    if -age > FUTURE_TOLERANCE_SECONDS:
        raise MetaRefusal(
            "event_in_future",
            f"event_time {event_time} is {-age:.0f} s in the future; Meta refuses events "
            "from the future (check the sender's clock or the time unit: seconds)",
        )

    user = server.get("user_data") or {}
    if source == "website":
        if not server.get("event_source_url"):
            raise MetaRefusal(
                "missing_event_source_url",
                "website events need event_source_url, and this event has no page_location",
            )
        if not user.get("client_user_agent"):
            raise MetaRefusal(
                "missing_user_agent",
                "website events need client_user_agent, and this event has no user_agent",
            )
    if not user:
        raise MetaRefusal(
            "no_user_data",
            "no customer information at all (no email, phone, IP, user agent, fbp, fbc, "
            "external_id ...); Meta needs at least one key",
        )
    for weak in WEAK_SUBSETS if len(user) <= _LARGEST_WEAK else ():
        keys = user.keys()
        if keys <= weak:
            raise MetaRefusal(
                "weak_user_data",
                f"customer information too weak to match: only {', '.join(sorted(keys))}; "
                f"Meta refuses any subset of {{{', '.join(sorted(weak))}}} (100/2804050)",
            )

    custom = server.get("custom_data")
    if custom:
        _check_custom_data(custom, name)
    elif name == "Purchase":
        raise MetaRefusal(
            "purchase_without_value",
            "Purchase events need custom_data.value and currency (the event has neither)",
        )


def _check_custom_data(custom: dict[str, Any], name: str) -> None:
    if "value" in custom:
        value = custom["value"]  # numeric text was made a number by the mapping
        if value.__class__ is not float and value.__class__ is not int:
            raise MetaRefusal("bad_value", f"value {str(value)[:40]!r} is not a number")
        if not math.isfinite(value):
            raise MetaRefusal("bad_value", f"value {value!r} is not a finite number")
    if "currency" in custom:
        code = custom["currency"]
        if code.__class__ is not str or code not in ISO_CURRENCIES:
            code = iso_currency(code)  # lowercase or padded: the long way
        if code is None:
            raise MetaRefusal(
                "bad_currency",
                f"currency {str(custom['currency'])[:20]!r} is not an ISO 4217 code "
                "(like USD, EUR, GBP)",
            )
        custom["currency"] = code
    if name == "Purchase" and ("value" not in custom or "currency" not in custom):
        missing = " and ".join(k for k in ("value", "currency") if k not in custom)
        raise MetaRefusal(
            "purchase_without_value",
            f"Purchase events need custom_data.value and currency (missing: {missing})",
        )
