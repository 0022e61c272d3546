"""What both outbox backends hand the dispatcher."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import Unavailable
from ..plugins import Message
from ..settings import Settings

# tag name → (destination key, tag type, route) it resolves to now (`tagserver outbox retry`)
Routes = Mapping[str, tuple[str, str, dict[str, Any]]]


@dataclass
class Claim:
    """Messages one worker claimed for one destination, with the route to send them."""

    route: dict[str, Any] | None
    messages: list[Message]
    tag_names: dict[int, str] = field(default_factory=dict)
    next_due: float | None = None  # when the destination's next message becomes due
    secrets: tuple[str, ...] = ()  # the route's secret values: redacted from what is shown


def split(repeats: list[int] | None, counts: list[int]) -> list[list[int]]:
    """A group's repeated row indices → each waiter's, counted from its own first row."""
    if not repeats:
        return [[] for _ in counts]
    out: list[list[int]] = []
    start = 0
    for count in counts:
        out.append([i - start for i in repeats if start <= i < start + count])
        start += count
    return out


def over_limit(queued: int, incoming: int, settings: Settings) -> Unavailable | None:
    """The 503 for `incoming` more messages when `queued` already wait and the outbox would
    pass `TAGSERVER_OUTBOX_MAX_MESSAGES` (both backends, and /healthz, ask the same)."""
    limit = settings.outbox_max_messages
    if queued + incoming > limit:
        return Unavailable(
            f"the outbox is full ({queued} messages waiting for delivery, limit {limit}); "
            "retry later",
            retry_after=30,
        )
    return None
