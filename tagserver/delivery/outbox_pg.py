"""The PostgreSQL outbox: one outbox shared by every instance (`TAGSERVER_OUTBOX_URL`).

Same contract as the SQLite outbox: a 2xx to a hit means its messages are committed. Writes
are grouped: every `put` made while the previous commit runs goes into the next one, one
transaction and one multi-row INSERT (`unnest` of arrays) per group, never one per event.

Any instance delivers any message. A claim takes due messages with `FOR UPDATE SKIP LOCKED`
and leases them (`claimed_by`, `lease_until`, on the database's clock, so the machines' clocks
do not matter); a dispatcher extends its leases while it sends. When an instance dies its
leases run out and another instance claims the messages: a message is sent twice only if it
was in flight at the death. Two live instances never hold the same message.

Driver: asyncpg. It speaks PostgreSQL's binary protocol from the event loop (no thread per
query, no GIL hand-off), passes arrays natively (one statement for a whole group), and is
well kept. Unlike SQLite, committing here is network I/O that waits off the GIL, so no writer
process is needed: the group commit runs as a task on the server's own loop.

PostgreSQL unreachable or slower than `TAGSERVER_OUTBOX_TIMEOUT_SECONDS`: hits get 503 with
Retry-After (nothing of theirs was acknowledged), `/healthz` says why, and a task probes the
database every second until it answers. The URL's password never leaves this module: logs,
`/healthz` and errors show the URL without it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import asyncpg.pool
import orjson

from .. import metrics
from ..errors import Unavailable
from ..plugins import Message, Outgoing
from ..settings import Settings
from .delivery_counts import KEEP_SECONDS, CountRow, bucket_of
from .delivery_types import Settlement
from .outbox_store import DEDUP_WINDOW, duplicates, last_try
from .outbox_types import Claim, Routes, over_limit, split

log = logging.getLogger("tagserver.outbox")

T = TypeVar("T")
# a connection of its own (CLI) or one lent by the pool (server)
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

SCHEMA_VERSION = 3  # 2: destinations.secrets; 3: tagserver_outbox_counts
LOCK_ID = 0x7461_6773_6F62  # pg_advisory_xact_lock key: "tagsob", the outbox's migrations
PROBE_SECONDS = 1.0  # between probes while PostgreSQL is unreachable
NOW = "extract(epoch FROM clock_timestamp())"  # the database's clock, in unix seconds

# Each step takes the schema from version i to i + 1; they run in one transaction under an
# advisory lock, so instances starting together take turns and the second finds it done.
MIGRATIONS = [
    """
    CREATE TABLE IF NOT EXISTS tagserver_outbox_destinations (
        id BIGSERIAL PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,            -- safe to show: tag type + non-secret identity
        tag_type TEXT NOT NULL,
        route TEXT NOT NULL,                 -- JSON; holds secrets; never shown
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE IF NOT EXISTS tagserver_outbox_messages (
        id BIGSERIAL PRIMARY KEY,
        destination_id BIGINT NOT NULL,
        payload TEXT NOT NULL,               -- JSON
        dedup_id TEXT NOT NULL,
        tag_name TEXT NOT NULL DEFAULT '',
        created_at DOUBLE PRECISION NOT NULL,
        deadline DOUBLE PRECISION,
        trace_id TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        first_attempt_at DOUBLE PRECISION,
        last_attempt_at DOUBLE PRECISION,
        last_status INTEGER,
        last_error TEXT,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        claimed_by TEXT,
        lease_until DOUBLE PRECISION,
        UNIQUE (destination_id, dedup_id)
    );
    CREATE INDEX IF NOT EXISTS tagserver_outbox_messages_due
        ON tagserver_outbox_messages (destination_id, next_attempt_at);
    CREATE INDEX IF NOT EXISTS tagserver_outbox_messages_claimed
        ON tagserver_outbox_messages (claimed_by) WHERE claimed_by IS NOT NULL;
    CREATE TABLE IF NOT EXISTS tagserver_outbox_dead_letters (
        id BIGSERIAL PRIMARY KEY,
        destination_id BIGINT NOT NULL,
        payload TEXT NOT NULL,
        dedup_id TEXT NOT NULL,
        tag_name TEXT NOT NULL DEFAULT '',
        created_at DOUBLE PRECISION NOT NULL,
        deadline DOUBLE PRECISION,
        trace_id TEXT,
        attempts INTEGER NOT NULL,
        first_attempt_at DOUBLE PRECISION,
        last_attempt_at DOUBLE PRECISION,
        status INTEGER,
        error TEXT NOT NULL DEFAULT '',
        code TEXT NOT NULL DEFAULT '',
        trace TEXT NOT NULL DEFAULT '',
        reason TEXT NOT NULL,
        dead_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX IF NOT EXISTS tagserver_outbox_dead_letters_destination
        ON tagserver_outbox_dead_letters (destination_id);
    CREATE TABLE IF NOT EXISTS tagserver_outbox_delivered (
        destination_id BIGINT NOT NULL,
        dedup_id TEXT NOT NULL,
        delivered_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (destination_id, dedup_id)
    );
    CREATE INDEX IF NOT EXISTS tagserver_outbox_delivered_at
        ON tagserver_outbox_delivered (delivered_at);
    """,
    # 2: the route's secret values (its tag's `secret=True` params), redacted by its delivery
    "ALTER TABLE tagserver_outbox_destinations"
    " ADD COLUMN IF NOT EXISTS secrets TEXT NOT NULL DEFAULT '[]'",
    # 3: delivered, retried and dead-lettered per destination and 10-second bucket, added to
    # by every instance's dispatcher (delivery_counts.py); the status page's windows
    """
    CREATE TABLE IF NOT EXISTS tagserver_outbox_counts (
        bucket BIGINT NOT NULL,              -- the bucket's start, unix seconds
        destination_id BIGINT NOT NULL,
        delivered BIGINT NOT NULL DEFAULT 0,
        retried BIGINT NOT NULL DEFAULT 0,
        dead_lettered BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (bucket, destination_id)
    )
    """,
]

D, M, X, V, C = (
    "tagserver_outbox_destinations",
    "tagserver_outbox_messages",
    "tagserver_outbox_dead_letters",
    "tagserver_outbox_delivered",
    "tagserver_outbox_counts",
)

INSERT = f"""
INSERT INTO {M} (destination_id, payload, dedup_id, tag_name, created_at, deadline, trace_id,
                 next_attempt_at)
SELECT v.d, v.p, v.k, v.t, v.c, v.dl, v.tr, $8
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::float8[],
            $7::text[]) WITH ORDINALITY AS v(d, p, k, t, c, dl, tr, n)
WHERE NOT EXISTS (SELECT 1 FROM {V} x
                  WHERE x.destination_id = v.d AND x.dedup_id = v.k AND x.delivered_at > $9)
ORDER BY v.n
ON CONFLICT (destination_id, dedup_id) DO NOTHING
RETURNING destination_id, dedup_id
"""

CLAIM = f"""
WITH c AS (
    SELECT id FROM {M}
    WHERE destination_id = $1 AND next_attempt_at <= {NOW}
    ORDER BY next_attempt_at LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE {M} m SET claimed_by = $3, lease_until = {NOW} + $4, next_attempt_at = {NOW} + $4
FROM c WHERE m.id = c.id
RETURNING m.id, m.payload, m.dedup_id, m.attempts, m.created_at, m.deadline, m.trace_id,
          m.tag_name
"""

DEAD = f"""
INSERT INTO {X} (destination_id, payload, dedup_id, tag_name, created_at, deadline, trace_id,
                 attempts, first_attempt_at, last_attempt_at, status, error, code, trace,
                 reason, dead_at)
SELECT m.destination_id, m.payload, m.dedup_id, m.tag_name, m.created_at, m.deadline,
       m.trace_id, m.attempts + (CASE WHEN d.attempted THEN 1 ELSE 0 END),
       CASE WHEN d.attempted THEN coalesce(m.first_attempt_at, $1) ELSE m.first_attempt_at END,
       CASE WHEN d.attempted THEN $1 ELSE m.last_attempt_at END,
       coalesce(d.status, m.last_status),
       CASE WHEN d.error = '' THEN coalesce(m.last_error, '') ELSE d.error END,
       d.code, d.trace, d.reason, $1
FROM unnest($2::bigint[], $3::bool[], $4::int[], $5::text[], $6::text[], $7::text[],
            $8::text[]) AS d(id, attempted, status, error, code, trace, reason)
JOIN {M} m ON m.id = d.id
WHERE m.claimed_by = $9
"""


# A settlement's outcomes per destination, added to its bucket: the last statement of the
# settlement's transaction, so the row (which every instance's settlements of that destination
# update) stays locked only until the commit; in destination order, so two instances'
# settlements never wait for each other in a cycle.
COUNT = f"""
INSERT INTO {C} (bucket, destination_id, delivered, retried, dead_lettered)
SELECT $1, v.d, v.ok, v.retried, v.dead
FROM unnest($2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[]) AS v(d, ok, retried, dead)
ORDER BY v.d
ON CONFLICT (bucket, destination_id) DO UPDATE SET
    delivered = {C}.delivered + excluded.delivered,
    retried = {C}.retried + excluded.retried,
    dead_lettered = {C}.dead_lettered + excluded.dead_lettered
"""


def safe_url(url: str) -> str:
    """The URL without its password (and without query options, which may hold one)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username}@{host}" if parts.username else host
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "postgresql://(unreadable URL)"


def password_of(url: str) -> str:
    try:
        return unquote(urlsplit(url).password or "")
    except ValueError:
        return ""


class Scrubber:
    """Removes the URL's password from text (errors from the driver may echo the DSN)."""

    def __init__(self, url: str) -> None:
        secret = password_of(url)
        self.secrets = [s for s in {secret, url} if s]

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def is_connection_problem(exc: BaseException) -> bool:
    """The database is unreachable or too slow (as opposed to a statement that failed)."""
    return isinstance(
        exc,
        (
            OSError,
            TimeoutError,
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            asyncpg.CannotConnectNowError,
            asyncpg.AdminShutdownError,
            asyncpg.TooManyConnectionsError,
        ),
    )


async def migrate(conn: Conn) -> int:
    """Create or upgrade the schema; its version. Safe when many instances start at once."""
    async with conn.transaction():
        await conn.execute(f"SELECT pg_advisory_xact_lock({LOCK_ID})")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS tagserver_outbox_schema (version INTEGER NOT NULL)"
        )
        version = await conn.fetchval("SELECT max(version) FROM tagserver_outbox_schema") or 0
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"the PostgreSQL outbox has schema version {version}, newer than this "
                f"tagserver's {SCHEMA_VERSION}: upgrade tagserver"
            )
        for step in range(version, SCHEMA_VERSION):
            await conn.execute(MIGRATIONS[step])
            log.info("PostgreSQL outbox schema: version %d", step + 1)
        if version < SCHEMA_VERSION:
            await conn.execute("DELETE FROM tagserver_outbox_schema")
            await conn.execute("INSERT INTO tagserver_outbox_schema VALUES ($1)", SCHEMA_VERSION)
        return SCHEMA_VERSION


