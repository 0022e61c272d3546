"""Tag `meta_capi`: one event → one Conversions API server event for the outbox.

fire = map (normalize + hash) → estimate match quality → check what Meta would refuse →
an `Outgoing` for the sender, or, without pixel id or token, a dry run that only records the
payload. Pure CPU, no I/O: it runs on the hit path.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tagserver import Event, FireContext, Outgoing, Param, StartupParams, Tag
from tagserver.toolkit import match, metrics
from tagserver.toolkit.conversions import Hashes, missing, text, token_id

from .checks import MetaRefusal, check, max_age
from .mapping import ACTION_SOURCES, STANDARD_EVENTS, build
from .metrics import META_MATCH_QUALITY, META_REFUSED
from .quality import assess
from .sender import GRAPH_URL, MetaSender

log = logging.getLogger("tagserver.tag.meta_capi")

DEFAULT_API_VERSION = "v25.0"
DEADLINE_MARGIN_SECONDS = 600  # stop trying 10 minutes before Meta's own age limit
_PIXEL_ID = re.compile(r"\d{1,20}")
_API_VERSION = re.compile(r"v\d{1,3}\.\d{1,2}")


class MetaCapiTag(Tag):
    description = (
        "Meta Conversions API: normalized, hashed, checked, batched (1000 per request), "
        "retried; dry run without pixel id or token."
    )
    batch_size = 1000
    sender_class = MetaSender
    server_settings = (GRAPH_URL,)
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
        *match.PARAMS,
    )

    def __init__(self, name: str, static_params: dict[str, Any], settings: Any) -> None:
        super().__init__(name, static_params, settings)
        self._targets: dict[tuple[Any, ...], Target] = {}

    def fire(self, event: Event, params: dict[str, Any], ctx: FireContext) -> list[Outgoing]:
        accept = _RAW_IDS_ACCEPT if params.get("external_id_hashing") == "raw" else match.ALL_KEYS
        event, gain = match.enrich(event, params, ctx.request, accept, memo=ctx.memo)
        target = self._target(params)
        # through the event's memo, as the other conversions tags: a phone number is parsed
        # once per event for all of them; a dry run nobody sees decides the same (checks,
        # match keys) without hashing
        seen = target.route is not None or ctx.shows_dry_runs
        built = build(event, params, ctx.request, Hashes(ctx.memo, digest=seen))
        server = built.event
        quality = assess(server["user_data"])
        ctx.report_match(
            match.report(gain, quality.keys, {}, _score, quality.score, server["event_name"])
        )
        notes = ctx.notes
        notes["match_keys"] = list(quality.keys)  # the notes' own copy, as preview shows it
        notes["match_quality"] = quality.score
        notes["match_quality_band"] = quality.band
        if built.dropped:
            notes["dropped_user_data"] = built.dropped
        try:
            check(server, time.time())
        except MetaRefusal as refusal:
            metrics.labelled(META_REFUSED, refusal.code).inc()  # fixed codes: few
            log.info(
                "tag %r: %s event %s not sent: %s",
                self.name, server["event_name"], server["event_id"], refusal.reason,
            )  # fmt: skip
            raise
        name = server["event_name"]
        _quality_metric(name)(quality.score)

        if target.problem is not None:
            raise MetaRefusal(*target.problem)
        if target.route is None:
            body = {"data": [server], **target.extra} if ctx.shows_dry_runs else None
            ctx.dry_run(body, f"no {target.missing}, so nothing is sent")
            return []
        return [
            Outgoing(
                destination=target.destination,
                payload=server,
                # Meta deduplicates on event name + id; the outbox the same way, so one hit
                # resent is stored once, and two events that share an id are both kept
                dedup_id=f"{name}:{server['event_id']}",
                route=target.route,  # shared by the tag's messages, read-only
                deadline=server["event_time"]
                + max_age(server["action_source"])
                - DEADLINE_MARGIN_SECONDS,
            )
        ]

    def describe(self, params: StartupParams) -> str:
        """LIVE with the pixel it sends to, or DRY RUN naming what is empty."""
        credentials = ("pixel_id", "access_token")
        pending = [n for n in credentials if n in params.per_event]
        if pending:
            given = " and ".join(f"{n} from {params.source(n)}" for n in pending)
            return f"LIVE for events that resolve {given}; DRY RUN for the others"
        target = Target.of(
            params.get("pixel_id"), params.get("access_token"), params.get("api_version"),
            params.get("test_event_code"), params.get("partner_agent"),
        )  # fmt: skip
        if target.problem is not None:
            return f"REFUSES EVERY EVENT — {target.problem[1]}"
        if target.route is None:
            empty = [params.source(n) for n in credentials if not text(params.get(n))]
            verb = "is" if len(empty) == 1 else "are"
            return f"DRY RUN — {' and '.join(empty)} {verb} empty (events are checked, not sent)"
        pixel = target.route["pixel_id"]
        line = f"LIVE → pixel {pixel[:4]}… (Graph API {target.route['api_version']})"
        if "test_event_code" in target.extra:
            line += f", test event code {target.extra['test_event_code']} (Events Manager → Test events)"
        return line

    def route_for(self, params: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        target = self._target(params)
        if target.route is None or target.problem is not None:
            return None
        return target.destination, target.route

    def _target(self, params: dict[str, Any]) -> Target:
        """Where the event goes, from the resolved params; the same few combinations repeat
        for every event, so they are worked out once."""
        get = params.get  # spelled out: a generator here cost as much as the lookup
        key = (get("pixel_id"), get("access_token"), get("api_version"),
               get("test_event_code"), get("partner_agent"))  # fmt: skip
        try:
            target = self._targets.get(key)
        except TypeError:  # a templated param resolved to something unhashable
            return Target.of(*key)
        if target is None:
            if len(self._targets) >= 64:
                self._targets.clear()
            target = self._targets[key] = Target.of(*key)
        return target


@dataclass(frozen=True)
class Target:
    """The destination of a tag's events: its route for the sender, or why there is none."""

    destination: str = ""
    route: dict[str, Any] | None = None  # None: dry run
    missing: str = ""  # what a dry run lacks
    extra: dict[str, Any] = field(default_factory=dict)  # test_event_code, partner_agent
    problem: tuple[str, str] | None = None  # (code, reason) of a MetaRefusal

    @classmethod
    def of(cls, pixel: Any, token: Any, version: Any, test_code: Any, partner: Any) -> Target:
        pixel_id, access_token = text(pixel), text(token)
        api_version = text(version) or DEFAULT_API_VERSION
        extra = {k: v for k, v in (("test_event_code", text(test_code)),
                                   ("partner_agent", text(partner))) if v}  # fmt: skip
        if pixel_id and not _PIXEL_ID.fullmatch(pixel_id):
            return cls(problem=("bad_pixel_id", f"pixel_id {pixel_id[:30]!r} is not a number"))
        if not _API_VERSION.fullmatch(api_version):
            reason = f"api_version {api_version[:20]!r} is not like {DEFAULT_API_VERSION}"
            return cls(problem=("bad_api_version", reason))
        if not pixel_id or not access_token:
            lacking = missing(("pixel_id", pixel_id), ("access_token", access_token))
            return cls(missing=lacking, extra=extra)
        code = extra.get("test_event_code") or "-"
        route = {"pixel_id": pixel_id, "access_token": access_token, "api_version": api_version}
        return cls(
            destination=f"meta:{pixel_id}:{token_id(access_token)}:{code}:{api_version}",
            route={**route, **extra},
            extra=extra,
        )


# a raw external_id must equal the pixel's: the identity cookie's hash of it cannot stand in
_RAW_IDS_ACCEPT = match.ALL_KEYS - {"external_id"}


def _score(keys: dict[str, Any]) -> float:
    return assess(keys).score


_quality_observers: dict[str, Callable[[float], None]] = {}


def _quality_metric(name: str) -> Callable[[float], None]:
    """`observe` of the labelled histogram child: standard names as themselves, any other as
    "custom"."""
    label = name if name in STANDARD_EVENTS else "custom"
    observe = _quality_observers.get(label)
    if observe is None:
        child = META_MATCH_QUALITY.labels(label)
        observe = _quality_observers[label] = _score_observer(child)
    return observe


def _score_observer(child: Any) -> Callable[[float], None]:
    """`child.observe` for match-quality scores, without prometheus_client's lock on every
    call (a third of the tag's cost after hashing): counted like the hit latency, in a dict
    added to the histogram at the next flush (`metrics.observe`)."""
    return functools.partial(metrics.observe, child)
