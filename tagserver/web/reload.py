"""Hot reload: a changed container file is validated and swapped in atomically.

Polling `stat()` once a second costs nothing and works on every filesystem (bind mounts,
ConfigMaps updated by symlink swap) where inotify-style watchers miss changes. An invalid
file is refused with every problem logged, and the running container stays. Either way the
verdict is kept where people look: the container status (`/healthz`, preview), the
`tagserver_container_reloads_total` metric and the container history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .. import metrics
from ..container.diff import diff, summary
from ..container.history import ACCEPTED, REFUSED, History, content_hash
from ..container.model import Container, ContainerError, Problem, load, parse_json
from ..container.status import ContainerStatus
from ..engine.runtime import Runtime
from ..plugins import Registry
from ..settings import Settings
from .startup import tag_lines

log = logging.getLogger("tagserver.reload")


class Running(Protocol):
    """Where the running container lives (the app's state): a reload replaces `runtime` and
    tells `status`."""

    runtime: Runtime
    status: ContainerStatus


def remember(history: History | None, container: Container, source: str) -> None:
    """Keep an accepted container in the history (once, however many workers load it)."""
    if history is None:
        return
    try:
        history.record(ACCEPTED, container.raw, source, container.name, container.version)
    except Exception as exc:  # the history is a record, never a reason to stop serving
        log.warning("container history not written: %s: %s", type(exc).__name__, exc)


def remember_refusal(
    history: History | None, raw: bytes, source: str, problems: list[Problem]
) -> None:
    if history is None:
        return
    data = None
    with contextlib.suppress(ContainerError):
        data = parse_json(raw)
    name = version = ""
    if isinstance(data, dict):
        name, version = str(data.get("name", "")), str(data.get("version", ""))
    try:
        history.record(REFUSED, raw, source, name, version, [str(p) for p in problems])
    except Exception as exc:
        log.warning("container history not written: %s: %s", type(exc).__name__, exc)


Signature = tuple[int, int, int]


def signature(path: str) -> Signature | None:
    """What tells a changed file: modification time, size and inode (None: no file)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ContainerWatcher:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        state: Running,
        history: History | None = None,
        *,
        on_refused: Callable[[str, str, list[str]], None] | None = None,
        seen: Signature | None = None,
    ) -> None:
        """`seen`: the file's `signature` taken before the running container was read from it
        (else now): a change made while the server was starting is then noticed too."""
        self.settings = settings
        self.on_refused = on_refused  # (hash, path, problems): the webhook alert
        self.registry = registry
        self.state = state
        self.history = history
        self._seen = seen if seen is not None else signature(settings.container)

    def check(self) -> bool:
        """Reload if the file changed; True when a new container was swapped in."""
        signature_now = signature(self.settings.container)
        if signature_now is None or signature_now == self._seen:
            return False
        self._seen = signature_now
        path = self.settings.container
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            log.error("container %s changed but cannot be read: %s", path, exc.strerror)
            return False
        running = self.state.runtime.container
        try:
            container = load(parse_json(raw, path), self.registry, self.settings, raw=raw)
        except ContainerError as exc:
            self._refused(raw, exc.problems)
            return False
        if container.hash == running.hash:
            self.state.status.back_to_running()
            return False
        self.state.runtime = Runtime(container, self.settings)  # one assignment: atomic
        self.state.status.loaded()
        metrics.labelled(metrics.CONTAINER_RELOADS, "applied").inc()
        remember(self.history, container, path)
        log.info(
            "container reloaded: %s version %s (hash %s), was version %s (hash %s): %s",
            container.name, container.version, container.hash, running.version, running.hash,
            summary(diff(running.source, container.source)),
        )  # fmt: skip
        for line in tag_lines(container):  # what the tags do now (LIVE, DRY RUN ...)
            log.info("%s", line)
        return True

    def _refused(self, raw: bytes, problems: list[Problem]) -> None:
        path = self.settings.container
        digest = content_hash(raw)
        already = self.state.status.refused
        if already is not None and already.pending and already.hash == digest:
            return  # the same refused file touched again: said already
        self.state.status.refuse(digest, path, [str(p) for p in problems])
        metrics.labelled(metrics.CONTAINER_RELOADS, "refused").inc()
        remember_refusal(self.history, raw, path, problems)
        if self.on_refused is not None:
            try:
                self.on_refused(digest, path, [str(p) for p in problems])
            except Exception:
                log.exception("could not tell about the refused container")
        head, *lines = ContainerError(problems).report(path)
        log.error(
            "container changed but is invalid; keeping the running one. %s:\n%s",
            head, "\n".join(f"  {line}" for line in lines),
        )  # fmt: skip

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval)
            try:
                await asyncio.to_thread(self.check)  # reads, validates, writes the history
            except Exception:  # never let the watcher die
                log.exception("container reload check failed")
