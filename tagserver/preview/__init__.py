"""Preview mode: see, live in the browser, what every hit did and why.

    session_for(request, headers)  on every hit: its preview session, or None (free)
    record_hit(trace)              a previewed hit's trace, queued for the writer (no I/O)
    record_delivery(...)           a previewed message's delivery result, queued likewise

`preview.routes.preview_routes(preview, server)` serves the /preview pages, JSON endpoints and
the live stream (SSE); the app hands it what it needs from the running server.

A background writer scrubs, bounds and stores queued records in the shared store (SQLite
for the workers of one machine, Redis across machines), off the hit's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from ..redact import Redactor
from ..serving import base_url
from ..settings import Settings
from .auth import Auth, login_token, new_login_token
from .recording import prepare_delivery, prepare_hit
from .sessions import Sessions
from .store import Store, open_store, sweep_orphans

log = logging.getLogger("tagserver.preview")

HEADER = "x-tagserver-preview"
PARAM = "tagserver_preview"
COOKIE = "tagserver_preview"
MAX_QUEUE = 10_000  # records waiting for the writer; beyond it the oldest are dropped
PRUNE_SECONDS = 3600.0
UNKNOWN_DELIVERY_SECONDS = 30.0  # a delivery may come before its hit is written; wait this long


def raw_token(scope: dict[str, Any], headers: dict[str, str]) -> str | None:
    """The preview token a request carries, if any: header, query parameter, then cookie.

    `headers` are the hit's, decoded by lower-case name. Plain lookups first, so a hit
    without any of them costs a few comparisons.
    """
    token = headers.get(HEADER)
    if token is not None:
        return token.strip()
    cookie = headers.get("cookie", "")
    cookie_header = cookie if "tagserver_preview=" in cookie else None
    query = scope.get("query_string", b"")
    if b"tagserver_preview=" in query:
        for key, value in parse_qsl(query.decode("latin-1")):
            if key == PARAM and value:
                return value
    if cookie_header is not None:
        jar: SimpleCookie = SimpleCookie()
        with contextlib.suppress(Exception):
            jar.load(cookie_header)
        if COOKIE in jar:
            return jar[COOKIE].value
    return None


class Preview:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: Store = open_store(settings)
        self.sessions = Sessions(settings, self.store)
        self.auth = Auth(settings, self.store)
        self.redactor = Redactor(settings.secret_values())
        self._queue: deque[tuple[str, Any, float]] = deque(maxlen=MAX_QUEUE)
        self._wake: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._store_errors = 0

    # -- the hit path: cheap, no I/O for hits that are not previewed

    def session_for(self, request: Request, headers: dict[str, str]) -> str | None:
        """The preview session this hit belongs to, or None (the common, free case)."""
        token = raw_token(request.scope, headers)
        if not token:
            return None
        try:
            return self.sessions.live_session(token)
        except Exception as exc:  # the store is down: the hit goes on, unpreviewed
            self._store_failed("checking a preview token", exc)
            return None

    def record_hit(self, trace: dict[str, Any]) -> None:
        self._enqueue("hit", trace)

    def record_delivery(self, trace_id: str, delivery: dict[str, Any]) -> None:
        """Called by the dispatcher after each send attempt of a previewed message."""
        if trace_id:
            self._enqueue("delivery", (trace_id, delivery))

    def _enqueue(self, kind: str, item: Any) -> None:
        self._queue.append((kind, item, time.monotonic()))
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:  # a sender thread: hand the wake-up to the loop
            loop.call_soon_threadsafe(wake.set)

    # -- the writer

    async def _write_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0.01)  # gather what arrives together into one transaction
            await self._flush()

    async def _flush(self) -> None:
        if not self._queue:
            return
        batch = list(self._queue)
        self._queue.clear()
        try:
            retry = await asyncio.to_thread(self._write, batch)
        except Exception as exc:
            self._store_failed("storing previewed hits", exc)
            return
        if retry:  # deliveries whose hit is not stored yet: try again shortly
            self._queue.extendleft(reversed(retry))
            asyncio.get_running_loop().call_later(0.3, self._poke)
        self._notify()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _write(self, batch: list[tuple[str, Any, float]]) -> list[tuple[str, Any, float]]:
        hits = [prepare_hit(item, self.redactor) for kind, item, _ in batch if kind == "hit"]
        self.store.add_hits([h for h in hits if h[0]])
        deliveries = [(kind, item, at) for kind, item, at in batch if kind == "delivery"]
        if not deliveries:
            return []
        unknown = self.store.add_deliveries(
            [(tid, prepare_delivery(d, self.redactor)) for _, (tid, d), _ in deliveries]
        )
        cutoff = time.monotonic() - UNKNOWN_DELIVERY_SECONDS
        return [deliveries[i] for i in unknown if deliveries[i][2] > cutoff]

    def _notify(self) -> None:
        """Wake this worker's live streams now (other workers' streams poll the store)."""
        changed, self._changed = self._changed, asyncio.Event()
        if changed is not None:
            changed.set()

    def changed(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    @property
    def stopping(self) -> bool:
        return self._stopping is not None and self._stopping.is_set()

    def _store_failed(self, doing: str, exc: Exception) -> None:
        self._store_errors += 1
        if self._store_errors in (1, 10, 100) or self._store_errors % 1000 == 0:
            log.error(
                "preview store failed while %s (%d times): %s: %s",
                doing, self._store_errors, type(exc).__name__, self.redactor.text(str(exc)),
            )  # fmt: skip

    # -- lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._changed = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop(), name="preview-writer")
        self._pruner = asyncio.create_task(self._prune_loop(), name="preview-pruner")
        self._watch_shutdown_signals()
        if self._queue:
            self._wake.set()
        if not self.settings.preview_password:
            token, created = login_token(self.settings)
            if created:  # started without `tagserver serve` (which announces it): say it once
                log.warning(
                    "preview: sign in at %s/preview/login?token=%s", self.settings.root_path, token
                )

    async def _prune_loop(self) -> None:
        """Forget sessions a day after they expired, now and every hour."""
        while True:
            try:
                await asyncio.to_thread(self.store.prune)
                await asyncio.to_thread(sweep_orphans)
            except Exception as exc:
                self._store_failed("pruning old sessions", exc)
            await asyncio.sleep(PRUNE_SECONDS)

    def _watch_shutdown_signals(self) -> None:
        """End live streams as soon as the server is asked to stop.

        uvicorn waits for open responses before it runs the app's shutdown, and a live
        stream never ends on its own: without this, every open preview tab would hold a
        restart for the whole graceful-shutdown timeout.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        loop, stopping = self._loop, self._stopping
        assert loop is not None and stopping is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            if not callable(previous):
                continue

            def chained(signum: int, frame: Any, _previous: Callable[..., Any] = previous) -> None:
                loop.call_soon_threadsafe(stopping.set)
                _previous(signum, frame)

            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, chained)

    async def close(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        for task in (self._writer, self._pruner):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._writer = self._pruner = None
        with contextlib.suppress(Exception):
            await self._flush()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.store.close)


def announce(settings: Settings) -> None:
    """Print where to sign in to preview; runs once in the parent before workers start.

    Without TAGSERVER_PREVIEW_PASSWORD a fresh sign-in token is made at every start and
    written to the data dir, where every worker reads the same one.
    """
    base = base_url(settings)
    if settings.preview_password:
        print(
            f"tagserver preview: {base}/preview (sign in with TAGSERVER_PREVIEW_PASSWORD)",
            file=sys.stderr,
            flush=True,
        )
        return
    token = new_login_token(settings)
    print(
        f"tagserver preview: open {base}/preview/login?token={token}\n"
        f"  (behind your proxy: https://<your tagging domain>{settings.root_path}/preview/login"
        f"?token={token}; "
        "the token changes at every start and with `tagserver preview link` - set "
        "TAGSERVER_PREVIEW_PASSWORD for a fixed one)",
        file=sys.stderr,
        flush=True,
    )


__all__ = ["Preview", "announce", "login_token", "raw_token"]
