"""The outbox: where a hit's outgoing messages wait, durably, until they are delivered.

SQLite in WAL mode under the data dir (`outbox_store`). Writes are grouped: every `put` made
while the previous commit runs goes into the next transaction, and each hit waits only for
the commit that holds its messages. So a 2xx to a hit means its messages are on disk, and one
fsync is shared by everything that arrived in the meantime.

Commits happen in a writer process (`outbox_writer`), so that SQLite never holds this
process's GIL: the event loop sends each loop iteration's writes as one frame and resolves
the hits' futures when the commit's reply comes back. The writer takes every frame that has
arrived while it committed into its next commit, so it never waits for the loop to start one.

The dispatcher's bookkeeping (claims, settlements) goes through the same writer, so it shares
the group commits instead of competing with hits for the SQLite write lock. Reads (the
dispatcher's polls, metrics) use a connection of their own in a thread: WAL readers never
block the writer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from .. import metrics
from ..errors import Unavailable
from ..plugins import Message, Outgoing
from ..settings import Settings
from . import outbox_store
from .delivery_counts import CountRow
from .delivery_types import Destination, Due, RowValues, Settlement
from .outbox_store import Store, connect, database_path, is_disk_full
from .outbox_types import Claim, Routes, over_limit, split
from .outbox_writer import Job, WriterProcess, request_frame

T = TypeVar("T")

__all__ = ["Claim", "Outbox", "Settlement", "SqliteAdmin", "Store", "database_path"]

log = logging.getLogger("tagserver.outbox")

RESTART_AFTER = 1.0  # seconds between a writer process that died and its replacement
RESTART_RETRY = 5.0  # seconds between attempts while a new writer cannot start
DISK_FULL_HOLD = 30.0  # seconds /healthz reports a full disk after a commit failed with it


@dataclass
class _Group:
    """Writes made during one loop iteration: one frame to the writer process."""

    rows: list[RowValues] = field(default_factory=list)
    waiters: list[asyncio.Future[list[int]]] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)  # rows each waiter put
    jobs: list[Job] = field(default_factory=list)
    results: list[asyncio.Future[Any]] = field(default_factory=list)


def _not_stored(exc: Exception) -> Unavailable:
    """The 503 for hits whose commit failed with `exc` (logged here, once per commit)."""
    if is_disk_full(exc):
        log.error("outbox commit failed, disk full: %s", exc)
        return Unavailable(
            "the disk holding the outbox is full; nothing was stored, retry later",
            retry_after=60,
        )
    log.error("outbox commit failed: %s: %s", type(exc).__name__, exc)
    return Unavailable(
        "the outbox could not store the messages; nothing was stored, retry later",
        retry_after=10,
    )


class Outbox:
    """Durable store for outgoing messages, with group commit and backpressure."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = database_path(settings.data_dir)
        self.pending = 0  # all workers' pending messages, as of the last commit or poll
        # the dispatcher's bell: the destinations a commit added messages to, by id
        self.on_commit: Callable[[dict[int, Destination]], None] | None = None
        self._writer: WriterProcess | None = None
        self._next = _Group()  # filled by this loop iteration's puts and jobs
        self._flush_scheduled = False
        self._sent: dict[int, _Group] = {}  # sent to the writer, not committed yet
        self._seq = 0
        # both made by start(), before anything is put: the first is set while nothing is
        # waiting for a commit
        self._drained: asyncio.Event
        self._queued_rows = 0  # rows put but not yet committed (for the size limit)
        self._reader: Store | None = None
        self._loop: asyncio.AbstractEventLoop
        self._maintenance: asyncio.Task[None] | None = None
        self._restarting: asyncio.Task[None] | None = None
        self._broken: str | None = None  # why no writer could be started, while that lasts
        self._reader_pool = ThreadPoolExecutor(1, thread_name_prefix="outbox-reader")
        self._free_bytes: int | None = None
        self._low_disk = False
        self._full_since: float | None = None  # monotonic time of a commit lost to a full disk
        self._open = False

    # -- lifecycle

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self.settings.data_path  # noqa: B018 - creates the directory
        self._drained = asyncio.Event()
        self._drained.set()
        self.pending = await self._start_writer()
        self._reader = await loop.run_in_executor(
            self._reader_pool, Store, connect(self.path, self.settings.outbox_sync)
        )
        self._check_disk()
        self._open = True
        self._maintenance = asyncio.create_task(self._maintain(), name="outbox-maintenance")
        log.info("outbox %s: %d messages pending", self.path, self.pending)

    async def _start_writer(self) -> int:
        writer = WriterProcess(
            self.path, self.settings.outbox_sync, self._committed, self._writer_lost
        )
        pending = await writer.start()
        self._writer = writer
        if self._next.rows or self._next.jobs:
            self._schedule_flush()
        return pending

    async def close(self) -> None:
        """Commit what is queued, then close. Later `put`s get 503."""
        if not self._open:
            return
        self._open = False
        for task in (self._maintenance, self._restarting):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        while self._writer is not None and (self._sent or self._next.rows or self._next.jobs):
            self._flush()
            await self._drained.wait()
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        self._fail_unsent(RuntimeError("the outbox is closed"))
        loop = asyncio.get_running_loop()
        if self._reader is not None:
            await loop.run_in_executor(self._reader_pool, self._reader.close)
        self._reader_pool.shutdown(wait=True)

    @property
    def where(self) -> str:
        return f"SQLite {self.path}"

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def problem(self) -> str | None:
        """Why a hit would be refused now (for /healthz), or None: the same reasons `put`
        gives, so a load balancer stops sending hits exactly while they would get 503."""
        if not self._open:
            return "the outbox is closed"
        if self._broken is not None:
            return self._broken
        if self._full_since is not None:
            if time.monotonic() - self._full_since < DISK_FULL_HOLD:
                return "the disk holding the outbox is full (the last commit failed)"
            self._full_since = None  # let hits try again: the next commit tells
        refusal = self._refusal(1)
        return refusal.reason if refusal is not None else None

    # -- the hit path

    async def put(self, messages: list[Outgoing]) -> list[int]:
        """Store `messages`; returns once they are committed, with the indices of those not
        stored because the same destination and dedup id is pending or was delivered within
        48 hours. Raises `Unavailable` (→ 503)."""
        if not messages:
            return []
        if not self._open:
            raise Unavailable("the server is starting or stopping; retry shortly", retry_after=5)
        if self._broken is not None:
            raise Unavailable(f"{self._broken}; nothing was stored, retry later", retry_after=5)
        if (
            self.pending + self._queued_rows + len(messages) > self.settings.outbox_max_messages
            or self._low_disk
        ):
            refusal = self._refusal(len(messages))
            if refusal is not None:
                raise refusal  # saying which limit was hit
        dumps = orjson.dumps
        group = self._next
        group.rows += [
            (  # an OutboxRow's fields (a plain tuple travels cheaper: see OutboxRow)
                m.destination,
                m.tag_type,
                m.route,
                dumps(m.payload, default=str).decode(),
                m.dedup_id,
                m.tag_name,
                m.created_at,
                m.deadline,
                m.trace_id,
                m.secrets,
            )
            for m in messages
        ]
        waiter: asyncio.Future[list[int]] = self._loop.create_future()
        group.waiters.append(waiter)
        group.counts.append(len(messages))
        if not self._flush_scheduled:
            self._schedule_flush()
        self._queued_rows += len(messages)
        try:
            return await waiter
        finally:
            self._queued_rows -= len(messages)

    def _refusal(self, incoming: int) -> Unavailable | None:
        """The 503 for `incoming` more messages while the outbox or its disk is full."""
        full = over_limit(self.pending + self._queued_rows, incoming, self.settings)
        if full is not None:
            return full
        free = self._free_bytes
        if free is not None and free < self.settings.outbox_min_free_bytes:
            return Unavailable(
                f"the disk holding the outbox has {free // 1_048_576} MiB free, below the "
                f"minimum of {self.settings.outbox_min_free_bytes // 1_048_576} MiB; retry later",
                retry_after=60,
            )
        return None

    def _check_disk(self) -> None:
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return
        self._free_bytes = st.f_bavail * st.f_frsize
        self._low_disk = self._free_bytes < self.settings.outbox_min_free_bytes

    # -- to and from the writer process

    def _schedule_flush(self) -> None:
        self._flush_scheduled = True
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send what this loop iteration put and queued: one frame, one commit at most."""
        self._flush_scheduled = False
        group = self._next
        if self._writer is None or self._writer.transport is None:
            return  # the writer is restarting; it takes the group once it is ready
        if not group.rows and not group.jobs:
            return
        self._next = _Group()
        self._seq += 1
        try:
            data = request_frame(self._seq, group.rows, group.jobs)
        except Exception as exc:  # a job that cannot travel (not a module-level function)
            self._fail(group, exc)
            return
        self._sent[self._seq] = group
        self._drained.clear()
        self._writer.send(data)

    def _committed(self, reply: tuple[str, list[int], Any, float]) -> None:
        """A commit is done: wake its hits and jobs."""
        _, seqs, outcome, elapsed = reply
        groups = [self._sent.pop(seq) for seq in seqs]
        if not self._sent:
            self._drained.set()
        if isinstance(outcome, Exception):
            if is_disk_full(outcome):
                self._full_since = time.monotonic()
            for group in groups:
                self._fail(group, outcome)
            return
        touched, results, pending, repeats = outcome
        metrics.observe(metrics.OUTBOX_COMMIT, elapsed)
        rows = 0
        for seq, group in zip(seqs, groups, strict=True):
            rows += len(group.rows) - len(repeats.get(seq, ()))
            mine_all = split(repeats.get(seq), group.counts)
            for waiter, mine in zip(group.waiters, mine_all, strict=True):
                if not waiter.done():
                    waiter.set_result(mine)
            for future, (ok, value) in zip(group.results, results.get(seq, ()), strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        self.pending = self.pending + rows if pending is None else pending
        if rows:
            self._full_since = None  # messages fit on the disk again
        if touched and self.on_commit is not None:
            try:
                self.on_commit(touched)
            except Exception:
                log.exception("outbox commit listener failed")

    def _writer_lost(self, reason: str) -> None:
        """The writer process died: what it had not answered may or may not be on disk."""
        log.error("%s; %d commits were unanswered", reason, len(self._sent))
        lost = RuntimeError(reason)
        unconfirmed = Unavailable(
            "the outbox stopped before confirming the write; retry (the same event id makes"
            " a repeat harmless)",
            retry_after=1,
        )
        for group in self._sent.values():
            self._fail(group, lost, unconfirmed)
        self._sent.clear()
        self._drained.set()
        self._writer = None
        if self._open:
            self._restarting = asyncio.create_task(self._restart(), name="outbox-writer-restart")

    async def _restart(self) -> None:
        """A new writer, 1 s after the last one died, then every 5 s while that fails.
        Meanwhile hits wait for it; once an attempt has failed, they get 503 at once."""
        await asyncio.sleep(RESTART_AFTER)
        while self._open:
            try:
                self.pending = await self._start_writer()
            except Exception as exc:
                self._broken = f"the outbox writer cannot start ({exc})"
                log.error("%s; trying again in %.0f s", self._broken, RESTART_RETRY)
                self._fail_unsent(RuntimeError(self._broken))
                await asyncio.sleep(RESTART_RETRY)
            else:
                if self._broken is not None:
                    log.info("the outbox writer is back")
                self._broken = None
                return

    def _fail_unsent(self, exc: Exception) -> None:
        group, self._next = self._next, _Group()
        if group.waiters or group.results:
            self._fail(group, exc)

    def _fail(self, group: _Group, exc: Exception, error: Unavailable | None = None) -> None:
        """Tell a group's hits (`error`, a 503) and jobs (`exc`) that its commit failed."""
        if error is None:
            error = _not_stored(exc)
        for waiter in group.waiters:
            if not waiter.done():
                waiter.set_exception(error)
        for future in group.results:
            if not future.done():
                future.set_exception(exc)

    async def run(self, job: Callable[..., Any], *args: Any) -> Any:
        """Run `job(store, now, *args)` inside the next group commit; its result once committed.

        `job` runs in the writer process: a module-level function, found there by name."""
        if not self._open and self._writer is None:
            raise RuntimeError("the outbox is not running")
        if self._broken is not None:
            raise RuntimeError(self._broken)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._next.jobs.append((job, args))
        self._next.results.append(future)
        if not self._flush_scheduled:
            self._schedule_flush()
        return await future

    # -- the dispatcher's side (through the writer, so it shares group commits)

    async def claim(self, destination_id: int, worker: str, limit: int) -> Claim:
        lease = self.settings.outbox_lease_seconds
        claimed = await self.run(outbox_store.claim, destination_id, worker, limit, lease)
        claim = Claim(
            route=claimed.route, messages=[], next_due=claimed.next_due, secrets=claimed.secrets
        )
        key = claimed.key
        rows = orjson.loads(claimed.rows)
        rows.sort(key=lambda r: r[0])
        for mid, payload, dedup_id, attempts, created, deadline, trace_id, tag_name in rows:
            claim.messages.append(
                Message(mid, key, payload, dedup_id, attempts, created, deadline, trace_id)
            )
            claim.tag_names[mid] = tag_name
        return claim

    async def settle(self, worker: str, plan: Settlement) -> None:
        await self.run(outbox_store.settle, worker, plan)

    async def extend(self, worker: str, ids: list[int]) -> None:
        await self.run(outbox_store.extend, worker, ids, self.settings.outbox_lease_seconds)

    async def release(self, worker: str, ids: list[int]) -> None:
        await self.run(outbox_store.release, worker, ids)

    # -- reads, on their own connection (WAL: readers never block the writer)

    async def read(self, fn: Callable[[Store], T]) -> T:
        if self._reader is None:
            raise RuntimeError("the outbox is not started")
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, fn, self._reader)

    async def due(self) -> list[Due]:
        return await self.read(Store.due)

    async def stats(self) -> list[dict[str, Any]]:
        return await self.read(lambda store: store.stats(time.time()))

    async def _maintain(self) -> None:
        """Once a second: free disk, pending count (other workers, CLI), WAL checkpoint;
        once a minute: forget dedup ids delivered before the window."""
        ticks = 0
        while True:
            await asyncio.sleep(1.0)
            ticks += 1
            try:
                self._check_disk()
                self.pending = await self.read(self._refresh)
                if ticks % 60 == 1:
                    await self.run(outbox_store.forget_delivered)
            except Exception:
                log.exception("outbox maintenance failed")

    @staticmethod
    def _refresh(store: Store) -> int:
        try:
            store.checkpoint()
        except sqlite3.Error as exc:
            log.debug("checkpoint skipped: %s", exc)
        return store.pending_total()