# -- statements shared by the server and the CLI


class PgStore:
    """The outbox's statements on one connection (the caller owns transactions)."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def destination_id(
        self,
        key: str,
        tag_type: str,
        route: dict[str, Any],
        now: float,
        secrets: tuple[str, ...] = (),
    ) -> int:
        return int(
            await self.conn.fetchval(
                f"INSERT INTO {D} (key, tag_type, route, updated_at, secrets)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO UPDATE SET"
                " tag_type = excluded.tag_type, route = excluded.route,"
                " updated_at = excluded.updated_at, secrets = excluded.secrets RETURNING id",
                key,
                tag_type,
                orjson.dumps(route, option=orjson.OPT_SORT_KEYS).decode(),
                now,
                orjson.dumps(secrets).decode(),
            )
        )

    async def pending_total(self) -> int:
        return int(await self.conn.fetchval(f"SELECT count(*) FROM {M}"))

    async def delivery_counts(self, since: int, fine_since: int) -> list[CountRow]:
        """As `outbox_store.Store.delivery_counts`."""
        rows = await self.conn.fetch(
            "SELECT k.key, k.tag_type, CASE WHEN c.bucket >= $2 THEN c.bucket ELSE 0 END AS b,"
            " sum(c.delivered), sum(c.retried), sum(c.dead_lettered)"
            f" FROM {C} c JOIN {D} k ON k.id = c.destination_id"
            " WHERE c.bucket >= $1 GROUP BY k.key, k.tag_type, b",
            since,
            fine_since,
        )
        return [CountRow(r[0], r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5])) for r in rows]

    async def stats(self, now: float, *, in_flight: bool = False) -> list[dict[str, Any]]:
        """As `outbox_store.Store.stats`."""
        # the last failed attempt's status and error: only for the page and the CLI
        # (`in_flight`), not for every /metrics scrape
        last, lateral = ", NULL AS last_status, NULL AS last_error", ""
        if in_flight:
            last = ", e.last_status, e.last_error"
            lateral = (
                f" LEFT JOIN LATERAL (SELECT last_status, last_error FROM {M}"
                " WHERE m.last_at IS NOT NULL AND destination_id = d.id"
                " AND last_attempt_at = m.last_at LIMIT 1) e ON true"
            )
        rows = await self.conn.fetch(
            f"SELECT d.key, d.tag_type, coalesce(m.pending, 0) AS pending, m.oldest, m.next_due,"
            " coalesce(m.in_flight, 0) AS in_flight, coalesce(x.dead, 0) AS dead,"
            f" coalesce(m.retrying, 0) AS retrying, m.last_at{last}"
            f" FROM {D} d LEFT JOIN (SELECT destination_id, count(*) AS pending,"
            " min(created_at) AS oldest, min(next_attempt_at) AS next_due,"
            " count(*) FILTER (WHERE lease_until > $1) AS in_flight,"
            " count(*) FILTER (WHERE attempts > 0) AS retrying, max(last_attempt_at) AS last_at"
            f" FROM {M} GROUP BY destination_id) m ON m.destination_id = d.id"
            f" LEFT JOIN (SELECT destination_id, count(*) AS dead FROM {X}"
            f" GROUP BY destination_id) x ON x.destination_id = d.id{lateral}"
            " WHERE m.pending > 0 OR x.dead > 0 ORDER BY d.key",
            now,
        )
        out = []
        for r in rows:
            oldest, next_due = r["oldest"], r["next_due"]
            row = {
                "destination": r["key"],
                "tag_type": r["tag_type"],
                "pending": r["pending"],
                "oldest_age_seconds": round(now - oldest, 3) if oldest else None,
                "next_attempt_in_seconds": round(max(0.0, next_due - now), 3) if next_due else None,
                "dead_letters": r["dead"],
            }
            if in_flight and r["pending"]:
                row["in_flight"], row["retrying"] = r["in_flight"], r["retrying"]
                row["last_retry"] = last_try(r["last_at"], r["last_status"], r["last_error"])
            out.append(row)
        return out

    def _dead_filter(
        self, destination: str | None, ids: Sequence[int], first: int = 1
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if destination:
            args.append(destination)
            clauses.append(f"d.destination_id = (SELECT id FROM {D} WHERE key = ${first})")
        if ids:
            args.append(list(ids))
            clauses.append(f"d.id = ANY(${first + len(args) - 1}::bigint[])")
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), args

    async def dead_letters(
        self, destination: str | None = None, limit: int = 100, ids: Sequence[int] = ()
    ) -> list[dict[str, Any]]:
        where, args = self._dead_filter(destination, ids)
        rows = await self.conn.fetch(
            "SELECT d.id, k.key AS destination, k.tag_type, d.tag_name AS tag, d.dedup_id,"
            " d.attempts, d.created_at, d.first_attempt_at, d.last_attempt_at, d.status, d.code,"
            f" d.trace, d.error, d.reason, d.dead_at, d.payload FROM {X} d JOIN {D} k"
            f" ON k.id = d.destination_id {where} ORDER BY d.id LIMIT ${len(args) + 1}",
            *args,
            limit,
        )
        out = []
        for row in rows:
            item = dict(row)
            item["payload"] = orjson.loads(item["payload"])
            out.append(item)
        return out

    async def count_past_deadline(
        self, destination: str | None, ids: Sequence[int], now: float
    ) -> int:
        where, args = self._dead_filter(destination, ids)
        where = f"{where} AND" if where else "WHERE"
        return int(
            await self.conn.fetchval(
                f"SELECT count(*) FROM {X} d {where} d.deadline <= ${len(args) + 1}", *args, now
            )
        )

    async def requeue(
        self,
        destination: str | None,
        ids: Sequence[int],
        now: float,
        routes: Routes | None = None,
    ) -> list[dict[str, Any]]:
        """As `outbox_store.Store.requeue` (inside a transaction)."""
        where, args = self._dead_filter(destination, ids)
        groups = await self.conn.fetch(
            f"SELECT d.tag_name, d.destination_id, k.key, k.tag_type, count(*) AS n FROM {X} d"
            f" JOIN {D} k ON k.id = d.destination_id {where}"
            " GROUP BY d.tag_name, d.destination_id, k.key, k.tag_type ORDER BY d.tag_name, k.key",
            *args,
        )
        scoped = f"{where} AND" if where else "WHERE"
        n = len(args)
        out = []
        for tag_name, dest_id, key, tag_type, count in groups:
            target_key, target_id = key, dest_id
            new = (routes or {}).get(tag_name)
            if new is not None and new[1] == tag_type:
                target_key = new[0]
                target_id = await self.destination_id(new[0], new[1], new[2], now)
            stored = await self.conn.fetch(
                f"INSERT INTO {M} (destination_id, payload, dedup_id, tag_name, created_at,"
                " deadline, trace_id, next_attempt_at)"
                f" SELECT ${n + 1}, payload, dedup_id, tag_name, created_at, deadline, trace_id,"
                f" ${n + 2} FROM {X} d {scoped} d.tag_name = ${n + 3} AND d.destination_id ="
                f" ${n + 4} AND NOT EXISTS (SELECT 1 FROM {V} x WHERE x.destination_id ="
                f" ${n + 1} AND x.dedup_id = d.dedup_id AND x.delivered_at > ${n + 5})"
                " ORDER BY d.id ON CONFLICT (destination_id, dedup_id) DO NOTHING RETURNING id",
                *args, target_id, now, tag_name, dest_id, now - DEDUP_WINDOW,
            )  # fmt: skip
            out.append({
                "tag": tag_name, "from": key, "to": target_key, "dead_letters": count,
                "requeued": len(stored), "already_sent_or_pending": count - len(stored),
            })  # fmt: skip
        await self.conn.execute(f"DELETE FROM {X} AS d {where}", *args)
        return out

    async def purge(self, *, pending: bool, dead: bool, destination: str | None = None) -> int:
        count = 0
        if dead:
            where, args = self._dead_filter(destination, ())
            status = await self.conn.execute(f"DELETE FROM {X} AS d {where}", *args)
            count += int(status.split()[-1])
        if pending:
            if destination:
                status = await self.conn.execute(
                    f"DELETE FROM {M} WHERE destination_id = (SELECT id FROM {D} WHERE key = $1)",
                    destination,
                )
            else:
                status = await self.conn.execute(f"DELETE FROM {M}")
            count += int(status.split()[-1])
        return count


# -- the server's side


@dataclass
class _Group:
    """Puts waiting for the next commit."""

    rows: list[Outgoing] = field(default_factory=list)
    waiters: list[asyncio.Future[list[int]]] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)


class PgOutbox:
    """The shared outbox: group commit into PostgreSQL; claims and leases for every instance."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.outbox_url.strip()
        self.scrub = Scrubber(self.url)
        self.pending = 0
        self.on_commit: Callable[[dict[int, tuple[str, str]]], None] | None = None
        self.timeout = max(0.1, settings.outbox_timeout_seconds)
        self._pool: asyncpg.Pool | None = None
        self._next = _Group()
        self._committer: asyncio.Task[None] | None = None
        self._destinations: dict[str, tuple[int, dict[str, Any], tuple[str, ...]]] = {}
        self._routes: dict[int, tuple[str, dict[str, Any] | None]] = {}
        self._problem: str | None = None
        self._recovering: asyncio.Task[None] | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._queued_rows = 0
        self._open = False

    @property
    def where(self) -> str:
        return f"PostgreSQL {safe_url(self.url)}"

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def problem(self) -> str | None:
        """Why a hit would be refused now (for /healthz), or None: the reasons `put` gives."""
        if not self._open:
            return "the outbox is closed"
        if self._problem is not None:
            return self._problem
        refusal = self._refusal(1)
        return refusal.reason if refusal is not None else None

    # -- lifecycle

    async def start(self) -> None:
        self._open = True
        try:
            await self._connect()
        except Exception as exc:
            if not is_connection_problem(exc):
                self._open = False
                await self._close_pool()
                raise RuntimeError(f"the PostgreSQL outbox cannot start: {self.scrub(str(exc))}") from None  # fmt: skip
            self._down(exc)  # the server starts; hits get 503 until PostgreSQL answers
        self._maintenance = asyncio.create_task(self._maintain(), name="outbox-maintenance")
        log.info("outbox: %s, %d messages pending", self.where, self.pending)

    async def _connect(self) -> None:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=max(2, self.settings.outbox_pool_size),
                timeout=self.timeout,
                command_timeout=max(self.timeout, self.settings.outbox_lease_seconds),
                server_settings={"application_name": "tagserver"},
            )
        async with self._pool.acquire(timeout=self.timeout) as conn:
            await migrate(conn)
            self.pending = await PgStore(conn).pending_total()

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self.timeout)
            except Exception:
                pool.terminate()

    async def close(self) -> None:
        if not self._open:
            return
        self._open = False
        for task in (self._maintenance, self._recovering):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._committer is not None:
            await asyncio.gather(self._committer, return_exceptions=True)
        self._fail(self._next, Unavailable("the server is stopping; retry shortly", retry_after=5))
        await self._close_pool()

    # -- health

    def _down(self, exc: BaseException) -> None:
        """PostgreSQL did not answer: refuse hits, say why, probe until it is back."""
        reason = f"{type(exc).__name__}: {self.scrub(str(exc))}".rstrip(": ")
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {self.timeout:g} s"
        problem = f"the PostgreSQL outbox ({safe_url(self.url)}) is unreachable: {reason}"
        if self._problem is None:
            log.error("%s; hits get 503 until it answers", problem)
        self._problem = problem
        if self._open and (self._recovering is None or self._recovering.done()):
            self._recovering = asyncio.create_task(self._recover(), name="outbox-reconnect")

    async def _recover(self) -> None:
        """Probe at once (a timeout may come from this process having been paused, not from
        PostgreSQL), then every second until PostgreSQL answers."""
        first = True
        while self._open:
            if not first:
                await asyncio.sleep(PROBE_SECONDS)
            first = False
            try:
                if self._pool is not None:
                    await self._pool.expire_connections()  # the old ones may be dead
                await asyncio.wait_for(self._connect(), self.timeout * 2)
            except Exception as exc:
                if not is_connection_problem(exc):
                    log.error("PostgreSQL outbox: %s", self.scrub(str(exc)))
                self._problem = self._problem or "the PostgreSQL outbox is unreachable"
                continue
            log.info("the PostgreSQL outbox answers again; accepting hits")
            self._problem = None
            return

    async def _io(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """Run `work` on a pooled connection within the timeout; connection trouble marks
        the outbox down (and is raised)."""
        if self._pool is None:
            raise Unavailable(self._problem or "the outbox is not started", retry_after=5)
        try:
            async with asyncio.timeout(self.timeout):
                async with self._pool.acquire() as conn:
                    return await work(conn)
        except Exception as exc:
            if is_connection_problem(exc):
                self._down(exc)
            raise

    # -- the hit path

    async def put(self, messages: list[Outgoing]) -> list[int]:
        if not messages:
            return []
        if not self._open:
            raise Unavailable("the server is starting or stopping; retry shortly", retry_after=5)
        if self._problem is not None:
            raise Unavailable(f"{self._problem}; nothing was stored, retry later", retry_after=5)
        refusal = self._refusal(len(messages))
        if refusal is not None:
            raise refusal
        group = self._next
        group.rows += messages
        group.counts.append(len(messages))
        waiter: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        group.waiters.append(waiter)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_loop(), name="outbox-commit")
        self._queued_rows += len(messages)
        try:
            return await waiter
        finally:
            self._queued_rows -= len(messages)

    def _refusal(self, incoming: int) -> Unavailable | None:
        """The 503 for `incoming` more messages while the shared outbox is full."""
        return over_limit(self.pending + self._queued_rows, incoming, self.settings)

    async def _commit_loop(self) -> None:
        """One commit at a time; what arrives meanwhile goes into the next one."""
        await asyncio.sleep(0)  # this loop iteration's puts join the first group
        while self._next.rows:
            group, self._next = self._next, _Group()
            started = time.perf_counter()
            try:
                rows = group.rows
                touched, repeats = await self._io(lambda conn: self._insert(conn, rows))  # noqa: B023 - awaited here
            except Exception as exc:
                self._fail(group, self._not_stored(exc))
                continue
            metrics.observe(metrics.OUTBOX_COMMIT, time.perf_counter() - started)
            for waiter, mine in zip(group.waiters, split(repeats, group.counts), strict=True):
                if not waiter.done():
                    waiter.set_result(mine)
            self.pending += len(group.rows) - len(repeats)
            if self.on_commit is not None:
                try:
                    self.on_commit(touched)
                except Exception:
                    log.exception("outbox commit listener failed")

    def _not_stored(self, exc: Exception) -> Unavailable:
        if isinstance(exc, Unavailable):
            return exc
        if is_connection_problem(exc):
            return Unavailable(
                f"{self._problem or 'the PostgreSQL outbox is unreachable'}; nothing was "
                "stored, retry later",
                retry_after=5,
            )
        log.error("outbox commit failed: %s: %s", type(exc).__name__, self.scrub(str(exc)))
        return Unavailable(
            "the outbox could not store the messages; nothing was stored, retry later",
            retry_after=10,
        )

    @staticmethod
    def _fail(group: _Group, error: Unavailable) -> None:
        for waiter in group.waiters:
            if not waiter.done():
                waiter.set_exception(error)

    async def _insert(
        self, conn: Conn, rows: list[Outgoing]
    ) -> tuple[dict[int, tuple[str, str]], list[int]]:
        """One transaction: new destinations, then every message in one statement. Under
        load every destination is known already: then the statement is the transaction
        (one round trip instead of three)."""
        now = time.time()
        cache = self._destinations
        fresh = {}
        for m in rows:
            cached = cache.get(m.destination)
            if cached is None or cached[1] != m.route or cached[2] != m.secrets:
                fresh[m.destination] = m
        dumps = orjson.dumps
        payloads = [dumps(m.payload, default=str).decode() for m in rows]
        learnt: dict[str, tuple[int, dict[str, Any], tuple[str, ...]]] = {}

        async def insert() -> list[asyncpg.Record]:
            dest = [(learnt.get(m.destination) or cache[m.destination])[0] for m in rows]
            return await conn.fetch(
                INSERT,
                dest,
                payloads,
                [m.dedup_id for m in rows],
                [m.tag_name for m in rows],
                [m.created_at for m in rows],
                [m.deadline for m in rows],
                [m.trace_id for m in rows],
                now,
                now - DEDUP_WINDOW,
            )

        if not fresh:
            stored = await insert()
        else:
            async with conn.transaction():
                store = PgStore(conn)
                for key in sorted(fresh):  # one order everywhere: no deadlock between instances
                    m = fresh[key]
                    learnt[key] = (
                        await store.destination_id(key, m.tag_type, m.route, now, m.secrets),
                        m.route,
                        m.secrets,
                    )
                stored = await insert()
            cache.update(learnt)  # only once committed: ids of a rolled-back upsert are void
        dest = [(cache[m.destination])[0] for m in rows]
        touched = {d: (m.destination, m.tag_type) for d, m in zip(dest, rows, strict=True)}
        keys = [(d, m.dedup_id) for d, m in zip(dest, rows, strict=True)]
        return touched, duplicates(keys, [(r[0], r[1]) for r in stored])

    # -- the dispatcher's side

    async def claim(self, destination_id: int, worker: str, limit: int) -> Claim:
        lease = self.settings.outbox_lease_seconds

        async def work(conn: Conn) -> Claim:
            # One transaction: a claim that fails half way (a timeout, a connection lost after
            # the UPDATE) must not leave messages leased to a claim nobody holds.
            async with conn.transaction():
                rows = await conn.fetch(CLAIM, destination_id, limit, worker, lease)
                next_due = await conn.fetchval(
                    f"SELECT min(next_attempt_at) FROM {M} WHERE destination_id = $1",
                    destination_id,
                )
                key, route, secrets = (
                    await self._route(conn, destination_id) if rows else ("", None, ())
                )
            claim = Claim(route=route, messages=[], next_due=next_due, secrets=secrets)
            for r in sorted(rows, key=lambda r: r[0]):
                mid, payload, dedup_id, attempts, created, deadline, trace_id, tag_name = r
                claim.messages.append(
                    Message(mid, key, orjson.loads(payload), dedup_id, attempts, created,
                            deadline, trace_id)
                )  # fmt: skip
                claim.tag_names[mid] = tag_name
            return claim

        return await self._io(work)

    async def _route(
        self, conn: Conn, destination_id: int
    ) -> tuple[str, dict[str, Any] | None, tuple[str, ...]]:
        row = await conn.fetchrow(
            f"SELECT key, route, secrets FROM {D} WHERE id = $1", destination_id
        )
        if row is None:
            return "", None, ()
        return row["key"], orjson.loads(row["route"]), tuple(orjson.loads(row["secrets"]))

    async def settle(self, worker: str, plan: Settlement) -> None:
        now = time.time()

        async def work(conn: Conn) -> None:
            # destination id → [delivered, retried, dead-lettered], as the statements applied
            counts: dict[int, list[int]] = {}

            def count(rows: list[asyncpg.Record], outcome: int) -> None:
                for row in rows:
                    counts.setdefault(row[0], [0, 0, 0])[outcome] += 1

            async with conn.transaction():
                if plan.delivered:
                    await conn.execute(
                        f"INSERT INTO {V} (destination_id, dedup_id, delivered_at)"
                        f" SELECT destination_id, dedup_id, $2 FROM {M} WHERE id = ANY($1::bigint[])"
                        " ON CONFLICT (destination_id, dedup_id)"
                        " DO UPDATE SET delivered_at = excluded.delivered_at",
                        plan.delivered, now,
                    )  # fmt: skip
                    gone = await conn.fetch(
                        f"DELETE FROM {M} WHERE id = ANY($1::bigint[]) RETURNING destination_id",
                        plan.delivered,
                    )
                    count(gone, 0)
                if plan.retry:
                    retried = await conn.fetch(
                        f"UPDATE {M} m SET attempts = m.attempts + 1,"
                        " first_attempt_at = coalesce(m.first_attempt_at, $1),"
                        " last_attempt_at = $1, last_status = r.status, last_error = r.error,"
                        " next_attempt_at = r.at, claimed_by = NULL, lease_until = NULL"
                        " FROM unnest($2::bigint[], $3::float8[], $4::int[], $5::text[])"
                        " AS r(id, at, status, error) WHERE m.id = r.id AND m.claimed_by = $6"
                        " RETURNING m.destination_id",
                        now, *zip(*plan.retry, strict=True), worker,
                    )  # fmt: skip
                    count(retried, 1)
                if plan.dead:
                    await conn.execute(DEAD, now, *zip(*plan.dead, strict=True), worker)
                    dead = await conn.fetch(
                        f"DELETE FROM {M} WHERE claimed_by = $1 AND id = ANY($2::bigint[])"
                        " RETURNING destination_id",
                        worker, [d[0] for d in plan.dead],
                    )  # fmt: skip
                    count(dead, 2)
                if counts:
                    ids = sorted(counts)
                    await conn.execute(
                        COUNT, bucket_of(now), ids, *zip(*(counts[d] for d in ids), strict=True)
                    )

        await self._io(work)
        self.pending = max(0, self.pending - len(plan.delivered) - len(plan.dead))

    async def extend(self, worker: str, ids: list[int]) -> None:
        lease = self.settings.outbox_lease_seconds
        await self._io(
            lambda conn: conn.execute(
                f"UPDATE {M} SET lease_until = {NOW} + $3, next_attempt_at = {NOW} + $3"
                " WHERE claimed_by = $1 AND id = ANY($2::bigint[])",
                worker,
                ids,
                lease,
            )  # fmt: skip
        )

    async def release(self, worker: str, ids: list[int]) -> None:
        await self._io(
            lambda conn: conn.execute(
                f"UPDATE {M} SET claimed_by = NULL, lease_until = NULL, next_attempt_at = {NOW}"
                " WHERE claimed_by = $1 AND id = ANY($2::bigint[])",
                worker,
                ids,
            )  # fmt: skip
        )

    async def due(self) -> list[tuple[int, str, str, float]]:
        rows = await self._io(
            lambda conn: conn.fetch(
                f"SELECT d.id, d.key, d.tag_type, (SELECT min(next_attempt_at) FROM {M} m"
                f" WHERE m.destination_id = d.id) AS next_due FROM {D} d"
            )
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows if r[3] is not None]

    async def stats(self) -> list[dict[str, Any]]:
        if self._problem is not None:
            return []
        return await self._io(lambda conn: PgStore(conn).stats(time.time()))

    async def _maintain(self) -> None:
        """Once a second: the pending count (all instances); once a minute: forget dedup ids
        delivered before the window, and delivery counts older than a day."""
        ticks = 0
        while True:
            await asyncio.sleep(1.0)
            if self._problem is not None:
                continue
            ticks += 1
            try:
                self.pending = await self._io(lambda conn: PgStore(conn).pending_total())
                if ticks % 60 == 1:
                    await self._io(
                        lambda conn: conn.execute(
                            f"DELETE FROM {V} WHERE delivered_at <= $1",
                            time.time() - DEDUP_WINDOW,
                        )
                    )
                    await self._io(
                        lambda conn: conn.execute(
                            f"DELETE FROM {C} WHERE bucket < $1",
                            bucket_of(time.time() - KEEP_SECONDS),
                        )
                    )
            except Exception as exc:
                if not is_connection_problem(exc):
                    log.error("outbox maintenance failed: %s", self.scrub(str(exc)))


