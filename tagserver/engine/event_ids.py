"""Event-id reuse: the same `event_id` sent for different events.

Meta (and every vendor that deduplicates browser and server events) keeps one event per
event name + id within its deduplication window (48 hours). A site that reuses an id — a
constant, a page id, an order page's id for several orders — silently loses real conversions.
The server sees every event: when an id comes back within the window for an event with a
different name, order id (`transaction_id`) or value, it warns (the log, preview's Console, the
events-API answer) and counts `tagserver_event_id_reuse_total{client, differs}`. The event is
still processed: the warning is for the site's developer.

Ids the server derived itself (events sent without one) are not tracked. Memory is bounded:
each worker process remembers the last `TAGSERVER_EVENT_ID_REUSE_MAX_IDS` ids it saw (about
150 bytes each), so with several workers, or several machines, a reuse is seen only when both
events reach the same worker — a sample, not a census (enough to find a broken site).
"""

from __future__ import annotations

import logging
import math
from typing import Any, NamedTuple

from prometheus_client import Counter

from .. import metrics
from ..event import Event

log = logging.getLogger("tagserver.event_ids")

EVENT_ID_REUSE = Counter(
    "tagserver_event_id_reuse_total",
    "Events whose event_id was used for a different event (name, transaction_id or value) "
    "within the deduplication window, by client and the first field that differs; per worker",
    ["client", "differs"],
)
LOG_LINES_PER_MINUTE = 10  # a broken site reuses ids on every hit: the log says it, not floods


class Seen(NamedTuple):
    name: Any
    order: Any
    value: Any
    at: float


class ReuseDetector:
    """Remembers recent event ids (bounded, oldest forgotten) and what they were used for."""

    def __init__(self, window_seconds: float, max_ids: int) -> None:
        self.window = window_seconds
        self.max_ids = max(1, max_ids)
        self.seen: dict[str, Seen] = {}
        self._minute = 0
        self._logged = 0

    def check(self, event_id: str, event: Event, now: float, client: str) -> str | None:
        """A warning when `event_id` was used within the window for a different event."""
        current = Seen(
            event.get("event_name"),
            _comparable(event.get("transaction_id")),
            _comparable(event.get("value")),
            now,
        )
        seen = self.seen
        before = seen.get(event_id)
        if before is not None and now - before.at <= self.window:
            differs = _first_difference(before, current)
            if differs is None:
                return None  # the same event again (a resent hit, a retry): fine
            warning = _describe(event_id, differs, before, current)
            metrics.count(EVENT_ID_REUSE, client, differs)
            self._log(warning, now)
            return warning
        if before is not None:
            del seen[event_id]  # expired: remembered anew, at the end
        elif len(seen) >= self.max_ids:
            del seen[next(iter(seen))]  # the oldest
        seen[event_id] = current
        return None

    def _log(self, warning: str, now: float) -> None:
        minute = int(now // 60)
        if minute != self._minute:
            self._minute, self._logged = minute, 0
        self._logged += 1
        if self._logged <= LOG_LINES_PER_MINUTE:
            log.warning("%s", warning)
        elif self._logged == LOG_LINES_PER_MINUTE + 1:
            log.warning("more reused event ids this minute: see tagserver_event_id_reuse_total")


def _comparable(value: Any) -> Any:
    """Numbers compare as numbers (10 == 10.0 == "10"), texts stripped."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            return text
        return number if math.isfinite(number) else text
    return None if value is None else repr(value)[:100]


_FIELDS = (("event_name", "name"), ("transaction_id", "order"), ("value", "value"))


def _first_difference(before: Seen, now: Seen) -> str | None:
    for label, attr in _FIELDS:
        if getattr(before, attr) != getattr(now, attr):
            return label
    return None


def _describe(event_id: str, differs: str, before: Seen, now: Seen) -> str:
    ago = max(0, round(now.at - before.at))
    return (
        f"event_id {event_id[:100]!r} reused: first seen {ago} s ago for event "
        f"{_show(before.name)} (transaction_id {_show(before.order)}, value "
        f"{_show(before.value)}), now for {_show(now.name)} (transaction_id {_show(now.order)}, "
        f"value {_show(now.value)}); vendors deduplicating on this id may drop one of them"
    )


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)[:60] if isinstance(value, str) else str(value)


def detector(window_seconds: float, max_ids: int) -> ReuseDetector | None:
    """A worker's detector (None when off). The app makes one at start: it outlives reloads."""
    if window_seconds <= 0 or max_ids <= 0:
        return None
    return ReuseDetector(window_seconds, max_ids)


__all__ = ["EVENT_ID_REUSE", "ReuseDetector", "detector"]
