"""The outbox writer: a process of its own that commits the outbox's writes in groups.

Why a process and not a thread: a writer thread shares the GIL with the event loop, and
handing it back and forth around every SQLite call cost the hit path ~14 % of its throughput
(bench/README.md). This process has its own interpreter; per group, the event loop only
writes one frame and reads one back.

The two ends talk over a Unix socket pair. A frame is a 4-byte length and a pickle (both ends
are this code, started together; nothing else can reach the socket):

- server → writer: `(seq, rows, jobs)`: the rows `put` built (`OutboxRow`s' fields as plain
  tuples), and jobs as `(function, args)`,
  module-level functions of `outbox_store` run as `function(store, now, *args)`.
- writer → server: `("ready", pending)` once the database is open, or `("failed", reason)`;
  then, for each commit, `("committed", seqs, outcome, seconds)`. A commit takes every frame
  that has arrived while the previous one ran. `outcome` is `(touched, results, pending,
  duplicates)` (duplicates: seq → indices of that group's rows not stored, as repeats), or
  the exception that lost the whole transaction.

The writer exits when the server closes its end (also when the server is killed): it first
commits what it has, then checkpoints and closes the database. It ignores SIGINT and SIGTERM,
which a terminal or a service manager may send to the whole process group: the server stops
it in order, after its last commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from .delivery_types import Destination, OutboxRow, RowValues
from .outbox_store import MAX_ROWS_PER_INSERT, Store, is_disk_full

HEADER = struct.Struct("!I")
READ_SIZE = 1 << 20
START_TIMEOUT = 60.0  # the schema may wait for another worker's lock (30 s busy timeout)
STOP_TIMEOUT = 30.0

Job = tuple[Callable[..., Any], tuple[Any, ...]]
Request = tuple[int, list[RowValues], list[Job]]


def frame(value: Any) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def request_frame(seq: int, rows: list[RowValues], jobs: list[Job]) -> bytes:
    """What the server sends for one group; raises if a job cannot be pickled."""
    return frame((seq, rows, jobs))


class Frames:
    """Cuts a byte stream into the values its frames hold."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buffer = self.buffer
        buffer += data
        values, start = [], 0
        while len(buffer) - start >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer, start)
            end = start + HEADER.size + size
            if end > len(buffer):
                break
            values.append(pickle.loads(buffer[start + HEADER.size : end]))
            start = end
        del buffer[:start]
        return values


# -- the writer process


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fd, path, sync = int(argv[0]), Path(argv[1]), argv[2]
    with socket.socket(fileno=fd) as sock:
        try:
            store = Store.open(path, sync)
            # checkpoints run in the server's maintenance thread, never inside a commit
            store.conn.execute("PRAGMA wal_autocheckpoint=0")
            pending = store.pending_total()
        except Exception as exc:
            sock.sendall(frame(("failed", f"{type(exc).__name__}: {exc}")))
            return 1
        sock.sendall(frame(("ready", pending)))
        try:
            serve(sock, store)
        finally:
            with contextlib.suppress(sqlite3.Error):
                store.checkpoint()
            store.close()
    return 0


