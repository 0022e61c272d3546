"""How a sender reads one HTTP exchange with a vendor: delivered, retry later, or never.

Shared by the webhook-style senders (`http_request`, `ga4`) and by any plugin's sender, so
every destination agrees on what a timeout, a 429 or a 503 means.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

import httpx

from ..plugins import Outcome, TagRejected

RETRY_STATUSES = frozenset({408, 429})  # besides every 5xx


def elapsed_ms(started: float) -> float:
    """Milliseconds since `started` (a `time.perf_counter()`), as a delivery's latency."""
    return round((time.perf_counter() - started) * 1000, 3)


def with_query(url: str, query: str) -> str:
    """`url` with `query` appended after its own query string, if it has one."""
    if not query:
        return url
    return url + ("&" if "?" in url else "?") + query


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds: a number of seconds or an HTTP date; None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def status_outcome(status: int) -> Outcome:
    """2xx delivered; 408, 429 and 5xx worth retrying; anything else refused for good."""
    if 200 <= status < 300:
        return "delivered"
    if status in RETRY_STATUSES or status >= 500:
        return "retry"
    return "permanent"


def error_outcome(exc: httpx.HTTPError | httpx.InvalidURL, timeout: float) -> tuple[Outcome, str]:
    """A request that got no answer: a bad URL never heals; timeouts and connections may."""
    if isinstance(exc, httpx.TimeoutException):
        return "retry", f"no answer within {timeout:g} s ({type(exc).__name__})"
    if isinstance(exc, (httpx.InvalidURL, httpx.UnsupportedProtocol)):
        return "permanent", f"invalid URL: {exc}"
    return "retry", f"{type(exc).__name__}: {exc or 'connection failed'}"


def vendor_url(value: str, param: str) -> httpx.URL:
    """`value` parsed as an http(s) URL with a host, else `TagRejected` naming the param."""
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise TagRejected(f"{param} is not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise TagRejected(f"{param} must be an http:// or https:// URL with a host")
    return url
