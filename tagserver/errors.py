"""Errors a client raises to answer a hit with a clear 4xx/503 instead of a traceback."""

from __future__ import annotations


class HitError(Exception):
    """The hit cannot be accepted; `reason` is shown to the sender as is."""

    status = 400

    def __init__(
        self, reason: str, *, status: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.headers = headers or {}
        if status is not None:
            self.status = status


class BadRequest(HitError):
    status = 400


class Unauthorized(HitError):
    status = 401


class PayloadTooLarge(HitError):
    status = 413


class Unavailable(HitError):
    """Nothing was stored: the sender should retry later (outbox full, disk full)."""

    status = 503

    def __init__(self, reason: str, retry_after: int = 30) -> None:
        super().__init__(reason, headers={"Retry-After": str(retry_after)})
