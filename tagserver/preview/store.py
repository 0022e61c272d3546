"""Where previewed hits live so that every worker (and, with Redis, every machine) sees them.

Two implementations of one small synchronous interface, called from a worker's writer
thread and from the UI routes (through `asyncio.to_thread`):

- `SqliteStore`: one SQLite file in WAL mode shared by the workers of one machine. By
  default it lives in shared memory (`/dev/shm`), because previewed event data holds raw
  personal data that must not be written to disk; it falls back to the data dir elsewhere.
- `RedisStore`: a real shared service for instances that span machines.

Both keep at most `per_session` hits per session and `total` hits in all, dropping the
oldest first, and a bounded number of delivery results per hit. Every change gets a
sequence number in a per-session feed, which the live stream (SSE) reads from.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import orjson

from ..settings import Settings

log = logging.getLogger("tagserver.preview")

MAX_DELIVERIES_PER_HIT = 50
RETENTION_SECONDS = 86400  # sessions (and their hits) are forgotten a day after they expire
SHARED_MEMORY = Path("/dev/shm")

Summary = dict[str, Any]


class Store(Protocol):
    per_session: int
    total: int

    def put_session(self, data: dict[str, Any]) -> None: ...
    def get_session(self, sid: str) -> dict[str, Any] | None: ...
    def list_sessions(self) -> list[dict[str, Any]]: ...
    def delete_session(self, sid: str) -> None: ...
    def add_hits(self, hits: list[tuple[str, Summary, dict[str, Any]]]) -> None: ...
    def add_deliveries(self, items: list[tuple[str, dict[str, Any]]]) -> list[int]: ...
    def hits(self, sid: str, limit: int) -> list[Summary]: ...
    def hit(self, sid: str, trace_id: str) -> dict[str, Any] | None: ...
    def changes(self, sid: str, after: int, limit: int = 200) -> list[dict[str, Any]]: ...
    def cursor(self) -> int: ...
    def clear(self, sid: str) -> None: ...
    def count_failure(self, key: str, window: float) -> None: ...
    def failures(self, key: str, window: float) -> int: ...
    def reset_failures(self, key: str) -> None: ...
    def prune(self) -> None: ...
    def close(self) -> None: ...


def delivery_stats(deliveries: list[dict[str, Any]]) -> dict[str, int]:
    """A hit's messages by where their delivery stands now (each message's latest result):
    `total` messages with a result, `delivered`, `retrying`, and `failed` (dead-lettered)."""
    latest: dict[tuple[Any, Any], Any] = {}
    for d in deliveries:  # in the order they happened: a later result replaces an earlier one
        latest[(d.get("tag"), d.get("dedup_id"))] = d.get("outcome")
    outcomes = list(latest.values())
    return {
        "total": len(outcomes),
        "delivered": outcomes.count("delivered"),
        "retrying": outcomes.count("retry"),
        "failed": sum(1 for o in outcomes if o not in ("delivered", "retry")),
    }


def default_sqlite_path(settings: Settings) -> Path:
    if settings.preview_store:
        return Path(settings.preview_store)
    if SHARED_MEMORY.is_dir() and os.access(SHARED_MEMORY, os.W_OK):
        # one file per data dir (and user), so instances on one machine never mix their hits
        ident = f"{os.getuid()}:{Path(settings.data_dir).resolve()}".encode()
        return SHARED_MEMORY / f"tagserver-preview-{hashlib.sha256(ident).hexdigest()[:16]}.sqlite3"
    return settings.data_path / "preview.sqlite3"


def open_store(settings: Settings) -> Store:
    per_session = max(1, settings.preview_max_hits_per_session)
    total = max(1, settings.preview_max_hits)
    if settings.redis_url:
        return RedisStore(settings.redis_url, per_session, total)
    path = default_sqlite_path(settings)
    owner = None if settings.preview_store else str(Path(settings.data_dir).resolve())
    return SqliteStore(path, per_session, total, owner=owner)


def sweep_orphans() -> int:
    """Remove shared-memory stores whose data dir is gone (its server is gone for good).

    Each automatic store leaves `<file>.owner` naming its data dir; shared memory is not
    cleaned before a reboot, so without this every deleted data dir would leave a file behind.
    """
    removed = 0
    if not SHARED_MEMORY.is_dir():
        return 0
    for marker in SHARED_MEMORY.glob("tagserver-preview-*.sqlite3.owner"):
        try:
            if marker.stat().st_uid != os.getuid() or Path(marker.read_text()).exists():
                continue
            base = str(marker)[: -len(".owner")]
            for suffix in ("", "-wal", "-shm"):
                Path(base + suffix).unlink(missing_ok=True)
            marker.unlink(missing_ok=True)
            removed += 1
        except OSError:
            continue
    return removed


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


# -- SQLite ---------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, created REAL, expires REAL, data TEXT);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    session TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    kind TEXT NOT NULL,          -- 'hit' or 'delivery'
    summary TEXT,                -- hits only: what the list shows
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_session ON entries(session, seq);
CREATE INDEX IF NOT EXISTS entries_by_trace ON entries(trace_id, kind);
CREATE INDEX IF NOT EXISTS entries_by_kind ON entries(kind, seq);
CREATE TABLE IF NOT EXISTS login_failures (key TEXT NOT NULL, time REAL NOT NULL);
CREATE INDEX IF NOT EXISTS login_failures_by_key ON login_failures(key, time);
"""


