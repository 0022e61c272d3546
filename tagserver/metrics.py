"""Prometheus metrics. Labels never carry secrets: destinations are shown by their safe key."""

from __future__ import annotations

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