class SqliteAdmin:
    """The SQLite outbox for `tagserver outbox …`: safe while the server runs (WAL)."""

    def __init__(self, settings: Settings) -> None:
        path = database_path(settings.data_dir)
        if not path.exists():
            raise LookupError(
                f"no outbox at {path} (is --data-dir / TAGSERVER_DATA_DIR the server's?)"
            )
        self.where = f"SQLite {path}"
        self.store = Store.open(path)

    def stats(self, now: float, *, in_flight: bool = False) -> list[dict[str, Any]]:
        return self.store.stats(now, in_flight=in_flight)

    def dead_letters(
        self, destination: str | None = None, limit: int = 100, ids: Sequence[int] = ()
    ) -> list[dict[str, Any]]:
        return self.store.dead_letters(destination, limit, ids)

    def count_past_deadline(self, destination: str | None, ids: Sequence[int], now: float) -> int:
        return self.store.count_past_deadline(destination, ids, now)

    def requeue(
        self,
        destination: str | None,
        ids: Sequence[int],
        now: float,
        routes: Routes | None = None,
    ) -> list[dict[str, Any]]:
        store = self.store
        return store.transaction(lambda: store.requeue(destination, ids, now, routes))

    def purge(self, *, pending: bool, dead: bool, destination: str | None = None) -> int:
        store = self.store
        work = lambda: store.purge(pending=pending, dead=dead, destination=destination)  # noqa: E731
        return store.transaction(work)

    def delivery_counts(self, since: int, fine_since: int) -> list[CountRow]:
        return self.store.delivery_counts(since, fine_since)

    def close(self) -> None:
        self.store.close()
