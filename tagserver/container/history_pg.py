"""Container history in PostgreSQL: one history for every instance that shares the outbox's
database (`TAGSERVER_OUTBOX_URL`), whatever machine or data dir each one runs on.

Same semantics as `SQLiteHistory`: an entry only when the hash or the verdict differs from the
newest one, the last `KEEP` kept. Each write is one transaction under an advisory lock, so
instances that all see the same edit record it once. Its own table and schema version
(`tagserver_history`, `tagserver_history_schema`), migrated like the outbox's under a lock of
its own.

Driver: asyncpg, already a dependency (the outbox's), run on a private event loop in a thread
of its own. The history is called from sync code (the reload thread, `create_app`, the CLI),
and `create_app` may run inside uvicorn's loop, where `run_until_complete` is impossible: a
loop thread serves calls from any thread. A sync driver would be a second PostgreSQL client
to install and keep in step for a handful of statements per container change. Each call opens
its own connection: calls are rare (one per change), so nothing is kept that could go stale
while PostgreSQL restarts.

PostgreSQL unreachable: every call raises `HistoryUnavailable`, whose message names the URL
without its password; the reload path logs it as a warning and goes on serving.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import asyncpg

from ..delivery.outbox_pg import Scrubber, is_connection_problem, safe_url
from .history import KEEP, Entry, HistoryUnavailable, content_hash

T = TypeVar("T")

SCHEMA_VERSION = 1
LOCK_ID = 0x7461_6773_6869  # pg_advisory_xact_lock key: "tagshi", the history's migrations
WRITE_LOCK_ID = 0x7461_6773_6877  # "tagshw": one history writer at a time
TABLE = "tagserver_history"
COLUMNS = "id, status, hash, name, version, at, source, raw, problems"

MIGRATIONS = [
    f"""
    CREATE TABLE IF NOT EXISTS {TABLE} (
        id BIGSERIAL PRIMARY KEY,
        status TEXT NOT NULL,
        hash TEXT NOT NULL,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        source TEXT NOT NULL,
        raw BYTEA NOT NULL,
        problems TEXT NOT NULL           -- JSON list
    )
    """,
]


async def migrate(conn: asyncpg.Connection) -> int:
    """Create or upgrade the history's schema; safe when many instances start at once."""
    async with conn.transaction():
        await conn.execute(f"SELECT pg_advisory_xact_lock({LOCK_ID})")
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE}_schema (version INTEGER NOT NULL)")
        version = await conn.fetchval(f"SELECT max(version) FROM {TABLE}_schema") or 0
        if version > SCHEMA_VERSION:
            raise HistoryUnavailable(
                f"the container history in PostgreSQL has schema version {version}, newer "
                f"than this tagserver's {SCHEMA_VERSION}: upgrade tagserver"
            )
        for step in range(version, SCHEMA_VERSION):
            await conn.execute(MIGRATIONS[step])
        if version < SCHEMA_VERSION:
            await conn.execute(f"DELETE FROM {TABLE}_schema")
            await conn.execute(f"INSERT INTO {TABLE}_schema VALUES ($1)", SCHEMA_VERSION)
        return SCHEMA_VERSION


class PgHistory:
    """The container history in the PostgreSQL database at `url`."""

    def __init__(self, url: str, timeout: float = 5.0, keep: int = KEEP) -> None:
        self.url = url.strip()
        self.where = f"PostgreSQL {safe_url(self.url)}"
        self.timeout = max(0.5, timeout)
        self.keep = keep
        self.scrub = Scrubber(self.url)
        self._migrated = False
        self._lock = threading.Lock()  # one call at a time (and one loop thread)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    # -- the private loop

    def _run(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        with self._lock:
            loop = self._loop
            if loop is None or self._pid != os.getpid():  # a forked child has no loop thread
                self._pid = os.getpid()
                loop = self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=loop.run_forever, name="history-pg", daemon=True
                )
                self._thread.start()
            future = asyncio.run_coroutine_threadsafe(self._call(work), loop)
            try:
                return future.result(self.timeout * 3)
            except HistoryUnavailable:
                raise
            except Exception as exc:
                future.cancel()
                raise self._unavailable(exc) from None

    async def _call(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        conn = await asyncpg.connect(
            self.url,
            timeout=self.timeout,
            command_timeout=self.timeout,
            server_settings={"application_name": "tagserver-history"},
        )
        try:
            if not self._migrated:
                await migrate(conn)
                self._migrated = True
            return await work(conn)
        finally:
            await conn.close(timeout=self.timeout)

    def _unavailable(self, exc: BaseException) -> HistoryUnavailable:
        reason = f"{type(exc).__name__}: {self.scrub(str(exc))}".rstrip(": ")
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {self.timeout:g} s"
        what = "cannot reach" if is_connection_problem(exc) else "failed to use"
        return HistoryUnavailable(f"{what} the container history in {self.where}: {reason}")

    # -- History

    def record(
        self,
        status: str,
        raw: bytes,
        source: str,
        name: str = "",
        version: str = "",
        problems: Iterable[str] = (),
    ) -> Entry | None:
        digest = content_hash(raw)
        problem_list = list(problems)

        async def work(conn: asyncpg.Connection) -> Entry | None:
            async with conn.transaction():
                await conn.execute(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_ID})")
                newest = await conn.fetchrow(
                    f"SELECT hash, status FROM {TABLE} ORDER BY id DESC LIMIT 1"
                )
                if newest is not None and (newest["hash"], newest["status"]) == (digest, status):
                    return None
                at = time.time()
                entry_id = int(
                    await conn.fetchval(
                        f"INSERT INTO {TABLE} (status, hash, name, version, at, source, raw,"
                        " problems) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                        status,
                        digest,
                        name,
                        version,
                        at,
                        source,
                        raw,
                        json.dumps(problem_list),
                    )  # fmt: skip
                )
                await conn.execute(f"DELETE FROM {TABLE} WHERE id <= $1", entry_id - self.keep)
            return Entry(
                entry_id, status, digest, name, version, at, source, raw, tuple(problem_list)
            )

        return self._run(work)

    def entries(self, limit: int | None = None) -> list[Entry]:
        async def work(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            rows = await conn.fetch(
                f"SELECT {COLUMNS} FROM {TABLE} ORDER BY id DESC LIMIT $1", limit
            )
            return list(rows)

        return [_entry(row) for row in self._run(work)]

    def get(self, entry_id: int) -> Entry | None:
        async def work(conn: asyncpg.Connection) -> asyncpg.Record | None:
            row: asyncpg.Record | None = await conn.fetchrow(
                f"SELECT {COLUMNS} FROM {TABLE} WHERE id = $1", entry_id
            )
            return row

        row = self._run(work)
        return _entry(row) if row is not None else None

    def check(self) -> None:
        """Reach the database (and create the table): raises HistoryUnavailable if it cannot."""

        async def work(conn: asyncpg.Connection) -> None:
            await conn.execute("SELECT 1")

        self._run(work)

    def close(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(self.timeout)
            if not thread.is_alive():
                loop.close()


def _entry(row: Any) -> Entry:
    return Entry(
        int(row["id"]), row["status"], row["hash"], row["name"], row["version"],
        float(row["at"]), row["source"], bytes(row["raw"]), tuple(json.loads(row["problems"])),
    )  # fmt: skip
