"""The server's log lines, written by a thread of their own while it serves.

A hit never waits on stderr: the `log` tag writes a line per event, and a write to a pipe or
a disk that is slow for a moment would stop the event loop, and every hit in flight with it.
While the server runs, the root logger's handler formats each record where it is logged and
queues the text; a thread writes what is queued, every line waiting in one write (a system
call per batch instead of per line), in the order they were logged. At shutdown every queued
line is written before the process goes on; later lines are written directly again.

Only the handler the server installs itself works this way: when logging was set up by
someone else (a test's capture handler, an application embedding the server), their handlers
stay as they are.
"""

from __future__ import annotations

import atexit
import logging
import queue
import sys
import threading
import time
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Formatter(logging.Formatter):
    """`FORMAT`'s lines, with the date and time worked out once a second, not once a line
    (`time.strftime` is most of a line's formatting; the log tag writes one per event)."""

    def __init__(self) -> None:
        super().__init__(FORMAT)
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        known, text = self._second
        if second != known:
            text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = (second, text)  # one assignment: safe from any thread
        return f"{text},{int(record.msecs):03d}"  # what default_msec_format "%s,%03d" gives


class QueuedLines(logging.Handler):
    """Formats each record at once (its values as they are now) and queues the line."""

    def __init__(self, lines: queue.SimpleQueue[str | None], formatter: logging.Formatter):
        super().__init__()
        self.lines = lines
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.put(self.format(record))
        except Exception:  # as StreamHandler does: a bad record must not break the caller
            self.handleError(record)


class BackgroundWriter:
    """Swaps `direct` (one of the root logger's handlers) for `QueuedLines` and a thread
    writing to its stream, and back."""

    def __init__(self, direct: logging.StreamHandler[TextIO]) -> None:
        self.direct = direct
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        formatter = direct.formatter or Formatter()
        self.front = QueuedLines(self.lines, formatter)
        self.front.setLevel(direct.level)
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.thread is not None:
            return
        self.thread = threading.Thread(target=self._write, name="tagserver-log", daemon=True)
        self.thread.start()
        root = logging.getLogger()
        root.addHandler(self.front)
        root.removeHandler(self.direct)

    def stop(self) -> None:
        """Write every queued line; later ones are written directly."""
        thread, self.thread = self.thread, None
        if thread is None:
            return
        root = logging.getLogger()
        root.addHandler(self.direct)
        root.removeHandler(self.front)
        self.lines.put(None)  # the thread ends once it has written what came before
        thread.join()
        self._flush(self._waiting([])[0])  # queued by another thread meanwhile

    def _write(self) -> None:
        ended = False
        while not ended:
            first = self.lines.get()
            if first is None:
                return
            batch, ended = self._waiting([first])
            self._flush(batch)

    def _waiting(self, batch: list[str]) -> tuple[list[str], bool]:
        """`batch` and every line queued now, without waiting for more; True at the end."""
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return batch, False
            if line is None:
                return batch, True
            batch.append(line)

    def _flush(self, batch: list[str]) -> None:
        if not batch:
            return
        stream = self.direct.stream
        try:
            stream.write("\n".join(batch) + "\n")
            stream.flush()
        except Exception:  # stderr closed or full: nothing better to do than go on
            pass


_writer: BackgroundWriter | None = None


def configure(level: str) -> None:
    """Plain-text lines on stderr, once per process (uvicorn workers start fresh); nothing
    when the root logger has handlers already."""
    global _writer
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Formatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # FORMAT shows no thread or process: a record need not look them up (the logging
    # HOWTO's "Optimization")
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    _writer = BackgroundWriter(handler)
    atexit.register(_writer.stop)  # a process that ends without its shutdown still flushes


def write_in_background() -> None:
    """From now on the handler `configure` installed writes on its own thread (serving)."""
    if _writer is not None:
        _writer.start()


def write_directly() -> None:
    """Write every queued line now; later lines are written by the thread that logs them."""
    if _writer is not None:
        _writer.stop()
