"""The Meta tag's own Prometheus metrics (the core knows none of a vendor's)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
