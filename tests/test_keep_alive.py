"""Idle connections: kept longer than a reverse proxy keeps its own (TAGSERVER_KEEP_ALIVE_SECONDS),
so a proxy never reuses one the server is closing."""

import re
import socket
import time

import pytest
from support import LOOPBACK, ServerProcess, minimal_container

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: sgtm.shop.test\r\n\r\n"


def ask(sock: socket.socket) -> bytes:
    """One request on an open connection; the whole answer (b"" when it was closed)."""
    try:
        sock.sendall(REQUEST)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                return answer
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        declared = re.search(rb"(?i)content-length: *(\d+)", head)
        assert declared, head
        length = int(declared.group(1))
        while len(body) < length:
            body += sock.recv(65536)
        return answer
    except (BrokenPipeError, ConnectionResetError):
        return b""


@pytest.mark.slow
def test_an_idle_connection_outlives_uvicorns_five_seconds_and_ends_when_told(tmp_path):
    (tmp_path / "default").mkdir()
    (tmp_path / "short").mkdir()
    with (
        ServerProcess(tmp_path / "default", minimal_container()) as default,
        ServerProcess(
            tmp_path / "short", minimal_container(), env={"TAGSERVER_KEEP_ALIVE_SECONDS": "1"}
        ) as short,
    ):
        kept = socket.create_connection((LOOPBACK, default.port), timeout=5)
        closed = socket.create_connection((LOOPBACK, short.port), timeout=5)
        with kept, closed:
            assert ask(kept).startswith(b"HTTP/1.1 200")
            assert ask(closed).startswith(b"HTTP/1.1 200")
            time.sleep(6)  # past uvicorn's own default of 5 s, past the short server's 1 s
            assert ask(kept).startswith(b"HTTP/1.1 200")  # the same connection, still open
            assert ask(closed) == b""  # the server closed it after 1 s idle
