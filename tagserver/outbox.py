"""The outbox (interface only for now; the durable SQLite outbox lands with the delivery issue)."""

from __future__ import annotations

from .plugins import Outgoing
from .settings import Settings


class Outbox:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pending: list[Outgoing] = []

    async def start(self) -> None:
        pass

    async def put(self, messages: list[Outgoing]) -> None:
        self.pending.extend(messages)

    async def close(self) -> None:
        pass
