"""Prometheus metrics. Labels never carry secrets: destinations are shown by their safe key."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

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
META_MATCH_QUALITY = Histogram(
    "tagserver_meta_match_quality",
    "Estimated Event Match Quality (0-10) of events the Meta tag built, by Meta event name "
    "(standard names; any other is 'custom')",
    ["event_name"],
    buckets=(1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
)
META_REFUSED = Counter(
    "tagserver_meta_refused_total",
    "Events the Meta tag did not send because Meta would refuse them, by reason code",
    ["reason"],
)

_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def labelled(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, looked up once: `labels()` costs microseconds per call, and the
    hot path counts several things per hit. Only for labels with few values (clients, tags)."""
    key = (id(metric), values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def tag_result(tag: str, status: str) -> None:
    """Count one tag decision."""
    labelled(TAG_RESULTS, tag, status).inc()
