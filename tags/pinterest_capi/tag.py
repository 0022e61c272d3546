"""Tag `pinterest_capi`: one event → one Pinterest Conversions API event for the outbox.

fire = map (normalize + hash) → estimate match quality → check what Pinterest would refuse →
an `Outgoing` for the sender, or, without ad account id or token, a dry run.
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

from .mapping import EVENT_NAMES, build
from .sender import API_URL, PinterestSender

MAX_AGE_SECONDS = 7 * 86400  # "timestamp is in the past": 7 days per integrators (unconfirmed)
FUTURE_TOLERANCE_SECONDS = 60
_AD_ACCOUNT = re.compile(r"\d{1,20}")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

QUALITY = MatchQuality(
    {"em": 3.0, "ph": 2.0, "click_id": 2.0, "external_id": 1.0, "client_ip_address": 1.0,
     "client_user_agent": 1.0, "fn": 0.5, "ln": 0.5, "ge": 0.25, "db": 0.25, "ct": 0.25,
     "st": 0.25, "zp": 0.25, "country": 0.25},
    ("client_ip_address", "client_user_agent"),
    0.5,
)  # fmt: skip


class PinterestCapiTag(ConversionsTag):
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
        Param(
            "default_phone_country",
            "string",
            description="Country for phone numbers without country code when the event has no "
            "address country.",
        ),
        Param(
            "limited_data_processing",
            "boolean",
            description='Send opt_out_type "LDP" (limited data processing).',
        ),
        Param(
            "custom_data",
            "object",
            description="Extra custom_data (values may use {{variables}}); wins over the event's.",
        ),
        Param(
            "user_data",
            "object",
            description="Customer information by key (em, ph, fn, ln, ge, db, ct, st, zp, "
            "country, external_id); normalized and hashed like the event's, and wins over it.",
        ),
        *match.PARAMS,
    )
    identity_keys = match.ALL_KEYS - {"ge"}  # Pinterest's own gender rule

    def build(
        self, event: Event, params: dict[str, Any], request: RequestContext
    ) -> tuple[dict[str, Any], dict[str, str]]:
        return build(event, params, request)

    def match_keys(self, payload: dict[str, Any]) -> dict[str, Any]:
        keys: dict[str, Any] = payload["user_data"]
        return keys

    def check(self, payload: dict[str, Any], now: float) -> None:
        check(payload, now)

    def dry_run_body(self, payload: dict[str, Any], target: Target) -> dict[str, Any]:
        return {"data": [payload]}

    def make_target(self, values: tuple[Any, ...]) -> Target:
        account, token = text(values[0]), text(values[1])
        test = values[2] is True or text(values[2]).lower() == "true"
        if account and not _AD_ACCOUNT.fullmatch(account):
            reason = f"ad_account_id {account[:30]!r} is not a number"
            return Target(problem=("bad_ad_account_id", reason))
        if not account or not token:
            missing = " and ".join(n for n, v in (("ad_account_id", account),
                                                  ("access_token", token)) if not v)  # fmt: skip
            return Target(missing=missing)
        route: dict[str, Any] = {"ad_account_id": account, "access_token": token}
        if test:
            route["test"] = True
        return Target(
            destination=f"pinterest:{account}:{token_id(token)}:{'test' if test else 'live'}",
            route=route,
        )


def check(event: dict[str, Any], now: float) -> None:
    """Raise `Refusal` for what Pinterest refuses."""
    if event["event_name"] not in EVENT_NAMES:
        raise Refusal("bad_event_name", f"event_name {event['event_name'][:60]!r} is unknown")
    if not event["event_id"]:
        raise Refusal("no_event_id", "event_id is empty")
    age = now - event["event_time"]
    if age > MAX_AGE_SECONDS:
        raise Refusal("too_old", f"event_time is {age / 86400:.1f} days old (limit 7 days)")
    if age < -FUTURE_TOLERANCE_SECONDS:
        raise Refusal("in_future", "event_time is in the future")
    user = event["user_data"]
    if "em" not in user and not ("client_ip_address" in user and "client_user_agent" in user):
        raise Refusal(
            "too_little_user_data",
            "Pinterest needs an email, or both the IP address and the user agent",
        )
    custom = event.get("custom_data") or {}
    value = custom.get("value")
    if value is not None and not (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise Refusal("bad_value", f"value {str(value)[:30]!r} is not a number")
    currency = custom.get("currency")
    if currency is not None and currency not in CURRENCIES:
        raise Refusal("bad_currency", f"currency {str(currency)[:10]!r} is not an ISO 4217 code")
