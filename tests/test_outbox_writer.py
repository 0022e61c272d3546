"""The outbox writer process's commits: the write lock another worker holds, and which
commits wait for their own fsync."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time

import pytest

from tagserver.delivery import outbox_store, outbox_writer
from tagserver.delivery.delivery_types import Settlement
from tagserver.delivery.outbox_store import Store, database_path
from tagserver.delivery.outbox_writer import Frames, frame, request_frame


def row(dedup_id: str) -> tuple:
    """An OutboxRow's fields, as the server sends them."""
    now = time.time()
    return ("dest", "http_request", {"url": "http://x"}, "{}", dedup_id, "t", now, None, None, ())


def hold_lock(path, seconds: float, released: list[float] | None = None) -> threading.Thread:
    """Another worker's writer: holds the write lock for `seconds` (then notes the time)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")

    def release() -> None:
        time.sleep(seconds)
        conn.execute("COMMIT")
        if released is not None:
            released.append(time.monotonic())
        conn.close()

    thread = threading.Thread(target=release)
    thread.start()
    return thread


def writer_connection(path) -> sqlite3.Connection:
    store = Store.open(path)
    store.conn.execute("PRAGMA busy_timeout=0")
    return store.conn


def test_begin_takes_the_lock_soon_after_another_writer_releases_it(tmp_path):
    path = database_path(tmp_path)
    conn = writer_connection(path)
    released: list[float] = []
    holder = hold_lock(path, 0.06, released)
    outbox_writer.begin(conn)
    got = time.monotonic()
    conn.execute("COMMIT")
    holder.join()
    # SQLite's busy handler sleeps 1, 2, 5, 10, 15, 20, 25 ms …: it would retry at 53, then
    # 78 ms, 18 ms after this release
    assert got >= released[0]
    assert got - released[0] < 0.012


def test_begin_gives_up_after_the_lock_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(outbox_writer, "LOCK_TIMEOUT", 0.05)
    path = database_path(tmp_path)
    conn = writer_connection(path)
    holder = hold_lock(path, 0.3)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        outbox_writer.begin(conn)
    holder.join()
    outbox_writer.begin(conn)  # free again
    conn.execute("ROLLBACK")


def test_only_commits_with_messages_wait_for_their_own_fsync(tmp_path):
    """Bookkeeping alone is committed with synchronous=NORMAL; a commit holding messages with
    FULL, which syncs the WAL and so every frame written before it."""
    store = Store.open(database_path(tmp_path))
    store.conn.execute("PRAGMA busy_timeout=0")
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    ours, theirs = socket.socketpair()
    thread = threading.Thread(target=outbox_writer.serve, args=(theirs, store, True))
    thread.start()
    frames = Frames()

    def send(data: bytes) -> list:
        statements.append("-- group")
        ours.sendall(data)
        replies: list = []
        while not replies:
            replies = frames.feed(ours.recv(1 << 20))
        assert not isinstance(replies[0][2], Exception), replies[0][2]
        return replies

    try:
        send(request_frame(1, [row("a")], []))  # a hit's message
        send(request_frame(2, [], [(outbox_store.claim, (1, "w", 10, 30.0))]))
        send(request_frame(3, [], [(outbox_store.settle, ("w", Settlement(delivered=[1])))]))
        send(request_frame(4, [row("b")], [(outbox_store.release, ("w", [2]))]))
    finally:
        ours.close()
        thread.join(10)
        theirs.close()
        store.close()
    groups = "\n".join(statements).split("-- group")[1:]
    sync = [
        s.strip().split("\n")[0] if s.strip().startswith("PRAGMA synchronous") else ""
        for s in groups
    ]
    assert sync == ["", "PRAGMA synchronous=NORMAL", "", "PRAGMA synchronous=FULL"]
    conn = sqlite3.connect(database_path(tmp_path))
    assert conn.execute("SELECT dedup_id FROM messages").fetchall() == [("b",)]
    assert conn.execute("SELECT dedup_id FROM delivered").fetchall() == [("a",)]


def test_frame_round_trip():
    assert Frames().feed(frame(("committed", [1], None, 0.0))) == [("committed", [1], None, 0.0)]
