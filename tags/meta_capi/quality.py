"""Event Match Quality, estimated locally: which match keys an event has, and a 0–10 score.

Meta scores each event name 0–10 in Events Manager, days later, from the keys it received
and how well they matched; it publishes no formula. This estimate is a plain sum of weights
(capped at 10) so a marketer sees at once, per event, what is missing. The weights follow
the keys Meta's docs call high-value (email, IP + user agent, fbc/fbp, phone, names):

    em 3 · ph 2 · client_ip_address + client_user_agent together 2.5 (one alone 1)
    fbc 1.5 · fbp 1.5 · external_id 1 · fn + ln together 1 (one alone 0.5)
    ge, db, ct, st, zp, country 0.25 each

An anonymous page view with IP, user agent and fbp scores 4; with an ad click (fbc) 5.5; a
signed-in purchase with email and phone reaches 10. Bands as Events Manager labels them:
0–3.9 poor, 4–5.9 ok, 6–7.9 good, 8–10 great.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["Quality", "assess", "WEIGHTS"]

WEIGHTS = {
    "em": 3.0,
    "ph": 2.0,
    "fbc": 1.5,
    "fbp": 1.5,
    "external_id": 1.0,
    "client_ip_address": 1.0,
    "client_user_agent": 1.0,
    "fn": 0.5,
    "ln": 0.5,
    "ge": 0.25,
    "db": 0.25,
    "ct": 0.25,
    "st": 0.25,
    "zp": 0.25,
    "country": 0.25,
}
IP_AND_AGENT_BONUS = 0.5  # IP + user agent together: 2.5, more than each alone (1 + 1)
BANDS = ((8.0, "great"), (6.0, "good"), (4.0, "ok"), (0.0, "poor"))


class Quality(NamedTuple):
    keys: tuple[str, ...]  # match keys present, in Meta's order
    score: float  # 0–10, in steps of 0.25
    band: str  # poor | ok | good | great


def assess(user_data: dict[str, Any]) -> Quality:
    """`user_data` as the mapping builds it: only keys with a value, in Meta's order.

    Few key combinations exist, so each is scored once and its `Quality` (immutable) is
    shared by every event with the same keys."""
    keys = tuple(user_data)
    found = _SCORES.get(keys)
    if found is None:
        found = Quality(keys, *_score(keys))
        if len(_SCORES) < 4096:
            _SCORES[keys] = found
    return found


_SCORES: dict[tuple[str, ...], Quality] = {}


def _score(keys: tuple[str, ...]) -> tuple[float, str]:
    score = sum(WEIGHTS.get(key, 0.0) for key in keys)
    if "client_ip_address" in keys and "client_user_agent" in keys:
        score += IP_AND_AGENT_BONUS
    score = min(score, 10.0)
    band = next(label for floor, label in BANDS if score >= floor)
    return score, band
