"""The outbox database: its schema and plain synchronous access to it.

Used by the writer process (`outbox_writer`), the server's reader thread and the CLI. It
imports nothing of the server, so the writer process starts in a tenth of a second.

Tables:
- `destinations`: one row per destination key, with its `route` (URL, token …), the route's
  `secrets` (the values of its tag's `secret=True` params: what delivery redacts) and a
  `pending` count kept by triggers. The route is stored once here, never in message rows.
- `messages`: pending messages; `next_attempt_at` says when a message may be claimed. A claim
  sets `claimed_by`/`lease_until` and pushes `next_attempt_at` to the lease end in one UPDATE,
  so two workers never claim the same message and a dead worker's claims come back when the
  lease runs out.
  At most one message per destination and dedup id (a unique index): a repeat is not stored.
- `delivered`: dedup ids delivered in the last 48 hours (Meta's own window), so that an event
  resent after its delivery is not sent again either.
- `dead_letters`: messages that can never be delivered, with the vendor's reason.
- `delivery_counts`: per 10-second bucket and destination, how many messages were delivered,
  retried and dead-lettered (`delivery_counts`): what every worker did, kept a day.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

from .delivery_counts import KEEP_SECONDS, CountRow, bucket_of
from .delivery_types import Claimed, Destination, Due, OutboxRow, Settlement

T = TypeVar("T")

FILENAME = "outbox.sqlite3"
# 2: payloads stored as JSON text (were blobs); 3: one message per destination and dedup id
# (unique index) and the `delivered` table (dedup ids delivered within DEDUP_WINDOW);
# 4: destinations.secrets (the route's secret values); 5: delivery_counts
SCHEMA_VERSION = 5
DEDUP_WINDOW = 48 * 3600.0  # Meta deduplicates an event id within 48 hours; so do we

SCHEMA = """
CREATE TABLE IF NOT EXISTS destinations (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,           -- safe to show: tag type + non-secret identity
    tag_type TEXT NOT NULL,
    route BLOB NOT NULL,                -- JSON; holds secrets; never shown
    secrets TEXT NOT NULL DEFAULT '[]', -- JSON: which of the route's values are secret
    pending INTEGER NOT NULL DEFAULT 0, -- kept by the triggers below
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    destination_id INTEGER NOT NULL,
    payload TEXT NOT NULL,              -- JSON
    dedup_id TEXT NOT NULL,
    tag_name TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    deadline REAL,
    trace_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_attempt_at REAL,
    last_attempt_at REAL,
    last_status INTEGER,
    last_error TEXT,
    next_attempt_at REAL NOT NULL,
    claimed_by TEXT,
    lease_until REAL
);
CREATE INDEX IF NOT EXISTS messages_due
    ON messages (destination_id, next_attempt_at, created_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    destination_id INTEGER NOT NULL,
    payload TEXT NOT NULL,              -- JSON
    dedup_id TEXT NOT NULL,
    tag_name TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    deadline REAL,
    trace_id TEXT,
    attempts INTEGER NOT NULL,
    first_attempt_at REAL,
    last_attempt_at REAL,
    status INTEGER,
    error TEXT NOT NULL DEFAULT '',
    code TEXT NOT NULL DEFAULT '',
    trace TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL,
    dead_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_destination ON dead_letters (destination_id);
CREATE TABLE IF NOT EXISTS delivered (
    destination_id INTEGER NOT NULL,
    dedup_id TEXT NOT NULL,
    delivered_at REAL NOT NULL,
    PRIMARY KEY (destination_id, dedup_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS delivered_at ON delivered (delivered_at);
CREATE TABLE IF NOT EXISTS delivery_counts (
    bucket INTEGER NOT NULL,            -- the bucket's start, unix seconds (delivery_counts.py)
    destination_id INTEGER NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    retried INTEGER NOT NULL DEFAULT 0,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, destination_id)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS messages_counted AFTER INSERT ON messages BEGIN
    UPDATE destinations SET pending = pending + 1 WHERE id = NEW.destination_id;
END;
CREATE TRIGGER IF NOT EXISTS messages_uncounted AFTER DELETE ON messages BEGIN
    UPDATE destinations SET pending = pending - 1 WHERE id = OLD.destination_id;
END;
"""

# Version 2 databases may hold repeats; the first copy of each stays.
DEDUP_MIGRATION = """
DELETE FROM messages WHERE id NOT IN
    (SELECT min(id) FROM messages GROUP BY destination_id, dedup_id);
CREATE UNIQUE INDEX IF NOT EXISTS messages_dedup ON messages (destination_id, dedup_id);
"""


@functools.lru_cache(maxsize=8)
def _count_sql(delivered: bool, retry: bool, dead: bool) -> str:
    """A settlement's outcomes, counted per destination before they are applied (the messages
    are deleted then): delivered ones whoever holds them, the others only if still ours (as
    the statements that apply them do). One statement; only the kinds the settlement holds."""
    parts = [
        part
        for wanted, part in (
            (delivered, "SELECT value AS id, 0 AS kind FROM json_each(:delivered)"),
            (retry, "SELECT json_extract(value, '$[0]') AS id, 1 AS kind FROM json_each(:retry)"),
            (dead, "SELECT json_extract(value, '$[0]') AS id, 2 AS kind FROM json_each(:dead)"),
        )
        if wanted
    ]
    mine = " AND (o.kind = 0 OR m.claimed_by = :worker)" if retry or dead else ""
    return (
        "INSERT INTO delivery_counts (bucket, destination_id, delivered, retried, dead_lettered)"
        " SELECT :bucket, m.destination_id, sum(o.kind = 0), sum(o.kind = 1), sum(o.kind = 2)"
        f" FROM ({' UNION ALL '.join(parts)}) AS o JOIN messages AS m ON m.id = o.id"
        f" WHERE true{mine} GROUP BY m.destination_id"
        " ON CONFLICT (bucket, destination_id) DO UPDATE SET"
        " delivered = delivered + excluded.delivered, retried = retried + excluded.retried,"
        " dead_lettered = dead_lettered + excluded.dead_lettered"
    )


MAX_ROWS_PER_INSERT = 4000  # 8 parameters a row; SQLite allows 32766 per statement


@functools.lru_cache(maxsize=64)
def _insert_sql(count: int) -> str:
    """One INSERT for many rows: one SQLite call for a whole group. A message whose dedup id
    is pending for its destination, or was delivered there within the window, is skipped;
    the rows it returns are the ones stored."""
    return (
        "INSERT INTO messages (destination_id, payload, dedup_id, tag_name, created_at, deadline,"
        " trace_id, next_attempt_at) SELECT * FROM (VALUES "
        + ",".join(["(?,?,?,?,?,?,?,?)"] * count)
        + ") AS v WHERE NOT EXISTS (SELECT 1 FROM delivered AS d WHERE"
        " d.destination_id = v.column1 AND d.dedup_id = v.column3 AND d.delivered_at > ?)"
        " ON CONFLICT DO NOTHING RETURNING destination_id, dedup_id"
    )


def duplicates(keys: Sequence[tuple[int, str]], stored: Iterable[tuple[int, str]]) -> list[int]:
    """Indices of `keys` that were not stored: every repeat after the first of a key stored
    now, and every key not stored at all (pending or delivered already)."""
    fresh = set(stored)
    if len(fresh) == len(keys):
        return []
    out = []
    for index, key in enumerate(keys):
        if key in fresh:
            fresh.discard(key)
        else:
            out.append(index)
    return out


def _json(value: Any) -> str:
    """A statement parameter read with json_each (text: SQLite before 3.45 refuses blobs).

    Named tuples (`Retry`, `DeadLetter`) become arrays in field order: the statements below
    read them as `$[0]`, `$[1]` …"""
    return orjson.dumps(value, default=tuple).decode()


def _statements(script: str) -> list[str]:
    """A script's statements one by one (a trigger's body keeps its own semicolons)."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    return statements


def last_try(at: float | None, status: int | None, error: str | None) -> dict[str, Any] | None:
    """A pending message's last failed attempt, as `stats` shows it."""
    if at is None:
        return None
    return {"time": at, "status": status, "error": error or ""}


def database_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / FILENAME


def connect(path: Path, sync: str = "full") -> sqlite3.Connection:
    """A connection in autocommit mode (we BEGIN ourselves) with the outbox's pragmas."""
    if sqlite3.sqlite_version_info < (3, 33, 0):  # UPDATE … FROM
        raise RuntimeError(f"the outbox needs SQLite 3.33 or newer, found {sqlite3.sqlite_version}")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # routes hold secrets
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'NORMAL' if sync.lower() == 'normal' else 'FULL'}")
    conn.execute("PRAGMA temp_store=MEMORY")
    return conn


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        or "database or disk is full" in str(exc)
    )


