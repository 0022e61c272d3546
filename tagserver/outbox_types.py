"""What both outbox backends hand the dispatcher."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .plugins import Message

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