class SqliteStore:
    """The store of one machine. The file is opened on first use, so servers that never
    preview never create it."""

    def __init__(self, path: Path, per_session: int, total: int, owner: str | None = None) -> None:
        self.path = path
        self.per_session = per_session
        self.total = total
        self.owner = owner  # the data dir this automatic (shared-memory) store belongs to
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _db(self) -> Any:
        with self._lock:
            if self._conn is None:
                self._conn = self._connect()
            yield self._conn

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)  # owner-only from the start
        os.close(fd)
        if self.owner:
            Path(self.owner).mkdir(parents=True, exist_ok=True)  # the sweep keys on it
            Path(f"{self.path}.owner").write_text(self.owner)
        conn = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")  # preview data is disposable: never wait on fsync
        conn.execute("PRAGMA busy_timeout=10000")
        conn.executescript(_SCHEMA)
        return conn

    # sessions

    def put_session(self, data: dict[str, Any]) -> None:
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO sessions (id, created, expires, data) VALUES (?, ?, ?, ?)",
                (data["id"], data["created"], data["expires"], _dumps(data)),
            )

    def get_session(self, sid: str) -> dict[str, Any] | None:
        with self._db() as db:
            row = db.execute("SELECT data FROM sessions WHERE id = ?", (sid,)).fetchone()
        return orjson.loads(row[0]) if row else None

    def list_sessions(self) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute("SELECT data FROM sessions ORDER BY created DESC").fetchall()
        return [orjson.loads(r[0]) for r in rows]

    def delete_session(self, sid: str) -> None:
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM entries WHERE session = ?", (sid,))
            db.execute("DELETE FROM sessions WHERE id = ?", (sid,))
            db.execute("COMMIT")

    # hits and deliveries

    def add_hits(self, hits: list[tuple[str, Summary, dict[str, Any]]]) -> None:
        if not hits:
            return
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT INTO entries (session, trace_id, kind, summary, data) "
                    "VALUES (?, ?, 'hit', ?, ?)",
                    [(sid, summary["id"], _dumps(summary), _dumps(trace))
                     for sid, summary, trace in hits],
                )  # fmt: skip
                for sid in {sid for sid, _, _ in hits}:
                    self._drop(db, db.execute(
                        "SELECT trace_id FROM entries WHERE session = ? AND kind = 'hit' "
                        "ORDER BY seq DESC LIMIT -1 OFFSET ?", (sid, self.per_session)))  # fmt: skip
                self._drop(db, db.execute(
                    "SELECT trace_id FROM entries WHERE kind = 'hit' "
                    "ORDER BY seq DESC LIMIT -1 OFFSET ?", (self.total,)))  # fmt: skip
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    @staticmethod
    def _drop(db: sqlite3.Connection, cursor: sqlite3.Cursor) -> None:
        ids = [(r[0],) for r in cursor.fetchall()]
        if ids:
            db.executemany("DELETE FROM entries WHERE trace_id = ?", ids)

    def add_deliveries(self, items: list[tuple[str, dict[str, Any]]]) -> list[int]:
        """Store delivery results; returns the indexes of those whose hit is not (yet) here."""
        unknown = []
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                for index, (trace_id, delivery) in enumerate(items):
                    row = db.execute(
                        "SELECT session FROM entries WHERE trace_id = ? AND kind = 'hit'",
                        (trace_id,),
                    ).fetchone()
                    if row is None:
                        unknown.append(index)
                        continue
                    (count,) = db.execute(
                        "SELECT COUNT(*) FROM entries WHERE trace_id = ? AND kind = 'delivery'",
                        (trace_id,),
                    ).fetchone()
                    if count >= MAX_DELIVERIES_PER_HIT:
                        continue
                    db.execute(
                        "INSERT INTO entries (session, trace_id, kind, data) "
                        "VALUES (?, ?, 'delivery', ?)",
                        (row[0], trace_id, _dumps(delivery)),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return unknown

    def _deliveries(self, db: sqlite3.Connection, trace_id: str) -> list[dict[str, Any]]:
        rows = db.execute(
            "SELECT data FROM entries WHERE trace_id = ? AND kind = 'delivery' ORDER BY seq",
            (trace_id,),
        ).fetchall()
        return [orjson.loads(r[0]) for r in rows]

    def hits(self, sid: str, limit: int) -> list[Summary]:
        with self._db() as db:
            rows = db.execute(
                "SELECT seq, summary FROM entries WHERE session = ? AND kind = 'hit' "
                "ORDER BY seq DESC LIMIT ?",
                (sid, limit),
            ).fetchall()
            out = []
            for seq, summary in reversed(rows):
                item = orjson.loads(summary)
                item["seq"] = seq
                item["deliveries"] = delivery_stats(self._deliveries(db, item["id"]))
                out.append(item)
        return out

    def hit(self, sid: str, trace_id: str) -> dict[str, Any] | None:
        with self._db() as db:
            row = db.execute(
                "SELECT data FROM entries WHERE trace_id = ? AND kind = 'hit' AND session = ?",
                (trace_id, sid),
            ).fetchone()
            if row is None:
                return None
            trace = orjson.loads(row[0])
            trace["deliveries"] = self._deliveries(db, trace_id)
        return trace

    def changes(self, sid: str, after: int, limit: int = 200) -> list[dict[str, Any]]:
        """Entries of one session newer than `after`: new hits (their summary) and new
        delivery results (the hit's updated delivery counts)."""
        with self._db() as db:
            rows = db.execute(
                "SELECT seq, kind, trace_id, summary FROM entries "
                "WHERE session = ? AND seq > ? ORDER BY seq LIMIT ?",
                (sid, after, limit),
            ).fetchall()
            out = []
            for seq, kind, trace_id, summary in rows:
                stats = delivery_stats(self._deliveries(db, trace_id))
                if kind == "hit":
                    item = orjson.loads(summary)
                    item.update(seq=seq, deliveries=stats)
                    out.append({"seq": seq, "kind": "hit", "hit": item})
                else:
                    out.append(
                        {"seq": seq, "kind": "delivery", "trace_id": trace_id, "deliveries": stats}
                    )
        return out

    def cursor(self) -> int:
        with self._db() as db:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'entries'").fetchone()
        return int(row[0]) if row else 0

    def clear(self, sid: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM entries WHERE session = ?", (sid,))

    # sign-in throttling, shared by all workers

    def count_failure(self, key: str, window: float) -> None:
        now = time.time()
        with self._db() as db:
            db.execute("INSERT INTO login_failures (key, time) VALUES (?, ?)", (key, now))
            db.execute("DELETE FROM login_failures WHERE time < ?", (now - 3600,))

    def failures(self, key: str, window: float) -> int:
        with self._db() as db:
            (count,) = db.execute(
                "SELECT COUNT(*) FROM login_failures WHERE key = ? AND time >= ?",
                (key, time.time() - window),
            ).fetchone()
        return int(count)

    def reset_failures(self, key: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM login_failures WHERE key = ?", (key,))

    def prune(self) -> None:
        """Forget sessions (and their hits) that expired more than a day ago."""
        if self._conn is None and not self.path.exists():
            return
        cutoff = time.time() - RETENTION_SECONDS
        with self._db() as db:
            old = db.execute("SELECT id FROM sessions WHERE expires < ?", (cutoff,)).fetchall()
        for (sid,) in old:
            self.delete_session(sid)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


# -- Redis ----------------------------------------------------------------------------------


class RedisStore:
    """The same store on Redis, for instances on several machines.

    Keys (prefix `tagserver:preview:`): `session:<sid>` (JSON), `sessions` (zset by creation),
    `seq` (counter), `hit:<tid>` (trace JSON), `sum:<tid>` (summary JSON), `of:<tid>` (its
    session), `dl:<tid>` (list of delivery JSON), `hits:<sid>` and `hits` (zsets by seq),
    `feed:<sid>` (zset of changes by seq), `login:<key>` (counter). Every hit key expires on
    its own too, so nothing outlives the retention even if pruning is interrupted.
    """

    prefix = "tagserver:preview:"

    def __init__(self, url: str, per_session: int, total: int) -> None:
        import redis

        self.per_session = per_session
        self.total = total
        self.redis = redis.Redis.from_url(
            url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30
        )

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # sessions

    def put_session(self, data: dict[str, Any]) -> None:
        ttl = max(60, int(data["expires"] - time.time()) + RETENTION_SECONDS)
        pipe = self.redis.pipeline()
        pipe.set(self._k("session", data["id"]), _dumps(data), ex=ttl)
        pipe.zadd(self._k("sessions"), {data["id"]: data["created"]})
        pipe.execute()

    def get_session(self, sid: str) -> dict[str, Any] | None:
        raw = self.redis.get(self._k("session", sid))
        return orjson.loads(raw) if raw else None

    def list_sessions(self) -> list[dict[str, Any]]:
        ids = [i.decode() for i in self.redis.zrevrange(self._k("sessions"), 0, 199)]
        if not ids:
            return []
        raws = self.redis.mget([self._k("session", i) for i in ids])
        gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
        if gone:
            self.redis.zrem(self._k("sessions"), *gone)
        return [orjson.loads(raw) for raw in raws if raw]

    def delete_session(self, sid: str) -> None:
        self.clear(sid)
        pipe = self.redis.pipeline()
        pipe.delete(self._k("session", sid), self._k("feed", sid))
        pipe.zrem(self._k("sessions"), sid)
        pipe.execute()

    # hits and deliveries

    def _drop_hits(self, items: list[tuple[str, str]]) -> None:
        if not items:
            return
        pipe = self.redis.pipeline()
        for sid, tid in items:
            pipe.delete(
                self._k("hit", tid), self._k("sum", tid), self._k("dl", tid), self._k("of", tid)
            )
            pipe.zrem(self._k("hits", sid), tid)
            pipe.zrem(self._k("hits"), f"{sid}:{tid}")
        pipe.execute()

    def add_hits(self, hits: list[tuple[str, Summary, dict[str, Any]]]) -> None:
        if not hits:
            return
        first = self.redis.incrby(self._k("seq"), len(hits)) - len(hits) + 1
        ttl = RETENTION_SECONDS * 2
        pipe = self.redis.pipeline()
        for seq, (sid, summary, trace) in enumerate(hits, start=first):
            tid = summary["id"]
            pipe.set(self._k("hit", tid), _dumps(trace), ex=ttl)
            pipe.set(self._k("sum", tid), _dumps(summary), ex=ttl)
            pipe.set(self._k("of", tid), sid, ex=ttl)
            pipe.zadd(self._k("hits", sid), {tid: seq})
            pipe.zadd(self._k("hits"), {f"{sid}:{tid}": seq})
            pipe.zadd(self._k("feed", sid), {f"h:{tid}": seq})
            pipe.expire(self._k("hits", sid), ttl)
            pipe.expire(self._k("feed", sid), ttl)
        pipe.execute()
        for sid in {sid for sid, _, _ in hits}:
            extra = self.redis.zcard(self._k("hits", sid)) - self.per_session
            if extra > 0:
                old = self.redis.zrange(self._k("hits", sid), 0, extra - 1)
                self._drop_hits([(sid, t.decode()) for t in old])
        extra = self.redis.zcard(self._k("hits")) - self.total
        if extra > 0:
            old = self.redis.zrange(self._k("hits"), 0, extra - 1)
            self._drop_hits([tuple(m.decode().split(":", 1)) for m in old])  # type: ignore[misc]
        for sid in {sid for sid, _, _ in hits}:  # the feed keeps nothing older than the hits
            oldest = self.redis.zrange(self._k("hits", sid), 0, 0, withscores=True)
            if oldest:
                self.redis.zremrangebyscore(self._k("feed", sid), "-inf", f"({oldest[0][1]}")

    def add_deliveries(self, items: list[tuple[str, dict[str, Any]]]) -> list[int]:
        unknown = []
        for index, (tid, delivery) in enumerate(items):
            sid = self.redis.get(self._k("of", tid))
            if sid is None:
                unknown.append(index)
                continue
            sid = sid.decode()
            if self.redis.llen(self._k("dl", tid)) >= MAX_DELIVERIES_PER_HIT:
                continue
            seq = self.redis.incr(self._k("seq"))
            pipe = self.redis.pipeline()
            pipe.rpush(self._k("dl", tid), _dumps(delivery))
            pipe.expire(self._k("dl", tid), RETENTION_SECONDS * 2)
            pipe.zadd(self._k("feed", sid), {f"d:{tid}:{seq}": seq})
            pipe.execute()
        return unknown

    def _deliveries(self, tid: str) -> list[dict[str, Any]]:
        return [orjson.loads(r) for r in self.redis.lrange(self._k("dl", tid), 0, -1)]

    def _summaries(self, tids: list[str]) -> dict[str, Summary]:
        if not tids:
            return {}
        raws = self.redis.mget([self._k("sum", t) for t in tids])
        pipe = self.redis.pipeline()
        for t in tids:
            pipe.lrange(self._k("dl", t), 0, -1)
        lists = pipe.execute()
        out = {}
        for tid, raw, dls in zip(tids, raws, lists, strict=True):
            if raw:
                item = orjson.loads(raw)
                item["deliveries"] = delivery_stats([orjson.loads(d) for d in dls])
                out[tid] = item
        return out

    def hits(self, sid: str, limit: int) -> list[Summary]:
        rows = self.redis.zrevrange(self._k("hits", sid), 0, limit - 1, withscores=True)
        rows.reverse()
        summaries = self._summaries([t.decode() for t, _ in rows])
        out = []
        for tid, seq in rows:
            item = summaries.get(tid.decode())
            if item:
                item["seq"] = int(seq)
                out.append(item)
        return out

    def hit(self, sid: str, trace_id: str) -> dict[str, Any] | None:
        owner = self.redis.get(self._k("of", trace_id))
        raw = self.redis.get(self._k("hit", trace_id))
        if raw is None or owner is None or owner.decode() != sid:
            return None
        trace = orjson.loads(raw)
        trace["deliveries"] = self._deliveries(trace_id)
        return trace

    def changes(self, sid: str, after: int, limit: int = 200) -> list[dict[str, Any]]:
        rows = self.redis.zrangebyscore(
            self._k("feed", sid), f"({after}", "+inf", start=0, num=limit, withscores=True
        )
        entries = [(m.decode().split(":"), int(seq)) for m, seq in rows]
        summaries = self._summaries(sorted({parts[1] for parts, _ in entries}))
        out = []
        for parts, seq in entries:
            item = summaries.get(parts[1])
            if item is None:
                continue  # pruned meanwhile
            if parts[0] == "h":
                out.append({"seq": seq, "kind": "hit", "hit": {**item, "seq": seq}})
            else:
                out.append({"seq": seq, "kind": "delivery", "trace_id": parts[1],
                            "deliveries": item["deliveries"]})  # fmt: skip
        return out

    def cursor(self) -> int:
        return int(self.redis.get(self._k("seq")) or 0)

    def clear(self, sid: str) -> None:
        tids = [t.decode() for t in self.redis.zrange(self._k("hits", sid), 0, -1)]
        self._drop_hits([(sid, t) for t in tids])
        self.redis.delete(self._k("feed", sid), self._k("hits", sid))

    # sign-in throttling

    def count_failure(self, key: str, window: float) -> None:
        name = self._k("login", key)
        pipe = self.redis.pipeline()
        pipe.incr(name)
        pipe.expire(name, int(window), nx=True)
        pipe.execute()

    def failures(self, key: str, window: float) -> int:
        return int(self.redis.get(self._k("login", key)) or 0)

    def reset_failures(self, key: str) -> None:
        self.redis.delete(self._k("login", key))

    def prune(self) -> None:
        self.list_sessions()  # drops expired session ids from the index; keys expire by TTL

    def close(self) -> None:
        self.redis.close()
