"""Tag `meta_capi`: one event → one Conversions API server event for the outbox.

fire = map (normalize + hash) → estimate match quality → check what Meta would refuse →
an `Outgoing` for the sender, or, without pixel id or token, a dry run that only records the
payload. Pure CPU, no I/O: it runs on the hit path.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from typing import Any

from tagserver import metrics
from tagserver.event import Event
from tagserver.plugins import FireContext, Outgoing, Param, Tag

from .checks import MetaRefusal, check, max_age
from .mapping import ACTION_SOURCES, STANDARD_EVENTS, build
from .quality import assess
from .sender import MetaSender

log = logging.getLogger("tagserver.tag.meta_capi")

DEFAULT_API_VERSION = "v25.0"
DEADLINE_MARGIN_SECONDS = 600  # stop trying 10 minutes before Meta's own age limit
_PIXEL_ID = re.compile(r"\d{1,20}")
_API_VERSION = re.compile(r"v\d{1,3}\.\d{1,2}")


class MetaCapiTag(Tag):
    type_name = "meta_capi"
    description = (
        "Meta Conversions API: normalized, hashed, checked, batched (1000 per request), "
        "retried; dry run without pixel id or token."
    )
    batch_size = 1000
    sender_class = MetaSender
    params = (
        Param("pixel_id", "string", description="Meta dataset (pixel) id. Empty: dry run."),
        Param(
            "access_token",
            "string",
            secret=True,
            description="Conversions API access token (Events Manager). Empty: dry run.",
        ),
        Param(
            "api_version",
            "string",
            default=DEFAULT_API_VERSION,
            description="Graph API version, like v25.0.",
        ),
        Param(
            "test_event_code",
            "string",
            description="Send to Events Manager → Test events (events still count).",
        ),
        Param(
            "action_source",
            "string",
            default="website",
            choices=ACTION_SOURCES,
            description="Where events happened; an event's own action_source wins.",
        ),
        Param(
            "event_name_map",
            "object",
            description='Event name → Meta name, over the GA4 table ({"signup": "Lead"}).',
        ),
        Param(
            "external_id_hashing",
            "string",
            default="sha256",
            choices=("sha256", "raw"),
            description="Hash external_id (default) or send it as given.",
        ),
        Param(
            "default_phone_country",
            "string",
            description="Country (ISO code or name) for phone numbers without country code "
            "when the event has no address country.",
        ),
        Param(
            "data_processing_options",
            "array",
            description='Limited Data Use: ["LDU"] or []; the event\'s own value wins.',
        ),
        Param(
            "data_processing_options_country",
            "integer",
            description="With LDU: 1 = USA, 0 = let Meta geolocate (default).",
        ),
        Param(
            "data_processing_options_state",
            "integer",
            description="With LDU: 1000 = California, 0 = let Meta geolocate (default).",
        ),
        Param("partner_agent", "string", description="Meta partner_agent string."),
        Param(
            "custom_data",
            "object",
            description="Extra custom_data parameters (values may use {{variables}}); they win "
            "over those derived from the event.",
        ),
        Param(
            "user_data",
            "object",
            description="Customer information by Meta key (em, ph, fn, ln, ge, db, ct, st, zp, "
            "country, external_id, client_ip_address, client_user_agent, fbc, fbp); values may "
            "use {{variables}}; normalized and hashed like the event's, and they win over it.",
        ),
    )

    def fire(self, event: Event, params: dict[str, Any], ctx: FireContext) -> list[Outgoing]:
        now = time.time()
        built = build(event, params, ctx.request)
        server = built.event
        quality = assess(server["user_data"])
        ctx.note("match_keys", quality.keys)
        ctx.note("match_quality", quality.score)
        ctx.note("match_quality_band", quality.band)
        if built.dropped:
            ctx.note("dropped_user_data", built.dropped)
        try:
            check(server, now)
        except MetaRefusal as refusal:
            metrics.META_REFUSED.labels(refusal.code).inc()
            log.info(
                "tag %r: %s event %s not sent: %s",
                self.name, server["event_name"], server["event_id"], refusal.reason,
            )  # fmt: skip
            raise
        name = server["event_name"]
        metrics.META_MATCH_QUALITY.labels(name if name in STANDARD_EVENTS else "custom").observe(
            quality.score
        )

        pixel_id = _text(params.get("pixel_id"))
        token = _text(params.get("access_token"))
        version = _text(params.get("api_version")) or DEFAULT_API_VERSION
        test_code = _text(params.get("test_event_code"))
        partner = _text(params.get("partner_agent"))
        if pixel_id and not _PIXEL_ID.fullmatch(pixel_id):
            raise MetaRefusal("bad_pixel_id", f"pixel_id {pixel_id[:30]!r} is not a number")
        if not _API_VERSION.fullmatch(version):
            raise MetaRefusal(
                "bad_api_version", f"api_version {version[:20]!r} is not like {DEFAULT_API_VERSION}"
            )
        if not pixel_id or not token:
            missing = " and ".join(
                n for n, v in (("pixel_id", pixel_id), ("access_token", token)) if not v
            )
            body: dict[str, Any] = {"data": [server]}
            if test_code:
                body["test_event_code"] = test_code
            if partner:
                body["partner_agent"] = partner
            ctx.note("status", f"dry run: no {missing}, so nothing is sent")
            ctx.note("dry_run_payload", body)
            return []

        token_id = hashlib.sha256(token.encode()).hexdigest()[:8]
        deadline = server["event_time"] + max_age(server["action_source"]) - DEADLINE_MARGIN_SECONDS
        route: dict[str, Any] = {
            "pixel_id": pixel_id,
            "access_token": token,
            "api_version": version,
        }
        if test_code:
            route["test_event_code"] = test_code
        if partner:
            route["partner_agent"] = partner
        return [
            Outgoing(
                destination=f"meta:{pixel_id}:{token_id}:{test_code or '-'}:{version}",
                payload=server,
                # Meta deduplicates on event name + id; the outbox the same way, so one hit
                # resent is stored once, and two events that share an id are both kept
                dedup_id=f"{name}:{server['event_id']}",
                tag_type=self.type_name,
                route=route,
                deadline=deadline,
                preview={
                    "request": f"POST /{version}/{pixel_id}/events",
                    "test_event_code": test_code,
                    "match_quality": quality.score,
                    "match_keys": quality.keys,
                },
            )
        ]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(int(value)) if float(value).is_integer() else str(value)
    return value.strip() if isinstance(value, str) else ""