# -- the CLI's side


class PgAdmin:
    """The PostgreSQL outbox for `tagserver outbox …` (each call one transaction)."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.outbox_url.strip()
        self.where = f"PostgreSQL {safe_url(self.url)}"
        self.scrub = Scrubber(self.url)
        self.loop = asyncio.new_event_loop()
        try:
            self.conn: Conn = self.loop.run_until_complete(self._open(settings))
        except Exception as exc:
            self.loop.close()
            raise RuntimeError(
                f"cannot reach the PostgreSQL outbox at {safe_url(self.url)}: "
                f"{type(exc).__name__}: {self.scrub(str(exc))}"
            ) from None

    async def _open(self, settings: Settings) -> asyncpg.Connection:
        conn = await asyncpg.connect(self.url, timeout=max(1.0, settings.outbox_timeout_seconds))
        await migrate(conn)
        return conn

    def _run(self, work: Callable[[PgStore], Awaitable[T]], transaction: bool = False) -> T:
        async def go() -> T:
            if not transaction:
                return await work(PgStore(self.conn))
            async with self.conn.transaction():
                return await work(PgStore(self.conn))

        return self.loop.run_until_complete(go())

    def stats(self, now: float, *, in_flight: bool = False) -> list[dict[str, Any]]:
        return self._run(lambda s: s.stats(now, in_flight=in_flight))

    def dead_letters(
        self, destination: str | None = None, limit: int = 100, ids: Sequence[int] = ()
    ) -> list[dict[str, Any]]:
        return self._run(lambda s: s.dead_letters(destination, limit, ids))

    def count_past_deadline(self, destination: str | None, ids: Sequence[int], now: float) -> int:
        return self._run(lambda s: s.count_past_deadline(destination, ids, now))

    def requeue(
        self,
        destination: str | None,
        ids: Sequence[int],
        now: float,
        routes: Routes | None = None,
    ) -> list[dict[str, Any]]:
        return self._run(lambda s: s.requeue(destination, ids, now, routes), transaction=True)

    def purge(self, *, pending: bool, dead: bool, destination: str | None = None) -> int:
        return self._run(
            lambda s: s.purge(pending=pending, dead=dead, destination=destination),
            transaction=True,
        )

    def delivery_counts(self, since: int, fine_since: int) -> list[CountRow]:
        return self._run(lambda s: s.delivery_counts(since, fine_since))

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.conn.close(timeout=5))
        finally:
            self.loop.close()
