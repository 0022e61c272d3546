"""Webhook alerts without Prometheus: `TAGSERVER_ALERT_WEBHOOK_URL` gets a Slack-compatible
`{"text": …}` when a destination starts dead-lettering, a vendor refuses a token, or an edited
container file is refused.

One message per incident: an incident has a key (`dead:<destination>`, `auth:<destination>`,
`reload:<hash of the refused file>`), and a marker file per key in the data dir says it was
told. Every worker process of the machine shares the markers (under a file lock), so four
workers that see the same failure send one message. A destination's incidents end when it
delivers again (the markers are removed), so the next failure is told again; an incident that
never ends is told again after REPEAT_AFTER. At most MAX_PER_WINDOW messages leave a machine
per WINDOW, whatever happens. The URL is a secret: it is never logged, shown or put in an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson

from ..settings import Settings

log = logging.getLogger("tagserver.alerts")

REPEAT_AFTER = 24 * 3600.0  # an incident that never ends is told again once a day
WINDOW = 600.0
MAX_PER_WINDOW = 10  # messages per machine per WINDOW, all incidents together
CHECK_RESOLVED_EVERY = 30.0  # a healthy destination looks for markers to clear this often
TIMEOUT = 10.0


class Alerts:
    """Tells the operator's webhook about incidents, once each. Does nothing without a URL."""

    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None):
        self.url = settings.alert_webhook_url.strip()
        self.dir = Path(settings.data_dir) / "alerts"
        self.host = socket.gethostname()
        self._transport = transport
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._checked: dict[str, float] = {}  # destination → when its markers were last looked at
        self._asking: set[str] = set()  # incidents whose markers this process is asking now

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.enabled:
            self.dir.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=TIMEOUT)

    # -- what the server reports

    def dead_lettering(self, destination: str, count: int, error: str, code: str) -> None:
        detail = f": {error}" + (f" (code {code})" if code else "") if error else ""
        self.notify(
            f"dead:{destination}",
            f"{destination} is dead-lettering: {count} message{'s' if count != 1 else ''} "
            f"will not be delivered{detail}. Fix the cause, then retry them from "
            "/preview/status or with `tagserver outbox retry`.",
        )

    def token_refused(self, destination: str, error: str, code: str) -> None:
        detail = f" (code {code})" if code else ""
        self.notify(
            f"auth:{destination}",
            f"{destination} refused the access token or key{detail}: {error}. Set a valid "
            "one, reload, then retry the dead letters.",
        )

    def reload_refused(self, digest: str, path: str, problems: list[str]) -> None:
        first = problems[0] if problems else "invalid"
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        self.notify(
            f"reload:{digest}",
            f"the edited container file {path} was refused; the running container stays. "
            f"{first}{more}. Run `tagserver validate`.",
        )

    def delivered(self, destination: str) -> None:
        """`destination` delivered again: its incidents are over (looked at twice a minute)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._checked.get(destination, -CHECK_RESOLVED_EVERY) < CHECK_RESOLVED_EVERY:
            return
        self._checked[destination] = now
        for kind in ("dead", "auth"):
            marker = self._marker(f"{kind}:{destination}")
            if marker.exists():
                with contextlib.suppress(OSError):
                    marker.unlink()
                log.info("alert incident over: %s delivers again", destination)

    # -- sending

    def notify(self, key: str, text: str) -> None:
        """Send `text` unless this incident was told already; safe from any thread."""
        if not self.enabled or self._loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._start(key, text)
        else:
            self._loop.call_soon_threadsafe(self._start, key, text)

    def _start(self, key: str, text: str) -> None:
        # a batch of 1000 refused messages reports 1000 times at once: ask the markers once
        if key in self._asking:
            return
        self._asking.add(key)
        task = asyncio.create_task(self._notify(key, text), name="alert-webhook")
        self._tasks.add(task)

        def forget(done: asyncio.Task[None]) -> None:
            self._tasks.discard(done)
            self._asking.discard(key)

        task.add_done_callback(forget)

    async def _notify(self, key: str, text: str) -> None:
        if not await asyncio.to_thread(self._claim, key):
            return
        body = orjson.dumps({"text": f"tagserver ({self.host}): {text}"})
        try:
            async with httpx.AsyncClient(timeout=TIMEOUT, transport=self._transport) as client:
                response = await client.post(
                    self.url, content=body, headers={"content-type": "application/json"}
                )
            if response.status_code >= 300:
                log.warning("alert webhook answered HTTP %d", response.status_code)
                return
            log.info("alert sent: %s", key)
        except Exception as exc:  # the URL is a secret: only the kind of failure is told
            log.warning("alert webhook failed: %s", type(exc).__name__)

    def _marker(self, key: str) -> Path:
        return self.dir / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".sent")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.dir / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _claim(self, key: str) -> bool:
        """True when this process is the one to tell incident `key` (then marked as told)."""
        marker = self._marker(key)
        now = time.time()
        with self._locked():
            try:
                if now - marker.stat().st_mtime < REPEAT_AFTER:
                    return False
            except FileNotFoundError:
                pass
            sent = self.dir / ".sent"
            try:
                recent = [float(t) for t in sent.read_text().split() if now - float(t) < WINDOW]
            except (OSError, ValueError):
                recent = []
            if len(recent) >= MAX_PER_WINDOW:
                log.warning("alert not sent (%d already in %.0f s): %s", len(recent), WINDOW, key)
                return False
            sent.write_text(" ".join(str(t) for t in [*recent, now]))
            marker.write_text(key)
        return True
