"""Container history: every container the server accepted, and every one it refused.

Kept in the data dir as one SQLite file (`history.sqlite`, WAL) that every worker of the
server and the `tagserver container …` commands share. A write is one `BEGIN IMMEDIATE`
transaction, so the workers that all see the same file change record it once: an entry is
added only when it differs (hash or verdict) from the newest one.

`History` is the small interface the server and the CLI use. With the outbox on PostgreSQL
(`TAGSERVER_OUTBOX_URL`) the history lives there too (`history_pg.PgHistory`), shared by every
instance on every machine; `history_backend.open_history` picks the backend.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

FILENAME = "history.sqlite"
ACCEPTED, REFUSED = "accepted", "refused"
KEEP = 1000  # entries kept; the oldest go first
_SCHEMA = """
CREATE TABLE IF NOT EXISTS containers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    status TEXT NOT NULL,
    hash TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    at REAL NOT NULL,
    source TEXT NOT NULL,
    raw BLOB NOT NULL,
    problems TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class Entry:
    id: int
    status: str  # accepted | refused
    hash: str
    name: str
    version: str
    at: float
    source: str  # the file it was read from
    raw: bytes  # the file's bytes, as read
    problems: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.status == ACCEPTED

    def data(self) -> Any:
        """The container as JSON, or None when the file was not JSON at all."""
        try:
            return json.loads(self.raw)
        except (ValueError, UnicodeDecodeError):
            return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "hash": self.hash,
            "name": self.name,
            "version": self.version,
            "at": self.at,
            "source": self.source,
            "problems": list(self.problems),
        }


class HistoryUnavailable(RuntimeError):
    """The history's store cannot be reached; the message says where (never a password)."""


class History(Protocol):
    def record(
        self,
        status: str,
        raw: bytes,
        source: str,
        name: str = "",
        version: str = "",
        problems: Iterable[str] = (),
    ) -> Entry | None:
        """Add an entry unless the newest one has the same hash and status (then None)."""

    def entries(self, limit: int | None = None) -> list[Entry]:
        """Newest first."""

    def get(self, entry_id: int) -> Entry | None: ...

    def close(self) -> None: ...


def content_hash(raw: bytes) -> str:
    """The hash a container is known by (the same as `Container.hash`)."""
    return hashlib.sha256(raw).hexdigest()[:12]


class SQLiteHistory:
    """History in a SQLite file, safe for concurrent processes on one machine."""

    def __init__(self, path: str | Path, keep: int = KEEP) -> None:
        self.path = Path(path)
        self.keep = keep
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # used from the reload thread and the event loop's thread: one at a time
        self.lock = threading.Lock()
        self.db = sqlite3.connect(
            self.path, timeout=10, isolation_level=None, check_same_thread=False
        )
        self.db.execute("PRAGMA busy_timeout = 10000")
        if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute(_SCHEMA)

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
        with self.lock:
            return self._record(status, digest, raw, source, name, version, problem_list)

    def _record(
        self,
        status: str,
        digest: str,
        raw: bytes,
        source: str,
        name: str,
        version: str,
        problem_list: list[str],
    ) -> Entry | None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")  # one writer at a time: workers race for the same change
        try:
            newest = db.execute(
                "SELECT hash, status FROM containers ORDER BY id DESC LIMIT 1"
            ).fetchone()
            if newest == (digest, status):
                db.execute("COMMIT")
                return None
            at = time.time()
            cursor = db.execute(
                "INSERT INTO containers (status, hash, name, version, at, source, raw, problems)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (status, digest, name, version, at, source, raw, json.dumps(problem_list)),
            )
            entry_id = int(cursor.lastrowid or 0)
            db.execute("DELETE FROM containers WHERE id <= ?", (entry_id - self.keep,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return Entry(entry_id, status, digest, name, version, at, source, raw, tuple(problem_list))

    def entries(self, limit: int | None = None) -> list[Entry]:
        with self.lock:
            rows = self.db.execute(
                "SELECT id, status, hash, name, version, at, source, raw, problems FROM containers"
                " ORDER BY id DESC LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
        return [_entry(row) for row in rows]

    def get(self, entry_id: int) -> Entry | None:
        with self.lock:
            row = self.db.execute(
                "SELECT id, status, hash, name, version, at, source, raw, problems FROM containers"
                " WHERE id = ?",
                (entry_id,),
            ).fetchone()
        return _entry(row) if row else None

    def close(self) -> None:
        with self.lock:
            self.db.close()


def _entry(row: tuple[Any, ...]) -> Entry:
    entry_id, status, digest, name, version, at, source, raw, problems = row
    return Entry(entry_id, status, digest, name, version, at, source, bytes(raw),
                 tuple(json.loads(problems)))  # fmt: skip


def open_history(data_dir: str | Path) -> History:
    """The SQLite history of the server whose data dir is `data_dir` (`history_backend`
    picks PostgreSQL instead when the outbox is there)."""
    return SQLiteHistory(Path(data_dir) / FILENAME)


# -- naming an entry -----------------------------------------------------------------------------

_BACK = re.compile(r"-(\d+)")
_ID = re.compile(r"#(\d+)")


class UnknownRef(LookupError):
    """REF names no entry, or more than one; the message says which and why."""


def resolve(entries: list[Entry], ref: str) -> Entry:
    """The entry REF names, `entries` newest first.

    REF is `-N` (N accepted containers back: `-0` the newest, `-1` the one before), `#ID`
    (the number `history` shows), a `version` (its newest entry, accepted ones first), or a
    hash prefix of at least 4 characters.
    """
    ref = ref.strip()
    accepted = [e for e in entries if e.accepted]
    back = _BACK.fullmatch(ref)
    if back:
        n = int(back.group(1))
        if n >= len(accepted):
            raise UnknownRef(
                f"{ref}: the history holds {len(accepted)} accepted container"
                f"{'s' if len(accepted) != 1 else ''}"
            )
        return accepted[n]
    by_id = _ID.fullmatch(ref)
    if by_id:
        for entry in entries:
            if entry.id == int(by_id.group(1)):
                return entry
        raise UnknownRef(f"{ref}: no such entry in the history")
    versions = [e for e in entries if e.version == ref]
    if versions:
        return next((e for e in versions if e.accepted), versions[0])
    if len(ref) >= 4 and re.fullmatch(r"[0-9a-fA-F]+", ref):
        hashes = {e.hash for e in entries if e.hash.startswith(ref.lower())}
        if len(hashes) > 1:
            raise UnknownRef(f"{ref}: ambiguous, matches hashes {', '.join(sorted(hashes))}")
        if hashes:
            found = [e for e in entries if e.hash in hashes]
            return next((e for e in found if e.accepted), found[0])
    known = ", ".join(dict.fromkeys(e.version for e in accepted if e.version)) or "none"
    raise UnknownRef(
        f"{ref}: no container with this version or hash (versions: {known}; "
        "or use -N, #ID, a hash prefix)"
    )
