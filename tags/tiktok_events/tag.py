"""Tag `tiktok_events`: one event → one TikTok Events API 2.0 event for the outbox.

fire = map (normalize + hash) → estimate match quality → check what TikTok would refuse → an
`Outgoing` for the sender, or, without pixel code or token, a dry run that only shows the body.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar
from urllib.parse import urlsplit

from tagserver import Param
from tagserver.toolkit import conversions, match

from .mapping import STANDARD_EVENTS, build
from .sender import API_URL, TikTokSender

DEFAULT_API_VERSION = "v1.3"
MAX_AGE_SECONDS = 7 * 86400  # TikTok's own limit is unconfirmed: keep to Meta's 7 days
_PIXEL_CODE = re.compile(r"[A-Za-z0-9]{8,40}")
_API_VERSION = re.compile(r"v\d{1,2}\.\d{1,2}")
_CUSTOM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,49}")
_GTM_PREVIEW_HOST = "gtm-msr.appspot.com"

QUALITY = conversions.MatchQuality(
    {"email": 3.0, "phone": 2.0, "ttclid": 1.5, "ttp": 1.5, "external_id": 1.0, "ip": 1.0,
     "user_agent": 1.0, "first_name": 0.25, "last_name": 0.25, "zip_code": 0.25,
     "city": 0.25, "state": 0.25, "country": 0.25},
    ("ip", "user_agent"),
    0.5,
)  # fmt: skip


class TikTokEventsTag(conversions.ConversionsTag):
    type_name = "tiktok_events"
    description = (
        "TikTok Events API 2.0: normalized, hashed, checked, batched (1000 per request), "
        "retried; dry run without pixel code or access token."
    )
    batch_size = 1000
    sender_class = TikTokSender
    server_settings = (API_URL,)
    quality = QUALITY
    max_age_seconds = MAX_AGE_SECONDS
    target_params: ClassVar[tuple[str, ...]] = (
        "pixel_code", "access_token", "api_version", "test_event_code", "partner_name",
    )  # fmt: skip
    params = (
        Param("pixel_code", "string", description="TikTok pixel code. Empty: dry run."),
        Param(
            "access_token",
            "string",
            secret=True,
            description="Events API access token (Events Manager → pixel → Settings). "
            "Empty: dry run.",
        ),
        Param(
            "api_version",
            "string",
            default=DEFAULT_API_VERSION,
            description="Marketing API version in the URL, like v1.3.",
        ),
        Param("test_event_code", "string", description="Send to Events Manager → Test Events."),
        Param("partner_name", "string", description="TikTok partner_name, when you have one."),
        Param(
            "event_name_map",
            "object",
            description='Event name → TikTok name, over the GA4 table ({"signup": "Lead"}).',
        ),
        conversions.DEFAULT_PHONE_COUNTRY,
        Param(
            "limited_data_use",
            "boolean",
            description="Flag events for limited data processing (the event's own value wins).",
        ),
        Param(
            "properties",
            "object",
            description="Extra properties (values may use {{variables}}); they win over those "
            "derived from the event.",
        ),
        Param(
            "user_data",
            "object",
            description="Customer information by short key (em, ph, fn, ln, ct, st, zp, "
            "country, external_id); normalized and hashed like the event's, and wins over it.",
        ),
        *match.PARAMS,
    )
    # the identity cookie's hashes follow the shared rules: TikTok's phones (with `+`), names
    # and ZIPs (no spaces) and its unhashed city/state/country differ, so only these fit
    identity_keys = frozenset({"em", "external_id"})
    key_names: ClassVar[dict[str, str]] = {
        "em": "email", "ph": "phone", "external_id": "external_id", "fn": "first_name",
        "ln": "last_name", "zp": "zip_code", "ct": "city", "st": "state", "country": "country",
    }  # fmt: skip

    user_key = "user"
    build = staticmethod(build)

    def check(self, payload: dict[str, Any], now: float) -> None:
        check(payload, now)

    def make_target(self, values: tuple[Any, ...]) -> conversions.Target:
        pixel, token, version, test_code, partner = (conversions.text(v) for v in values)
        version = version or DEFAULT_API_VERSION
        shown = {"event_source": "web", "event_source_id": pixel or "<pixel_code>"}
        shown.update({k: v for k, v in (("test_event_code", test_code),
                                        ("partner_name", partner)) if v})  # fmt: skip
        if pixel and not _PIXEL_CODE.fullmatch(pixel):
            return conversions.Target(problem=("bad_pixel_code", f"pixel_code {pixel[:30]!r} is not a "
                                   "TikTok pixel code (letters and digits)"))  # fmt: skip
        if not _API_VERSION.fullmatch(version):
            reason = f"api_version {version[:20]!r} is not like {DEFAULT_API_VERSION}"
            return conversions.Target(problem=("bad_api_version", reason))
        if not pixel or not token:
            lacking = conversions.missing(("pixel_code", pixel), ("access_token", token))
            return conversions.Target(missing=lacking, shown=shown)
        route = {"pixel_code": pixel, "access_token": token, "api_version": version}
        route.update({k: v for k, v in shown.items() if k in ("test_event_code", "partner_name")})
        return conversions.Target(
            destination=f"tiktok:{pixel}:{conversions.token_id(token)}:{test_code or '-'}:{version}",
            route=route,
            shown=shown,
        )


def check(event: dict[str, Any], now: float) -> None:
    """Raise `Refusal` for what TikTok refuses (or tagserver keeps from it)."""
    name = event["event"]
    if not name:
        raise conversions.Refusal("no_event_name", "event name is empty")
    if name not in STANDARD_EVENTS and not _CUSTOM_NAME.fullmatch(name):
        raise conversions.Refusal(
            "bad_custom_name",
            f"custom event name {name[:60]!r}: TikTok wants at most 50 letters, digits, _ or -, "
            "starting with a letter (map it with event_name_map)",
        )
    conversions.check_id_and_time(
        event["event_id"], event["event_time"], now, max_age=MAX_AGE_SECONDS
    )
    url = (event.get("page") or {}).get("url")
    if not url:
        raise conversions.Refusal(
            "no_page_url", "page_location is empty: TikTok needs the page URL"
        )
    if _on_host(url, _GTM_PREVIEW_HOST):
        raise conversions.Refusal(
            "gtm_preview_host", f"page URL on {_GTM_PREVIEW_HOST} (Tag Assistant)"
        )
    props = event.get("properties") or {}
    conversions.check_value(props.get("value"))
    conversions.check_currency(props.get("currency"))
    if not event["user"]:
        raise conversions.Refusal(
            "no_user_data", "no customer information, IP or user agent to match"
        )


def _on_host(url: str, host: str) -> bool:
    """Whether `url`'s host is `host` (lowercase). Only a URL that holds the name, or a tab or
    line break (which urlsplit drops first), is parsed."""
    if host not in url.lower() and url.isprintable():
        return False
    try:
        return urlsplit(url).hostname == host
    except ValueError:
        return False