class Store:
    """Plain synchronous access to the outbox database."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        # key → (id, route, secrets) of destinations stored by this connection
        self._destinations: dict[str, tuple[int, dict[str, Any], tuple[str, ...]]] = {}

    @classmethod
    def open(cls, path: Path, sync: str = "full") -> Store:
        store = cls(connect(path, sync))
        store.create_schema()
        return store

    def create_schema(self) -> None:
        conn = self.conn
        if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        try:  # several workers may race here: the IMMEDIATE lock makes them take turns
            conn.execute("BEGIN IMMEDIATE")
            if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
                conn.execute("COMMIT")  # another worker was first
                return
            for statement in _statements(
                SCHEMA + DEDUP_MIGRATION
            ):  # not executescript: it would COMMIT first
                conn.execute(statement)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(destinations)")}
            if "secrets" not in columns:  # version 2 (messages stored before keep no secrets)
                conn.execute(
                    "ALTER TABLE destinations ADD COLUMN secrets TEXT NOT NULL DEFAULT '[]'"
                )
            conn.execute(
                "UPDATE messages SET payload = CAST(payload AS TEXT) WHERE typeof(payload) = 'blob'"
            )
            conn.execute(
                "UPDATE dead_letters SET payload = CAST(payload AS TEXT)"
                " WHERE typeof(payload) = 'blob'"
            )
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.conn.close()

    # -- transactions

    def transaction(self, work: Callable[[], T]) -> T:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._destinations.clear()  # ids learnt in a rolled-back transaction are void
            raise
        return result

    # -- writing messages

    def destination_id(
        self,
        key: str,
        tag_type: str,
        route: dict[str, Any],
        now: float,
        secrets: tuple[str, ...] = (),
    ) -> int:
        cached = self._destinations.get(key)
        if cached is not None and cached[1] == route and cached[2] == secrets:
            return cached[0]
        row = self.conn.execute(
            "INSERT INTO destinations (key, tag_type, route, secrets, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET tag_type = excluded.tag_type,"
            " route = excluded.route, secrets = excluded.secrets, updated_at = excluded.updated_at"
            " RETURNING id",
            (key, tag_type, orjson.dumps(route, option=orjson.OPT_SORT_KEYS), _json(secrets), now),
        ).fetchone()
        destination_id: int = row[0]
        self._destinations[key] = (destination_id, route, secrets)
        return destination_id

    def knows_destinations(self, rows: Sequence[OutboxRow]) -> bool:
        """Every row's destination is stored already, with the same route."""
        cache = self._destinations
        for row in rows:
            cached = cache.get(row.destination)
            if cached is None or cached[1] != row.route or cached[2] != row.secrets:
                return False
        return True

    def insert(
        self, rows: Sequence[OutboxRow], now: float
    ) -> tuple[dict[int, Destination], list[int]]:
        """Insert messages; the destinations they went to (id → (key, type)), and the indices
        of the rows not stored because they repeat a pending or recently delivered message.

        Outside a transaction this is atomic only when `knows_destinations(rows)` and there
        are at most MAX_ROWS_PER_INSERT rows: then it is one statement.
        """
        touched: dict[int, Destination] = {}
        values: list[Any] = []
        keys: list[tuple[int, str]] = []
        for row in rows:
            dest = self.destination_id(row.destination, row.tag_type, row.route, now, row.secrets)
            touched[dest] = (row.destination, row.tag_type)
            keys.append((dest, row.dedup_id))
            values.extend(
                (dest, row.payload, row.dedup_id, row.tag_name, row.created_at, row.deadline,
                 row.trace_id, now)
            )  # fmt: skip
        stored: list[tuple[int, str]] = []
        since = now - DEDUP_WINDOW
        for start in range(0, len(rows), MAX_ROWS_PER_INSERT):
            count = min(MAX_ROWS_PER_INSERT, len(rows) - start)
            stored += self.conn.execute(
                _insert_sql(count), [*values[start * 8 : (start + count) * 8], since]
            ).fetchall()
        return touched, duplicates(keys, stored)

    def pending_total(self) -> int:
        return int(self.conn.execute("SELECT total(pending) FROM destinations").fetchone()[0])

    # -- the dispatcher's side

    # Every statement below handles all its rows at once (JSON arrays in, one JSON array
    # out): one SQLite call per batch, whatever its size.

    def claim(
        self, destination_id: int, worker: str, limit: int, lease_until: float, now: float
    ) -> Claimed:
        """Lease up to `limit` due messages to `worker` (inside the group-commit transaction)."""
        found = self.conn.execute(
            "SELECT json_group_array(json_array(id, json(payload), dedup_id, attempts,"
            " created_at, deadline, trace_id, tag_name)) FROM (SELECT * FROM messages"
            " WHERE destination_id = ? AND next_attempt_at <= ? ORDER BY next_attempt_at"
            " LIMIT ?)",
            (destination_id, now, limit),
        ).fetchone()[0]
        claimed = Claimed()
        rows = orjson.loads(found) if found else []
        if rows:
            claimed.ids = sorted(r[0] for r in rows)
            self.conn.execute(
                "UPDATE messages SET claimed_by = ?, lease_until = ?, next_attempt_at = ?"
                " WHERE id IN (SELECT value FROM json_each(?))",
                (worker, lease_until, lease_until, _json(claimed.ids)),
            )
            key, route, secrets = self.conn.execute(
                "SELECT key, route, secrets FROM destinations WHERE id = ?", (destination_id,)
            ).fetchone()
            claimed.key, claimed.route, claimed.rows = key, orjson.loads(route), found
            claimed.secrets = tuple(orjson.loads(secrets))
        claimed.next_due = self.next_due(destination_id)
        return claimed

    def next_due(self, destination_id: int) -> float | None:
        due: float | None = self.conn.execute(
            "SELECT min(next_attempt_at) FROM messages WHERE destination_id = ?",
            (destination_id,),
        ).fetchone()[0]
        return due

    def settle(self, worker: str, plan: Settlement, now: float) -> None:
        conn = self.conn
        delivered, retry, dead = _json(plan.delivered), _json(plan.retry), _json(plan.dead)
        conn.execute(  # first: the messages are gone after
            _count_sql(bool(plan.delivered), bool(plan.retry), bool(plan.dead)),
            {"bucket": bucket_of(now), "delivered": delivered, "retry": retry, "dead": dead,
             "worker": worker},
        )  # fmt: skip
        if plan.delivered:
            # remembered for the dedup window: the same event resent is not stored again
            conn.execute(
                "INSERT OR REPLACE INTO delivered (destination_id, dedup_id, delivered_at)"
                " SELECT destination_id, dedup_id, ? FROM messages"
                " WHERE id IN (SELECT value FROM json_each(?))",
                (now, delivered),
            )
            # delivered is final whoever holds the lease now: deleting stops a second send
            conn.execute(
                "DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?))",
                (delivered,),
            )
        if plan.retry:  # Retry: [id, next_attempt_at, status, error]
            conn.execute(
                "UPDATE messages SET attempts = attempts + 1,"
                " first_attempt_at = coalesce(first_attempt_at, ?1), last_attempt_at = ?1,"
                " last_status = json_extract(r.value, '$[2]'), last_error = json_extract(r.value, '$[3]'),"
                " next_attempt_at = json_extract(r.value, '$[1]'), claimed_by = NULL, lease_until = NULL"
                " FROM json_each(?2) AS r"
                " WHERE messages.id = json_extract(r.value, '$[0]') AND messages.claimed_by = ?3",
                (now, retry, worker),
            )
        if plan.dead:  # DeadLetter: [id, attempted, status, error, code, trace, reason]
            conn.execute(
                "INSERT INTO dead_letters (destination_id, payload, dedup_id, tag_name,"
                " created_at, deadline, trace_id, attempts, first_attempt_at, last_attempt_at,"
                " status, error, code, trace, reason, dead_at)"
                " SELECT m.destination_id, m.payload, m.dedup_id, m.tag_name, m.created_at,"
                " m.deadline, m.trace_id, m.attempts + (json_extract(d.value, '$[1]')),"
                " CASE WHEN json_extract(d.value, '$[1]') THEN coalesce(m.first_attempt_at, ?1)"
                "  ELSE m.first_attempt_at END,"
                " CASE WHEN json_extract(d.value, '$[1]') THEN ?1 ELSE m.last_attempt_at END,"
                " coalesce(json_extract(d.value, '$[2]'), m.last_status),"
                " CASE WHEN json_extract(d.value, '$[3]') = '' THEN coalesce(m.last_error, '')"
                "  ELSE json_extract(d.value, '$[3]') END,"
                " json_extract(d.value, '$[4]'), json_extract(d.value, '$[5]'), json_extract(d.value, '$[6]'), ?1"
                " FROM json_each(?2) AS d JOIN messages AS m ON m.id = json_extract(d.value, '$[0]')"
                " WHERE m.claimed_by = ?3",
                (now, dead, worker),
            )
            conn.execute(
                "DELETE FROM messages WHERE claimed_by = ?"
                " AND id IN (SELECT json_extract(value, '$[0]') FROM json_each(?))",
                (worker, dead),
            )

    def extend(self, worker: str, ids: Iterable[int], lease_until: float) -> None:
        self.conn.execute(
            "UPDATE messages SET lease_until = ?1, next_attempt_at = ?1"
            " WHERE claimed_by = ?2 AND id IN (SELECT value FROM json_each(?3))",
            (lease_until, worker, _json(list(ids))),
        )

    def release(self, worker: str, ids: Iterable[int], now: float) -> None:
        self.conn.execute(
            "UPDATE messages SET claimed_by = NULL, lease_until = NULL, next_attempt_at = ?1"
            " WHERE claimed_by = ?2 AND id IN (SELECT value FROM json_each(?3))",
            (now, worker, _json(list(ids))),
        )

    # -- reading (dispatcher polls, metrics, CLI)

    def due(self) -> list[Due]:
        """Destinations with pending messages, with the time their next one is due."""
        rows = self.conn.execute(
            "SELECT id, key, tag_type, (SELECT min(next_attempt_at) FROM messages"
            " WHERE destination_id = destinations.id) FROM destinations WHERE pending > 0"
        ).fetchall()
        return [Due(*r) for r in rows if r[3] is not None]

    def stats(self, now: float, *, in_flight: bool = False) -> list[dict[str, Any]]:
        """Per destination: pending, oldest age, next try, dead letters (no routes); with
        `in_flight`, also how many are being sent, how many wait for a retry, and the last
        failure of those (what any worker recorded)."""
        dead = dict(
            self.conn.execute(
                "SELECT destination_id, count(*) FROM dead_letters GROUP BY destination_id"
            ).fetchall()
        )
        out = []
        for dest_id, key, tag_type, pending in self.conn.execute(
            "SELECT id, key, tag_type, pending FROM destinations ORDER BY key"
        ).fetchall():
            if not pending and not dead.get(dest_id):
                continue
            oldest, next_due = (None, None)
            if pending:
                oldest, next_due = self.conn.execute(
                    "SELECT min(created_at), min(next_attempt_at) FROM messages"
                    " WHERE destination_id = ?",
                    (dest_id,),
                ).fetchone()
            row = {
                "destination": key,
                "tag_type": tag_type,
                "pending": pending,
                "oldest_age_seconds": round(now - oldest, 3) if oldest else None,
                "next_attempt_in_seconds": round(max(0.0, next_due - now), 3) if next_due else None,
                "dead_letters": dead.get(dest_id, 0),
            }
            if in_flight and pending:
                # one pass over the destination's messages; the bare columns come from the
                # row with the latest attempt (SQLite's max() semantics)
                flying, retrying, last_at, last_status, last_error = self.conn.execute(
                    "SELECT count(*) FILTER (WHERE lease_until > ?1),"
                    " count(*) FILTER (WHERE attempts > 0), max(last_attempt_at), last_status,"
                    " last_error FROM messages WHERE destination_id = ?2",
                    (now, dest_id),
                ).fetchone()
                row["in_flight"], row["retrying"] = flying, retrying
                row["last_retry"] = last_try(last_at, last_status, last_error)
            out.append(row)
        return out

    def dead_letters(
        self, destination: str | None = None, limit: int = 100, ids: Sequence[int] = ()
    ) -> list[dict[str, Any]]:
        where, args = self._dead_filter(destination, ids)
        rows = self.conn.execute(
            "SELECT d.id, k.key, k.tag_type, d.tag_name, d.dedup_id, d.attempts, d.created_at,"
            " d.first_attempt_at, d.last_attempt_at, d.status, d.code, d.trace, d.error, d.reason,"
            " d.dead_at, d.payload FROM dead_letters d JOIN destinations k"
            f" ON k.id = d.destination_id {where} ORDER BY d.id LIMIT ?",
            (*args, limit),
        ).fetchall()
        names = [
            "id",
            "destination",
            "tag_type",
            "tag",
            "dedup_id",
            "attempts",
            "created_at",
            "first_attempt_at",
            "last_attempt_at",
            "status",
            "code",
            "trace",
            "error",
            "reason",
            "dead_at",
            "payload",
        ]
        out = []
        for row in rows:
            item = dict(zip(names, row, strict=True))
            item["payload"] = orjson.loads(item["payload"])
            out.append(item)
        return out

    def _dead_filter(self, destination: str | None, ids: Sequence[int]) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if destination:
            clauses.append("d.destination_id = (SELECT id FROM destinations WHERE key = ?)")
            args.append(destination)
        if ids:
            clauses.append(f"d.id IN ({','.join('?' * len(ids))})")
            args.extend(ids)
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), args

    def count_past_deadline(self, destination: str | None, ids: Sequence[int], now: float) -> int:
        where, args = self._dead_filter(destination, ids)
        where = f"{where} AND" if where else "WHERE"
        count: int = self.conn.execute(
            f"SELECT count(*) FROM dead_letters d {where} d.deadline <= ?", (*args, now)
        ).fetchone()[0]
        return count

    def requeue_dead_letters(
        self, destination: str | None = None, ids: Sequence[int] = (), now: float | None = None
    ) -> int:
        """Move dead letters back to pending through their stored routes; how many."""
        return sum(r["dead_letters"] for r in self.requeue(destination, ids, now))

    def requeue(
        self,
        destination: str | None = None,
        ids: Sequence[int] = (),
        now: float | None = None,
        routes: Mapping[str, tuple[str, str, dict[str, Any]]] | None = None,
    ) -> list[dict[str, Any]]:
        """Move dead letters back to pending, attempts reset (inside a transaction).

        `routes` maps a tag name to the (destination key, tag type, route) it resolves to now:
        that tag's dead letters go there; the others keep their destination. One row per tag
        and old destination: where they went, how many were requeued, and how many were
        dropped because the same message is pending there or was delivered within 48 hours.
        """
        now = time.time() if now is None else now
        where, args = self._dead_filter(destination, ids)
        groups = self.conn.execute(
            "SELECT d.tag_name, d.destination_id, k.key, k.tag_type, count(*) FROM dead_letters d"
            f" JOIN destinations k ON k.id = d.destination_id {where}"
            " GROUP BY d.tag_name, d.destination_id ORDER BY d.tag_name, k.key",
            args,
        ).fetchall()
        out = []
        scoped = f"{where} AND" if where else "WHERE"
        for tag_name, dest_id, key, tag_type, count in groups:
            target_key, target_id = key, dest_id
            new = (routes or {}).get(tag_name)
            if new is not None and new[1] == tag_type:
                target_key = new[0]
                target_id = self.destination_id(new[0], new[1], new[2], now)
            stored = self.conn.execute(
                "INSERT INTO messages (destination_id, payload, dedup_id, tag_name, created_at,"
                " deadline, trace_id, next_attempt_at) SELECT ?, payload, dedup_id, tag_name,"
                f" created_at, deadline, trace_id, ? FROM dead_letters d {scoped}"
                " d.tag_name = ? AND d.destination_id = ? AND NOT EXISTS (SELECT 1 FROM"
                " delivered x WHERE x.destination_id = ? AND x.dedup_id = d.dedup_id"
                " AND x.delivered_at > ?) ORDER BY d.id ON CONFLICT DO NOTHING",
                (target_id, now, *args, tag_name, dest_id, target_id, now - DEDUP_WINDOW),
            ).rowcount
            out.append({
                "tag": tag_name, "from": key, "to": target_key, "dead_letters": count,
                "requeued": stored, "already_sent_or_pending": count - stored,
            })  # fmt: skip
        self.conn.execute(f"DELETE FROM dead_letters AS d {where}", args)
        return out

    def purge(self, *, pending: bool, dead: bool, destination: str | None = None) -> int:
        count = 0
        if dead:
            where, args = self._dead_filter(destination, ())
            count += self.conn.execute(f"DELETE FROM dead_letters AS d {where}", args).rowcount
        if pending:
            if destination:
                count += self.conn.execute(
                    "DELETE FROM messages WHERE destination_id ="
                    " (SELECT id FROM destinations WHERE key = ?)",
                    (destination,),
                ).rowcount
            else:
                count += self.conn.execute("DELETE FROM messages").rowcount
        return count

    def forget_delivered(self, now: float) -> int:
        """Drop dedup ids delivered before the window (inside a transaction)."""
        return self.conn.execute(
            "DELETE FROM delivered WHERE delivered_at <= ?", (now - DEDUP_WINDOW,)
        ).rowcount

    def forget_counts(self, now: float) -> int:
        """Drop delivery counts older than any window shows (inside a transaction)."""
        return self.conn.execute(
            "DELETE FROM delivery_counts WHERE bucket < ?", (bucket_of(now - KEEP_SECONDS),)
        ).rowcount

    def delivery_counts(self, since: int, fine_since: int) -> list[CountRow]:
        """Per destination, the counts of every bucket from `fine_since`, and those from
        `since` to it summed as bucket 0 (see `delivery_counts.read_range`)."""
        rows = self.conn.execute(
            "SELECT k.key, k.tag_type, CASE WHEN c.bucket >= ?2 THEN c.bucket ELSE 0 END AS b,"
            " sum(c.delivered), sum(c.retried), sum(c.dead_lettered)"
            " FROM delivery_counts AS c JOIN destinations AS k ON k.id = c.destination_id"
            " WHERE c.bucket >= ?1 GROUP BY k.key, k.tag_type, b",
            (since, fine_since),
        ).fetchall()
        return [CountRow(*r) for r in rows]

    def checkpoint(self) -> None:
        self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")


# -- jobs: what the server asks the writer process to do inside a group commit, as
# job(store, now, *args). Module-level functions, so that they travel by name.


def claim(
    store: Store, now: float, destination_id: int, worker: str, limit: int, lease: float
) -> Claimed:
    return store.claim(destination_id, worker, limit, now + lease, now)


def settle(store: Store, now: float, worker: str, plan: Settlement) -> None:
    store.settle(worker, plan, now)


def extend(store: Store, now: float, worker: str, ids: list[int], lease: float) -> None:
    store.extend(worker, ids, now + lease)


def release(store: Store, now: float, worker: str, ids: list[int]) -> None:
    store.release(worker, ids, now)


def forget_delivered(store: Store, now: float) -> int:
    """The once-a-minute cleanup: dedup ids past their window, delivery counts past a day."""
    return store.forget_delivered(now) + store.forget_counts(now)
