"""The container in force and the last refused reload, told from one place.

`/healthz`, preview's banner (and a status page) all show `ContainerStatus.describe()`: the
live container's name, version, hash and load time, and the last refused reload with its
problems, marked `pending` while the file on disk is still the refused one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import Container


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Refusal:
    at: float
    hash: str
    source: str
    problems: list[str]
    pending: bool = True  # the file on disk is still this refused one


class ContainerStatus:
    """Kept by each worker; every worker watches the same file, so they tell the same."""

    def __init__(self) -> None:
        self.loaded_at = time.time()
        self.refused: Refusal | None = None

    def loaded(self) -> None:
        self.loaded_at = time.time()
        if self.refused is not None:
            self.refused.pending = False

    def refuse(self, digest: str, source: str, problems: list[str]) -> None:
        self.refused = Refusal(time.time(), digest, source, problems)

    def back_to_running(self) -> None:
        """The file holds the running container again (a refused edit was undone)."""
        if self.refused is not None:
            self.refused.pending = False

    def describe(self, container: Container, redact: Callable[[Any], Any]) -> dict[str, Any]:
        refused = None
        if self.refused is not None:
            r = self.refused
            refused = {
                "at": iso(r.at),
                "hash": r.hash,
                "source": r.source,
                "pending": r.pending,
                "problems": redact(r.problems),
            }
        return {
            "name": container.name,
            "version": container.version,
            "hash": container.hash,
            "loaded_at": iso(self.loaded_at),
            "last_refused": refused,
        }

    def warnings(self, container: Container) -> list[str]:
        r = self.refused
        if r is None or not r.pending:
            return []
        count = len(r.problems)
        return [
            f"{r.source} changed at {iso(r.at)} but was refused ({count} problem"
            f"{'s' if count != 1 else ''}); still running version {container.version!r} "
            f"(hash {container.hash})"
        ]