def serve(sock: socket.socket, store: Store) -> None:
    """Commit each group of requests and answer it, until the server closes its end (or
    dies: what it sent is still committed, though no one is left to hear it)."""
    frames = Frames()
    open_ = True
    while open_:
        data = receive(sock, 0)
        open_ = bool(data)
        requests: list[Request] = frames.feed(data)
        while open_:  # what arrived while the last commit ran joins this one
            try:
                data = receive(sock, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            open_ = bool(data)
            requests += frames.feed(data)
        if requests:
            reply = frame(commit(store, requests))
            try:
                sock.sendall(reply)
            except OSError:  # the server is gone
                return


def receive(sock: socket.socket, flags: int) -> bytes:
    """The next bytes from the server; b"" once it has closed its end or died."""
    try:
        return sock.recv(READ_SIZE, flags)
    except BlockingIOError:
        raise
    except OSError:  # reset by a server that died with our reply unread
        return b""


def commit(store: Store, requests: list[Request]) -> tuple[str, list[int], Any, float]:
    started = time.perf_counter()
    seqs = [seq for seq, _, _ in requests]
    rows = [OutboxRow(*row) for _, group_rows, _ in requests for row in group_rows]
    now = time.time()
    try:
        if (
            not any(jobs for _, _, jobs in requests)
            and len(rows) <= MAX_ROWS_PER_INSERT
            and store.knows_destinations(rows)
        ):
            # the common case under load: one INSERT in autocommit mode is its own transaction
            touched, repeats = store.insert(rows, now)
            outcome: Any = (touched, {}, None, by_group(requests, repeats))
        else:
            outcome = store.transaction(lambda: _work(store, rows, requests, now))
    except Exception as exc:
        outcome = portable(exc)
    return ("committed", seqs, outcome, time.perf_counter() - started)


def by_group(requests: list[Request], repeats: list[int]) -> dict[int, list[int]]:
    """Indices of rows not stored (over all groups' rows) → seq → indices in that group."""
    out: dict[int, list[int]] = {}
    if not repeats:
        return out
    start, i = 0, 0
    for seq, rows, _ in requests:
        end = start + len(rows)
        while i < len(repeats) and repeats[i] < end:
            out.setdefault(seq, []).append(repeats[i] - start)
            i += 1
        start = end
    return out


def _work(
    store: Store, rows: list[OutboxRow], requests: list[Request], now: float
) -> tuple[dict[int, Destination], dict[int, list[tuple[bool, Any]]], int, dict[int, list[int]]]:
    """Inside one transaction: the rows, then each job in its own savepoint."""
    conn = store.conn
    touched, repeats = store.insert(rows, now) if rows else ({}, [])
    results: dict[int, list[tuple[bool, Any]]] = {}
    for seq, _, jobs in requests:
        for function, args in jobs:
            conn.execute("SAVEPOINT job")
            try:
                results.setdefault(seq, []).append((True, function(store, now, *args)))
                conn.execute("RELEASE job")
            except sqlite3.Error as exc:
                if not conn.in_transaction or is_disk_full(exc):
                    raise  # the whole transaction is lost: every waiter must know
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                results.setdefault(seq, []).append((False, portable(exc)))
            except Exception as exc:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                results.setdefault(seq, []).append((False, portable(exc)))
    return touched, results, store.pending_total(), by_group(requests, repeats)


def portable(exc: Exception) -> Exception:
    """The exception itself if it survives a pickle, else a RuntimeError that says it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


# -- the server's side


def writer_environment() -> dict[str, str]:
    """What the writer needs to import the same code: no settings, so no secrets."""
    return {
        name: value
        for name, value in os.environ.items()
        if name.startswith(("PYTHON", "LC_")) or name in ("PATH", "HOME", "LANG", "TMPDIR", "TZ")
    }


class WriterProcess(asyncio.Protocol):
    """Starts the writer process, sends it requests, hands its replies to `on_reply`."""

    def __init__(
        self,
        path: Path,
        sync: str,
        on_reply: Callable[[tuple[str, list[int], Any, float]], None],
        on_lost: Callable[[str], None],
    ) -> None:
        self.path, self.sync = path, sync
        self.on_reply, self.on_lost = on_reply, on_lost
        self.process: subprocess.Popen[bytes] | None = None
        self.transport: asyncio.Transport | None = None
        self.frames = Frames()
        self.ready: asyncio.Future[int] | None = None
        self.closing = False

    async def start(self) -> int:
        """Start the process; the number of pending messages once it has opened the database."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno()), str(self.path), self.sync],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                env=writer_environment(),
            )
        self.ready = loop.create_future()
        await loop.connect_accepted_socket(lambda: self, ours)
        try:
            return await asyncio.wait_for(asyncio.shield(self.ready), START_TIMEOUT)
        except BaseException:
            await self.close()
            raise

    def send(self, data: bytes) -> None:
        """Send a frame made by `request_frame`."""
        assert self.transport is not None
        self.transport.write(data)

    async def close(self) -> None:
        """Let the process finish (it commits what it has) and wait for it to exit."""
        self.closing = True
        if self.transport is not None:
            self.transport.close()
        process = self.process
        if process is None:
            return
        try:
            await asyncio.to_thread(process.wait, STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a socket's (connect_accepted_socket)

    def data_received(self, data: bytes) -> None:
        for reply in self.frames.feed(data):
            kind = reply[0]
            if kind == "committed":
                self.on_reply(reply)
            elif self.ready is not None and not self.ready.done():
                if kind == "ready":
                    self.ready.set_result(reply[1])
                else:
                    self.ready.set_exception(RuntimeError(f"the outbox cannot open: {reply[1]}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        process = self.process
        reason = "the outbox writer process exited"
        if process is not None and process.poll() is not None:
            reason += f" with status {process.returncode}"
        elif process is not None and not self.closing:
            # its socket is gone, so it is of no use: make sure it ends, and reap it
            reason = "the outbox writer process closed its connection"
            process.kill()
            asyncio.get_running_loop().run_in_executor(None, process.wait)
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(RuntimeError(reason))
        elif not self.closing:
            self.on_lost(reason)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
