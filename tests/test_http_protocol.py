"""`tagserver serve`'s HTTP protocol: an answer's head and body leave in one write, and
answers that must not wait for a body (HEAD, no body, streamed) still leave at once."""

import asyncio
import re

import pytest
import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from support import free_port

from tagserver.http_protocol import HttpProtocol


async def small(request):
    return Response(b'{"ok":true}', media_type="application/json")


async def empty(request):
    return Response(status_code=204)


async def stream(request):
    async def chunks():
        yield b"first\n"
        await asyncio.sleep(0.3)
        yield b"second\n"

    return StreamingResponse(chunks(), media_type="text/plain")


async def started_then_failed(request):
    raise RuntimeError("boom")


APP = Starlette(
    routes=[
        Route("/small", small, methods=["GET", "HEAD", "POST"]),
        Route("/empty", empty, methods=["GET", "POST"]),
        Route("/stream", stream),
        Route("/fail", started_then_failed),
    ]
)


class RecordingTransport(asyncio.Transport):
    """Stands in for the socket: keeps every write() the protocol makes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        if data:  # as uvloop's transport: an empty write sends nothing
            self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def exchange(raw: bytes, settle: float = 0.05) -> list[bytes]:
    config = uvicorn.Config(APP, http=HttpProtocol, log_level="warning", lifespan="off")
    config.load()
    server_state = uvicorn.server.ServerState()
    protocol = HttpProtocol(config=config, server_state=server_state, app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(raw)
    await asyncio.sleep(settle)
    protocol.connection_lost(None)
    return transport.writes


def test_an_answer_with_a_body_is_one_write():
    writes = asyncio.run(exchange(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert len(writes) == 1
    head, _, body = writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 11" in head
    assert body == b'{"ok":true}'


def test_pipelined_requests_get_one_write_each_in_order():
    raw = b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}" * 3
    writes = asyncio.run(exchange(raw))
    assert len(writes) == 3
    assert all(w.startswith(b"HTTP/1.1 200 OK") and w.endswith(b'{"ok":true}') for w in writes)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"HEAD /small HTTP/1.1\r\nHost: x\r\n\r\n", b"200 OK"),
        (b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\n", b"204 No Content"),
    ],
)
def test_an_answer_without_a_body_is_not_held(raw, status):
    writes = asyncio.run(exchange(raw))
    assert len(writes) == 1
    assert writes[0].startswith(b"HTTP/1.1 " + status) and writes[0].endswith(b"\r\n\r\n")


def test_a_streamed_answer_is_not_held():
    writes = asyncio.run(exchange(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n", settle=0.5))
    head, first, second, end = writes
    assert head.startswith(b"HTTP/1.1 200 OK") and b"transfer-encoding: chunked" in head
    assert head.endswith(b"\r\n\r\n")  # the head left alone, before the first chunk
    assert (first, second, end) == (b"6\r\nfirst\n\r\n", b"7\r\nsecond\n\r\n", b"0\r\n\r\n")


def test_a_failing_app_still_gets_uvicorns_500():
    writes = asyncio.run(exchange(b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n"))
    answer = b"".join(writes)
    assert answer.startswith(b"HTTP/1.1 500 Internal Server Error")
    assert answer.endswith(b"Internal Server Error")


def test_a_real_server_answers_over_tcp_with_uvloop():
    """The protocol as `tagserver serve` runs it: uvloop, real sockets, keep-alive."""
    port = free_port()
    config = uvicorn.Config(
        APP, host="127.0.0.1", port=port, http=HttpProtocol, log_level="warning"
    )
    server = uvicorn.Server(config)

    async def run():
        serving = asyncio.create_task(server.serve())
        for _ in range(100):
            if server.started:
                break
            await asyncio.sleep(0.02)
        answers = []
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for path in (b"/small", b"/empty", b"/small"):
            writer.write(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"content-length: (\d+)", head)
            body = await reader.readexactly(int(length.group(1))) if length else b""
            answers.append(head + body)
        writer.close()
        server.should_exit = True
        await serving
        return answers

    answers = uvloop.run(run())
    assert answers[0].startswith(b"HTTP/1.1 200 OK") and answers[0].endswith(b'{"ok":true}')
    assert answers[1].startswith(b"HTTP/1.1 204 No Content")
    assert answers[2] == answers[0]
