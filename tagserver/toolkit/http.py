"""How a sender reads one HTTP exchange with a vendor (see `tagserver.delivery.http_outcomes`), so every
destination agrees on what a timeout, a 429 or a 503 means."""

from __future__ import annotations

from ..delivery.http_client import forget_stream
from ..delivery.http_outcomes import (
    RETRY_STATUSES,
    elapsed_ms,
    error_outcome,
    retry_after_seconds,
    status_outcome,
    vendor_url,
    with_query,
)

__all__ = [
    "RETRY_STATUSES", "elapsed_ms", "error_outcome", "forget_stream", "retry_after_seconds",
    "status_outcome", "vendor_url", "with_query",
]  # fmt: skip
