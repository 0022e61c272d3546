"""Delivery counts over time, as the outbox stores them: every worker and instance adds to the
same buckets, so "delivered in the last hour" is the whole server's, not one process's.

Each backend keeps one row per bucket of BUCKET_SECONDS and destination: how many messages
were delivered, sent and to be retried, and dead-lettered in it. The dispatcher adds to them
in the transaction that records those outcomes (one upsert per destination and settlement,
never one per message); rows older than KEEP_SECONDS are pruned once a minute.

A window of W seconds sums the buckets that overlap the last W seconds: it never misses a
delivery, and covers at most one bucket more (10 s); `since` says exactly from when. Only
counts and destination keys are stored: nothing personal.

Imports nothing of the server (the outbox writer process loads it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

BUCKET_SECONDS = 10
WINDOWS = {"minute": 60, "hour": 3600, "day": 86400}
CHART_MINUTES = 60  # the chart: per minute, the last hour
KEEP_SECONDS = WINDOWS["day"] + 3600  # a day, and an hour to spare
OUTCOMES = ("delivered", "retried", "dead_lettered")


class CountRow(NamedTuple):
    """One destination's counts in one bucket, summed over workers and instances (bucket 0:
    the earlier buckets of the range read, summed)."""

    destination: str
    tag_type: str
    bucket: int  # the bucket's start, unix seconds
    delivered: int
    retried: int  # sent, not taken, to be tried again
    dead_lettered: int  # refused for good, or out of time


def bucket_of(when: float) -> int:
    """The start of the bucket holding `when` (unix seconds)."""
    return int(when // BUCKET_SECONDS) * BUCKET_SECONDS


def minute_of(when: float) -> int:
    return int(when // 60) * 60


def read_range(now: float) -> tuple[int, int]:
    """What a status reader asks the outbox for: (since, fine_since). Buckets from `since`
    cover the longest window; from `fine_since` on, each bucket on its own (the shorter
    windows and the chart), the earlier ones summed."""
    since = bucket_of(now - WINDOWS["day"])
    fine_since = min(bucket_of(now - WINDOWS["hour"]), minute_of(now) - (CHART_MINUTES - 1) * 60)
    return since, fine_since


def summarize(rows: Iterable[CountRow], now: float) -> dict[str, dict[str, Any]]:
    """Per destination key: each outcome's count in each window, and the chart (per minute of
    the last hour, the current one last: delivered, failed = retried + dead-lettered)."""
    starts = since(now)
    first_minute = minute_of(now) - (CHART_MINUTES - 1) * 60
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        found = out.get(row.destination)
        if found is None:
            found = out[row.destination] = {**none(now), "tag_type": row.tag_type, "minutes": {}}
        counts = (row.delivered, row.retried, row.dead_lettered)
        for window, start in starts.items():
            if row.bucket >= start or (window == "day" and row.bucket == 0):
                for outcome, count in zip(OUTCOMES, counts, strict=True):
                    found[outcome][window] += count
        if row.bucket >= first_minute:
            minute = found["minutes"].setdefault(minute_of(row.bucket), [0, 0])
            minute[0] += row.delivered
            minute[1] += row.retried + row.dead_lettered
    for found in out.values():
        minutes = found.pop("minutes")
        for point in found["chart"]:
            point["delivered"], point["failed"] = minutes.get(point["at"], (0, 0))
    return out


def none(now: float) -> dict[str, Any]:
    """A destination's figures when nothing was counted for it in the last day."""
    first_minute = minute_of(now) - (CHART_MINUTES - 1) * 60
    return {
        "tag_type": "",
        **{outcome: dict.fromkeys(WINDOWS, 0) for outcome in OUTCOMES},
        "chart": [
            {"at": at, "delivered": 0, "failed": 0}
            for at in range(first_minute, first_minute + CHART_MINUTES * 60, 60)
        ],
    }


def since(now: float) -> dict[str, int]:
    """Each window's first second: the start of the oldest bucket it sums."""
    return {name: bucket_of(now - seconds) for name, seconds in WINDOWS.items()}
