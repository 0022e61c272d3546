"""The records the delivery path passes around: outbox rows, claims, settlements.

Named tuples, so that they read by name and still cost what a tuple costs: a row is built per
outgoing message on the hit path and pickled to the writer process; settlements are stored
with one JSON statement (`orjson.dumps(..., default=tuple)` writes them as arrays, in field
order). Imports nothing of the server: the outbox writer process loads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = [
    "Claimed", "DeadLetter", "Destination", "Due", "OutboxRow", "Retry", "RowValues", "Settlement",
]  # fmt: skip


class OutboxRow(NamedTuple):
    """One message as the writer process stores it.

    It travels there as a plain tuple of these fields (`RowValues`): pickled per loop
    iteration on the hit path, a named tuple costs ~4 us more per frame (its class is looked
    up and rebuilt by name); the writer makes it an `OutboxRow` again."""

    destination: str  # the destination key (safe to show)
    tag_type: str  # the name the tag type is registered under
    route: dict[str, Any]  # how to reach the vendor (holds secrets; stored once per destination)
    payload: str  # JSON text
    dedup_id: str
    tag_name: str
    created_at: float
    deadline: float | None
    trace_id: str | None
    secrets: tuple[str, ...] = ()  # the route's secret values (its tag's `secret=True` params)


RowValues = tuple[Any, ...]  # an OutboxRow's fields, in order, as a plain tuple


# a stored destination as a commit reports the ones it touched: (key, tag type). Plain: it is
# pickled back to the event loop with every commit
Destination = tuple[str, str]


class Due(NamedTuple):
    """A destination with pending messages, as the dispatcher's poll reads it."""

    destination_id: int
    key: str
    tag_type: str
    next_due: float


class Retry(NamedTuple):
    """A claimed message to send again later."""

    id: int
    next_attempt_at: float
    status: int | None  # the vendor's HTTP status, when there was one
    error: str


class DeadLetter(NamedTuple):
    """A claimed message that can never be delivered."""

    id: int
    attempted: bool  # False when it was not sent this time (deadline passed before)
    status: int | None
    error: str
    code: str  # the vendor's error code
    trace: str  # the vendor's trace id
    reason: str  # why it is dead, in words


@dataclass
class Settlement:
    """What to do with claimed messages after a send (one writer job)."""

    delivered: list[int] = field(default_factory=list)
    retry: list[Retry] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.delivered or self.retry or self.dead)

    def extend(self, other: Settlement) -> None:
        self.delivered.extend(other.delivered)
        self.retry.extend(other.retry)
        self.dead.extend(other.dead)


@dataclass
class Claimed:
    """Messages leased to one worker, as the database holds them (the server builds `Claim`s)."""

    key: str = ""
    route: dict[str, Any] | None = None
    secrets: tuple[str, ...] = ()  # the route's secret values, to redact from what is shown
    rows: str = "[]"  # JSON: [id, payload, dedup_id, attempts, created_at, deadline, trace, tag]
    ids: list[int] = field(default_factory=list)
    next_due: float | None = None  # when the destination's next message becomes due
