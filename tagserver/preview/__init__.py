"""Preview mode (interface only for now; the UI and the shared store land with the preview issue)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute

from ..settings import Settings


class Preview:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def session_for(self, request: Request) -> str | None:
        """The preview session this hit belongs to, or None (the common, free case)."""
        return None

    def record_hit(self, trace: dict[str, Any]) -> None:
        pass

    def record_delivery(self, trace_id: str, delivery: dict[str, Any]) -> None:
        pass

    def routes(self) -> list[BaseRoute]:
        return []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass
