"""Tag `pinterest_capi`: one event → one Pinterest Conversions API event for the outbox.

fire = map (normalize + hash) → estimate match quality → check what Pinterest would refuse →
an `Outgoing` for the sender, or, without ad account id or token, a dry run.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from tagserver import Param
from tagserver.toolkit import conversions, match

from .mapping import EVENT_NAMES, build
from .sender import API_URL, PinterestSender

MAX_AGE_SECONDS = 7 * 86400  # "timestamp is in the past": 7 days per integrators (unconfirmed)
_AD_ACCOUNT = re.compile(r"\d{1,20}")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

QUALITY = conversions.MatchQuality(
    {"em": 3.0, "ph": 2.0, "click_id": 2.0, "external_id": 1.0, "client_ip_address": 1.0,
     "client_user_agent": 1.0, "fn": 0.5, "ln": 0.5, "ge": 0.25, "db": 0.25, "ct": 0.25,
     "st": 0.25, "zp": 0.25, "country": 0.25},
    ("client_ip_address", "client_user_agent"),
    0.5,
)  # fmt: skip


class PinterestCapiTag(conversions.ConversionsTag):
    type_name = "pinterest_capi"
    description = (
        "Pinterest Conversions API: normalized, hashed, checked, batched (1000 per request), "
        "retried; dry run without ad account id or access token."
    )
    batch_size = 1000
    sender_class = PinterestSender
    server_settings = (API_URL,)
    quality = QUALITY
    max_age_seconds = MAX_AGE_SECONDS
    target_params: ClassVar[tuple[str, ...]] = ("ad_account_id", "access_token", "test")
    params = (
        Param("ad_account_id", "string", description="Pinterest ad account id. Empty: dry run."),
        Param(
            "access_token",
            "string",
            secret=True,
            description="Conversion access token (Ads Manager). Empty: dry run.",
        ),
        Param(
            "test",
            "boolean",
            default=False,
            description="Send with ?test=true: validated and answered, not recorded.",
        ),
        Param("partner_name", "string", description="partner_name, like ss-yourcompany."),
        Param(
            "event_name_map",
            "object",
            description='Event name → Pinterest name, over the GA4 table ({"signup": "lead"}); '
            "names outside Pinterest's list go as custom.",
        ),
        conversions.DEFAULT_PHONE_COUNTRY,
        Param(
            "limited_data_processing",
            "boolean",
            description='Send opt_out_type "LDP" (limited data processing).',
        ),
        conversions.CUSTOM_DATA,
        Param(
            "user_data",
            "object",
            description="Customer information by key (em, ph, fn, ln, ge, db, ct, st, zp, "
            "country, external_id); normalized and hashed like the event's, and wins over it.",
        ),
        *match.PARAMS,
    )
    identity_keys = match.ALL_KEYS - {"ge"}  # Pinterest's own gender rule

    build = staticmethod(build)

    def check(self, payload: dict[str, Any], now: float) -> None:
        check(payload, now)

    def make_target(self, values: tuple[Any, ...]) -> conversions.Target:
        account, token = conversions.text(values[0]), conversions.text(values[1])
        test = values[2] is True or conversions.text(values[2]).lower() == "true"
        if account and not _AD_ACCOUNT.fullmatch(account):
            reason = f"ad_account_id {account[:30]!r} is not a number"
            return conversions.Target(problem=("bad_ad_account_id", reason))
        if not account or not token:
            return conversions.Target(
                missing=conversions.missing(("ad_account_id", account), ("access_token", token))
            )
        route: dict[str, Any] = {"ad_account_id": account, "access_token": token}
        if test:
            route["test"] = True
        return conversions.Target(
            destination=f"pinterest:{account}:{conversions.token_id(token)}:{'test' if test else 'live'}",
            route=route,
        )


def check(event: dict[str, Any], now: float) -> None:
    """Raise `Refusal` for what Pinterest refuses."""
    if event["event_name"] not in EVENT_NAMES:
        raise conversions.Refusal(
            "bad_event_name", f"event_name {event['event_name'][:60]!r} is unknown"
        )
    conversions.check_id_and_time(
        event["event_id"], event["event_time"], now, max_age=MAX_AGE_SECONDS
    )
    user = event["user_data"]
    if "em" not in user and not ("client_ip_address" in user and "client_user_agent" in user):
        raise conversions.Refusal(
            "too_little_user_data",
            "Pinterest needs an email, or both the IP address and the user agent",
        )
    custom = event.get("custom_data") or {}
    value = custom.get("value")
    if value is not None and not (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise conversions.Refusal("bad_value", f"value {str(value)[:30]!r} is not a number")
    conversions.check_currency(custom.get("currency"))
