"""The only places tagserver reaches into another library's internals.

Each is here because the public way measurably costs the hit path or the event loop (the
numbers below were measured with timeit on the 2-core development machine, loaded), and each
is checked against the library versions in `CHECKED`: tests/test_compat.py fails on any other
version and checks the behaviour, so an upgrade means looking here again. Everything else uses
public APIs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

# the versions these internals were read in (tests/test_compat.py)
CHECKED: dict[str, tuple[str, ...]] = {
    "prometheus-client": ("0.26.0",),
    "httpx": ("0.29.0",),
}


# -- prometheus-client: many observations of a histogram at once -----------------------------
# `metrics.observe` counts a hit's latency in a dict (0.25 us) and adds the counts to the
# histogram every 0.1 s; `Histogram.observe` takes a lock per call (1.24 us: ~2 % of a hit's
# 58 us in-process cost). prometheus-client has no public "add n observations"; its
# `observe(v)` adds v to `_sum` and 1 to the first bucket whose upper bound is >= v, which is
# what these do for many values at once (in multiprocess mode too: the same value objects).


def histogram_bounds(histogram: Any) -> Sequence[float]:
    """The histogram's bucket upper bounds, +Inf last (a labelled histogram: one child)."""
    return histogram._upper_bounds  # type: ignore[no-any-return]  # a private list


def histogram_count(histogram: Any, index: int, count: int) -> None:
    """`count` observations in bucket `index` of `histogram_bounds` (their sum: below)."""
    histogram._buckets[index].inc(count)


def histogram_sum(histogram: Any, total: float) -> None:
    """Add `total`, the sum of the values counted, to the histogram's sum."""
    histogram._sum.inc(total)


# -- httpx: let a read response be freed by reference counting -------------------------------
# httpx binds a response and its stream to each other (`BoundAsyncStream` points back at the
# response), so every vendor answer (~38 objects with aiohttp's, 23 with a mock transport) was
# left for the garbage collector, whose collections paused the event loop for 7-14 ms every
# few hundred requests. `Response.stream` is an undocumented attribute.

_CLOSED = httpx.ByteStream(b"")


def release_response(response: httpx.Response) -> None:
    """Break the response ⇄ stream cycle of a response that has been read and closed."""
    response.stream = _CLOSED
