"""The server's log lines while it serves: written by a thread, so logging never waits on a
slow stderr, yet every line is written, in order, and all of them by the end of the shutdown."""

from __future__ import annotations

import io
import logging
import threading
import time

from tagserver.logs import BackgroundWriter, Formatter


class SlowStream(io.StringIO):
    """A stderr that takes its time (a full pipe, a busy disk) until `opened` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = threading.Event()

    def write(self, text: str) -> int:
        self.opened.wait(10)
        return super().write(text)


def serving_with(stream: SlowStream) -> tuple[BackgroundWriter, logging.StreamHandler[SlowStream]]:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(Formatter())
    logging.getLogger().addHandler(handler)
    writer = BackgroundWriter(handler)
    writer.start()
    return writer, handler


def test_logging_does_not_wait_for_the_stream_and_shutdown_writes_every_line_in_order():
    log = logging.getLogger("tagserver.test.logs")
    log.setLevel(logging.INFO)
    stream = SlowStream()
    writer, handler = serving_with(stream)
    try:
        started = time.monotonic()
        for n in range(500):
            log.info("line %d", n)
        assert time.monotonic() - started < 5  # the stream is still blocked meanwhile
        assert stream.getvalue() == ""
        stream.opened.set()
        writer.stop()  # the server's shutdown
    finally:
        writer.stop()
        logging.getLogger().removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [f"line {n}" for n in range(500)]
    assert all(" INFO tagserver.test.logs: " in line for line in lines)


def test_after_the_shutdown_lines_are_written_directly():
    log = logging.getLogger("tagserver.test.logs")
    log.setLevel(logging.INFO)
    stream = SlowStream()
    stream.opened.set()
    writer, handler = serving_with(stream)
    try:
        log.info("while serving")
        writer.stop()
        log.warning("after")
        assert stream.getvalue().splitlines()[-1].endswith("WARNING tagserver.test.logs: after")
    finally:
        writer.stop()
        logging.getLogger().removeHandler(handler)
    assert "while serving" in stream.getvalue().splitlines()[0]


def test_the_time_of_each_line_is_its_own():
    formatter = Formatter()
    first = logging.LogRecord("x", logging.INFO, "", 0, "a", None, None)
    first.created, first.msecs = 1_700_000_000.25, 250.0
    later = logging.LogRecord("x", logging.INFO, "", 0, "b", None, None)
    later.created, later.msecs = 1_700_000_001.5, 500.0
    plain = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for record in (first, first, later, first):
        assert formatter.format(record) == plain.format(record)
