"""Match keys a tag may add to an event, and the report of what it gained (see
`tagserver.visitor.match`, `tagserver.visitor.identity_cookie`, `tagserver.visitor.geo`).

A conversions tag:

    class MyTag(Tag):
        params = (..., *match.PARAMS)          # use_identity_cookie, use_geography (opt-outs)

        def fire(self, event, params, ctx):
            event, gain = match.enrich(event, params, ctx.request, accept=match.ALL_KEYS)
            payload = build(event, ...)          # reads the added keys like the event's own
            quality = QUALITY.assess(payload["user_data"])
            ctx.report_match(match.report(gain, quality.keys, NAMES, score, quality.score, name))

A browser client keeps what a visitor gave in the identity cookie:

    stored = match.remember_identity(hit.request, settings, [(user_data, user_id)], consent,
                                     forget=logout)
    for header in stored.set_cookie:
        response.headers.append("set-cookie", header)
"""

from __future__ import annotations

from ..plugins import MatchReport
from ..visitor.geo import FIELDS as GEO_FIELDS
from ..visitor.geo import Geography
from ..visitor.identity_cookie import COOKIE, Remembered, Stored
from ..visitor.match import (
    ALL_KEYS,
    EVENT,
    GEOGRAPHY,
    IDENTITY_COOKIE,
    NO_GAIN,
    PARAMS,
    PLACE_KEYS,
    USE_GEOGRAPHY,
    USE_IDENTITY_COOKIE,
    Gain,
    enrich,
    remember_identity,
    report,
)

__all__ = [
    "ALL_KEYS", "COOKIE", "EVENT", "GEOGRAPHY", "GEO_FIELDS", "IDENTITY_COOKIE", "NO_GAIN",
    "PARAMS", "PLACE_KEYS", "USE_GEOGRAPHY", "USE_IDENTITY_COOKIE", "Gain", "Geography",
    "MatchReport", "Remembered", "Stored", "enrich", "remember_identity", "report",
]  # fmt: skip
