"""Tag `snapchat_capi`: one event → one Snapchat Conversions API v3 event for the outbox.

fire = map (normalize + hash) → estimate match quality → check what Snap would refuse → an
`Outgoing` for the sender, or, without pixel id or token, a dry run.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from tagserver import Event, Param, RequestContext
from tagserver.toolkit import match
from tagserver.toolkit.conversions import (
    ConversionsTag,
    MatchQuality,
    Refusal,
    Target,
    text,
    token_id,
)
from tagserver.toolkit.identity import CURRENCIES

from .mapping import STANDARD_EVENTS, build
from .sender import API_URL, SnapchatSender

MAX_AGE_SECONDS = 7 * 86400  # Snap says 37 days, its own Segment code 7: keep to 7
FUTURE_TOLERANCE_SECONDS = 60
_PIXEL_ID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)

QUALITY = MatchQuality(
    {"em": 3.0, "ph": 2.0, "sc_click_id": 1.5, "sc_cookie1": 1.5, "external_id": 1.0,
     "client_ip_address": 1.0, "client_user_agent": 1.0, "fn": 0.5, "ln": 0.5, "ge": 0.25,
     "ct": 0.25, "st": 0.25, "zp": 0.25, "country": 0.25},
    ("client_ip_address", "client_user_agent"),
    0.5,
)  # fmt: skip


class SnapchatCapiTag(ConversionsTag):
    type_name = "snapchat_capi"
    description = (
        "Snapchat Conversions API v3: normalized, hashed, checked, batched (1000 per request), "
        "retried; dry run without pixel id or access token."
    )
    batch_size = 1000  # Snap's limit is unconfirmed (integrators use 2000): stay below
    sender_class = SnapchatSender
    server_settings = (API_URL,)
    quality = QUALITY
    max_age_seconds = MAX_AGE_SECONDS
    target_params: ClassVar[tuple[str, ...]] = ("pixel_id", "access_token", "test_event_code")
    params = (
        Param("pixel_id", "string", description="Snap Pixel id (a UUID). Empty: dry run."),
        Param(
            "access_token",
            "string",
            secret=True,
            description="Conversions API token (Ads Manager → Business Settings). Empty: dry run.",
        ),
        Param("test_event_code", "string", description="Send to Events Manager test events."),
        Param("integration", "string", description="Partner name sent as `integration`."),
        Param(
            "event_name_map",
            "object",
            description="Event name → Snap name, over the GA4 table "
            '({"lead": "CUSTOM_EVENT_1"}); '
            "Snap accepts only its standard names and CUSTOM_EVENT_1…5.",
        ),
        Param(
            "default_phone_country",
            "string",
            description="Country for phone numbers without country code when the event has no "
            "address country.",
        ),
        Param(
            "custom_data",
            "object",
            description="Extra custom_data (values may use {{variables}}); wins over the event's.",
        ),
        Param(
            "user_data",
            "object",
            description="Customer information by key (em, ph, fn, ln, ge, ct, st, zp, country, "
            "external_id); normalized and hashed like the event's, and wins over it.",
        ),
        *match.PARAMS,
    )
    identity_keys = match.ALL_KEYS

    def build(
        self, event: Event, params: dict[str, Any], request: RequestContext
    ) -> tuple[dict[str, Any], dict[str, str]]:
        return build(event, params, request)

    def match_keys(self, payload: dict[str, Any]) -> dict[str, Any]:
        keys: dict[str, Any] = payload["user_data"]
        return keys

    def check(self, payload: dict[str, Any], now: float) -> None:
        check(payload, now)

    def make_target(self, values: tuple[Any, ...]) -> Target:
        pixel, token, test_code = (text(v) for v in values)
        shown = {"test_event_code": test_code} if test_code else {}
        if pixel and not _PIXEL_ID.fullmatch(pixel):
            return Target(problem=("bad_pixel_id", f"pixel_id {pixel[:40]!r} is not a UUID"))
        if not pixel or not token:
            missing = " and ".join(n for n, v in (("pixel_id", pixel),
                                                  ("access_token", token)) if not v)  # fmt: skip
            return Target(missing=missing, shown=shown)
        route = {"pixel_id": pixel, "access_token": token, **shown}
        return Target(
            destination=f"snapchat:{pixel}:{token_id(token)}:{test_code or '-'}",
            route=route,
            shown=shown,
        )


def check(event: dict[str, Any], now: float) -> None:
    """Raise `Refusal` for what Snap refuses."""
    name = event["event_name"]
    if name not in STANDARD_EVENTS:
        raise Refusal(
            "unknown_event_name",
            f"event_name {name[:60]!r} is not a Snap standard event: map it with "
            "event_name_map (custom events are CUSTOM_EVENT_1 … CUSTOM_EVENT_5)",
        )
    if not event["event_id"]:
        raise Refusal("no_event_id", "event_id is empty")
    age = now - event["event_time"]
    if age > MAX_AGE_SECONDS:
        raise Refusal("too_old", f"event_time is {age / 86400:.1f} days old (limit 7 days)")
    if age < -FUTURE_TOLERANCE_SECONDS:
        raise Refusal("in_future", "event_time is in the future")
    if not event.get("event_source_url"):
        raise Refusal("no_page_url", "page_location is empty: Snap needs it for web events")
    user = event["user_data"]
    if (
        "em" not in user
        and "ph" not in user
        and not ("client_ip_address" in user and "client_user_agent" in user)
    ):
        raise Refusal(
            "too_little_user_data",
            "Snap needs an email, a phone, or both the IP address and the user agent",
        )
    custom = event.get("custom_data") or {}
    value = custom.get("value")
    if value is not None and (value.__class__ not in (int, float) or value != value):
        raise Refusal("bad_value", f"value {str(value)[:30]!r} is not a number")
    currency = custom.get("currency")
    if currency is not None and currency not in CURRENCIES:
        raise Refusal("bad_currency", f"currency {str(currency)[:10]!r} is not an ISO 4217 code")
    if name == "PURCHASE" and (value is None or currency is None):
        raise Refusal(
            "purchase_without_value", "Snap refuses a PURCHASE without value and currency"
        )
