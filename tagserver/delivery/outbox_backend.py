"""The outbox's two backends behind one interface.

- SQLite (`outbox.Outbox`): the embedded default, a file in the data dir; one machine (any
  number of worker processes on it).
- PostgreSQL (`outbox_pg.PgOutbox`), chosen by `TAGSERVER_OUTBOX_URL`: one outbox shared by
  every instance on every machine.

The hit path, the dispatcher, `/metrics`, `/healthz` and the tests use `OutboxBackend`; the
`tagserver outbox …` commands use `OutboxAdmin`. Neither knows which backend runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..plugins import Outgoing
from ..settings import Settings
from .delivery_counts import CountRow
from .delivery_types import Settlement
from .outbox_types import Claim, Routes

__all__ = [
    "Claim",
    "OutboxAdmin",
    "OutboxBackend",
    "Routes",
    "Settlement",
    "open_admin",
    "open_outbox",
]


class OutboxBackend(Protocol):
    """What the server needs from an outbox."""

    pending: int  # pending messages (all instances), as of the last commit or poll
    on_commit: Callable[[dict[int, tuple[str, str]]], None] | None  # the dispatcher's bell

    @property
    def where(self) -> str:
        """Where the outbox is, for logs (a path, or a URL without its password)."""

    @property
    def is_open(self) -> bool: ...

    @property
    def problem(self) -> str | None:
        """Why hits cannot be stored now (for /healthz), or None."""

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Commit what is queued, then close. Later `put`s get 503."""

    async def put(self, messages: list[Outgoing]) -> list[int]:
        """Store `messages`, in a group commit; once committed, the indices of the messages
        not stored because they repeat a pending or recently delivered one. Raises
        `Unavailable` (→ 503 with Retry-After) when nothing could be stored."""

    async def claim(self, destination_id: int, worker: str, limit: int) -> Claim:
        """Lease up to `limit` due messages of one destination to `worker`."""

    async def settle(self, worker: str, plan: Settlement) -> None: ...

    async def extend(self, worker: str, ids: list[int]) -> None: ...

    async def release(self, worker: str, ids: list[int]) -> None: ...

    async def due(self) -> Sequence[tuple[int, str, str, float]]:
        """Destinations with pending messages: (id, key, tag type, next due time)."""

    async def stats(self) -> list[dict[str, Any]]:
        """Per destination: pending, oldest age, next try, dead letters (no routes)."""


class OutboxAdmin(Protocol):
    """What `tagserver outbox …` needs; each call is its own transaction."""

    @property
    def where(self) -> str: ...

    def stats(self, now: float, *, in_flight: bool = False) -> list[dict[str, Any]]: ...

    def dead_letters(
        self, destination: str | None = None, limit: int = 100, ids: Sequence[int] = ()
    ) -> list[dict[str, Any]]: ...

    def count_past_deadline(
        self, destination: str | None, ids: Sequence[int], now: float
    ) -> int: ...

    def requeue(
        self,
        destination: str | None,
        ids: Sequence[int],
        now: float,
        routes: Routes | None = None,
    ) -> list[dict[str, Any]]: ...

    def purge(self, *, pending: bool, dead: bool, destination: str | None = None) -> int: ...

    def delivery_counts(self, since: int, fine_since: int) -> list[CountRow]:
        """Delivered, retried and dead-lettered per destination and bucket, summed over every
        worker and instance: each bucket from `fine_since`, the earlier ones from `since`
        summed as bucket 0 (`delivery_counts.read_range`)."""

    def close(self) -> None: ...


def open_outbox(settings: Settings) -> OutboxBackend:
    """The outbox `settings` ask for (not started yet)."""
    if settings.outbox_url.strip():
        from .outbox_pg import PgOutbox

        return PgOutbox(settings)
    from .outbox import Outbox

    return Outbox(settings)


def open_admin(settings: Settings) -> OutboxAdmin:
    """The outbox for the CLI; raises `LookupError` saying why there is none."""
    if settings.outbox_url.strip():
        from .outbox_pg import PgAdmin

        return PgAdmin(settings)
    from .outbox import SqliteAdmin

    return SqliteAdmin(settings)
