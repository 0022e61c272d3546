"""Tag `snapchat_capi`: one event → one Snapchat Conversions API v3 event for the outbox.

fire = map (normalize + hash) → estimate match quality → check what Snap would refuse → an
`Outgoing` for the sender, or, without pixel id or token, a dry run.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from tagserver import Param
from tagserver.toolkit import conversions, match

from .mapping import STANDARD_EVENTS, build
from .sender import API_URL, SnapchatSender

MAX_AGE_SECONDS = 7 * 86400  # Snap says 37 days, its own Segment code 7: keep to 7
_PIXEL_ID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)

QUALITY = conversions.MatchQuality(
    {"em": 3.0, "ph": 2.0, "sc_click_id": 1.5, "sc_cookie1": 1.5, "external_id": 1.0,
     "client_ip_address": 1.0, "client_user_agent": 1.0, "fn": 0.5, "ln": 0.5, "ge": 0.25,
     "ct": 0.25, "st": 0.25, "zp": 0.25, "country": 0.25},
    ("client_ip_address", "client_user_agent"),
    0.5,
)  # fmt: skip


class SnapchatCapiTag(conversions.ConversionsTag):
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
        conversions.DEFAULT_PHONE_COUNTRY,
        conversions.CUSTOM_DATA,
        Param(
            "user_data",
            "object",
            description="Customer information by key (em, ph, fn, ln, ge, ct, st, zp, country, "
            "external_id); normalized and hashed like the event's, and wins over it.",
        ),
        *match.PARAMS,
    )
    identity_keys = match.ALL_KEYS

    build = staticmethod(build)

    def check(self, payload: dict[str, Any], now: float) -> None:
        check(payload, now)

    def make_target(self, values: tuple[Any, ...]) -> conversions.Target:
        pixel, token, test_code = (conversions.text(v) for v in values)
        shown = {"test_event_code": test_code} if test_code else {}
        if pixel and not _PIXEL_ID.fullmatch(pixel):
            return conversions.Target(
                problem=("bad_pixel_id", f"pixel_id {pixel[:40]!r} is not a UUID")
            )
        if not pixel or not token:
            lacking = conversions.missing(("pixel_id", pixel), ("access_token", token))
            return conversions.Target(missing=lacking, shown=shown)
        route = {"pixel_id": pixel, "access_token": token, **shown}
        return conversions.Target(
            destination=f"snapchat:{pixel}:{conversions.token_id(token)}:{test_code or '-'}",
            route=route,
            shown=shown,
        )


def check(event: dict[str, Any], now: float) -> None:
    """Raise `Refusal` for what Snap refuses."""
    name = event["event_name"]
    if name not in STANDARD_EVENTS:
        raise conversions.Refusal(
            "unknown_event_name",
            f"event_name {name[:60]!r} is not a Snap standard event: map it with "
            "event_name_map (custom events are CUSTOM_EVENT_1 … CUSTOM_EVENT_5)",
        )
    conversions.check_id_and_time(
        event["event_id"], event["event_time"], now, max_age=MAX_AGE_SECONDS
    )
    if not event.get("event_source_url"):
        raise conversions.Refusal(
            "no_page_url", "page_location is empty: Snap needs it for web events"
        )
    user = event["user_data"]
    if (
        "em" not in user
        and "ph" not in user
        and not ("client_ip_address" in user and "client_user_agent" in user)
    ):
        raise conversions.Refusal(
            "too_little_user_data",
            "Snap needs an email, a phone, or both the IP address and the user agent",
        )
    custom = event.get("custom_data") or {}
    value = custom.get("value")
    conversions.check_value(value)
    currency = custom.get("currency")
    conversions.check_currency(currency)
    if name == "PURCHASE" and (value is None or currency is None):
        raise conversions.Refusal(
            "purchase_without_value", "Snap refuses a PURCHASE without value and currency"
        )
