"""Hot reload: a changed container file is validated and swapped in atomically.

Polling `stat()` once a second costs nothing and works on every filesystem (bind mounts,
ConfigMaps updated by symlink swap) where inotify-style watchers miss changes. An invalid
file is refused with every problem logged, and the running container stays.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Protocol

from .container import ContainerError, load_file
from .plugins import Registry
from .runtime import Runtime
from .settings import Settings

log = logging.getLogger("tagserver.reload")


class Running(Protocol):
    """Where the running container lives (the app's state): a reload replaces `runtime`."""

    runtime: Runtime


class ContainerWatcher:
    def __init__(self, settings: Settings, registry: Registry, state: Running) -> None:
        self.settings = settings
        self.registry = registry
        self.state = state
        self._seen = self._signature()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.settings.container)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def check(self) -> bool:
        """Reload if the file changed; True when a new container was swapped in."""
        signature = self._signature()
        if signature is None or signature == self._seen:
            return False
        self._seen = signature
        try:
            container = load_file(self.settings.container, self.registry, self.settings)
        except ContainerError as exc:
            head, *lines = exc.report(self.settings.container)
            log.error(
                "container changed but is invalid; keeping the running one. %s:\n%s",
                head, "\n".join(f"  {line}" for line in lines),
            )  # fmt: skip
            return False
        if container.hash == self.state.runtime.container.hash:
            return False
        self.state.runtime = Runtime(container, self.settings)  # one assignment: atomic
        log.info(
            "container reloaded: %s version %s (hash %s)",
            container.name,
            container.version,
            container.hash,
        )
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval)
            try:
                self.check()
            except Exception:  # never let the watcher die
                log.exception("container reload check failed")
