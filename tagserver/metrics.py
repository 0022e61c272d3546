"""Prometheus metrics. Labels never carry secrets: destinations are shown by their safe key.

The hit path counts with `count` and `observe`, which add to plain dicts; `flush` hands the
totals to prometheus-client at most every FLUSH_SECONDS and before every scrape. An `inc()`
or `observe()` of prometheus-client takes a lock (and in multiprocess mode writes a memory-mapped
file) each time, several times per hit; a dict update does not.
"""

from __future__ import annotations

import asyncio
import re
from bisect import bisect_left
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from ._compat import histogram_bounds, histogram_count, histogram_sum

HITS = Counter(
    "tagserver_hits_total", "Hits by claiming client and HTTP status", ["client", "status"]
)
EVENTS = Counter("tagserver_events_total", "Events parsed, by client", ["client"])
TAG_RESULTS = Counter(
    "tagserver_tag_results_total",
    "Tag decisions by tag and status (fired, error ...)",
    ["tag", "status"],
)
HIT_LATENCY = Histogram(
    "tagserver_hit_seconds",
    "Time to answer a hit (parse, run, outbox commit)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
DELIVERIES = Counter(
    "tagserver_deliveries_total",
    "Delivery attempts by destination and outcome (delivered, retry, permanent, deadline)",
    ["destination", "outcome"],
)
VENDOR_LATENCY = Histogram(
    "tagserver_vendor_seconds",
    "Time of one sender call (one vendor request, or several when it splits), by tag type",
    ["tag_type"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
OUTBOX_COMMIT = Histogram(
    "tagserver_outbox_commit_seconds",
    "Time of one outbox group commit (all hits that arrived meanwhile)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)

CONTAINER_RELOADS = Counter(
    "tagserver_container_reloads_total",
    "Changes of the container file by result: applied, or refused (invalid; the running "
    "container stays). Each worker counts the changes it saw.",
    ["result"],
)
TAG_REFUSED = Counter(
    "tagserver_tag_refused_total",
    "Events a conversions tag (TikTok, Pinterest, Snapchat) did not send because the vendor "
    "would refuse them, by tag type and reason code",
    ["tag_type", "reason"],
)
MATCH_QUALITY = Histogram(
    "tagserver_match_quality",
    "Estimated match quality (0-10) of events a conversions tag built, by tag type",
    ["tag_type"],
    buckets=(1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
)

DELIVERY_ERRORS = Counter(
    "tagserver_delivery_errors_total",
    "Messages a vendor did not accept, by destination, tag type and error class: auth (the "
    "token or key was refused), throttled, invalid (the event was refused), unavailable "
    "(5xx), network (no answer), refused (any other 4xx)",
    ["destination", "tag_type", "error_class"],
)
DESTINATION_FAILING = Gauge(
    "tagserver_destination_failing",
    "1 while a destination's last sends all failed and its lane is paused between tries",
    ["destination", "tag_type"],
    multiprocess_mode="livemax",
)
TAG_REJECTIONS = Counter(
    "tagserver_tag_rejections_total",
    "Events a tag refused to send, by tag and the start of its reason (bounded)",
    ["tag", "reason"],
)

_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def labelled(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, looked up once: `labels()` costs microseconds per call, and the
    hot path counts several things per hit. Only for labels with few values (clients, tags,
    destinations)."""
    key = (id(metric), values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


class Group:
    """Label sets of one metric that are counted together, again and again (the tags an
    event's name rules out, the match keys a tag sends): made once, counted with
    `count_group`. It is its own dict key (by identity), so counting it hashes no labels."""

    __slots__ = ("metric", "labelsets")

    def __init__(self, metric: Any, labelsets: tuple[tuple[str, ...], ...]) -> None:
        self.metric = metric
        self.labelsets = labelsets


FLUSH_SECONDS = 0.1

_counts: dict[tuple[Any, tuple[str, ...]], float] = {}
_buckets: dict[tuple[Any, int], int] = {}  # (histogram, bucket index) → observations
_sums: dict[Any, float] = {}  # histogram → sum of its observations
_groups: dict[Group, int] = {}  # count_group: each group's times
_flush_pending = False


def count(metric: Any, *labels: str, amount: float = 1) -> None:
    """`metric.labels(*labels).inc(amount)`, applied at the next flush."""
    key = (metric, labels)
    _counts[key] = _counts.get(key, 0) + amount
    if not _flush_pending:
        _schedule_flush()


def count_group(group: Group) -> None:
    """`count(group.metric, *labels)` for each of the group's label sets, applied at the next
    flush."""
    _groups[group] = _groups.get(group, 0) + 1
    if not _flush_pending:
        _schedule_flush()


def observe(histogram: Any, value: float, *labels: str) -> None:
    """`histogram.observe(value)` (a histogram, or one labelled child; with `labels`, that
    child of `histogram`), applied at the next flush."""
    if labels:
        histogram = labelled(histogram, *labels)
    key = (histogram, bisect_left(histogram_bounds(histogram), value))
    _buckets[key] = _buckets.get(key, 0) + 1
    _sums[histogram] = _sums.get(histogram, 0.0) + value
    if not _flush_pending:
        _schedule_flush()


def _schedule_flush() -> None:
    global _flush_pending
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no event loop (a script, a unit test): apply at once
        flush()
        return
    _flush_pending = True
    loop.call_later(FLUSH_SECONDS, flush)


def flush() -> None:
    """Hand everything counted since the last flush to prometheus-client."""
    global _flush_pending
    _flush_pending = False
    while _counts:
        (metric, labels), amount = _counts.popitem()
        (labelled(metric, *labels) if labels else metric).inc(amount)
    while _groups:
        group, times = _groups.popitem()
        for labels in group.labelsets:
            labelled(group.metric, *labels).inc(times)
    # what Histogram.observe would have done for each value, once per bucket (`_compat`)
    while _buckets:
        (histogram, index), amount = _buckets.popitem()
        histogram_count(histogram, index, amount)
    while _sums:
        histogram, total = _sums.popitem()
        histogram_sum(histogram, total)


MAX_REASONS = 20  # distinct rejection reasons counted per process; later ones count as "other"
_reasons: set[str] = set()
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|\d+")


def reason_label(reason: str) -> str:
    """A bounded label for a rejection reason: quoted values and numbers (which may come from
    the event) are dropped, the text is cut short, and past MAX_REASONS it is "other"."""
    text = _QUOTED.sub("…", reason.removeprefix("not sent: "))[:80].strip()
    if text not in _reasons:
        if len(_reasons) >= MAX_REASONS:
            return "other"
        _reasons.add(text)
    return text
