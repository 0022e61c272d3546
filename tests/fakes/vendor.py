"""A fake vendor: a real HTTP/1.1 server on 127.0.0.1 that records what it receives.

It runs its own event loop in a thread, so tests (sync or async) and server subprocesses can
all talk to it. Tell it how to misbehave, one request at a time:

    vendor = FakeVendor().start()
    vendor.fail(2)                  # next 2 requests get 500
    vendor.throttle(1, retry_after=1)
    vendor.slow(0.5)                # the next answer comes after 0.5 s
    vendor.reset(1)                 # the next connection is reset (TCP RST)
    vendor.junk(1)                  # the next answer is not HTTP at all
    vendor.reject(lambda r: b"bad" in r.body)   # 400 for matching requests, always
    vendor.down() / vendor.up()     # stop / resume listening on the same port

`vendor.accepted` lists the requests answered with 2xx.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LOOPBACK = "127.0.0.1"


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    time: float
    status: int = 0  # what the vendor answered (0: reset or junk)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    body: bytes = b'{"ok":true}'
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    action: str = "answer"  # answer | reset | junk


Responder = Callable[[Received], "Answer | None"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class FakeVendor:
    def __init__(self, port: int | None = None, keep: bool = True) -> None:
        self.port = port or _free_port()
        self.keep = keep  # False: only count requests (benchmarks, long outages)
        self.count = 0
        self.received: list[Received] = []
        self._plan: deque[Answer] = deque()
        self._rules: list[Responder] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self.default = Answer()

    # -- control

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> FakeVendor:
        return self.up()

    def up(self) -> FakeVendor:
        self._call(self._up())
        return self

    def down(self) -> FakeVendor:
        self._call(self._down())
        return self

    def close(self) -> None:
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> FakeVendor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # -- behaviour

    def then(self, *answers: Answer) -> None:
        with self._lock:
            self._plan.extend(answers)

    def fail(self, times: int = 1, status: int = 500, body: bytes = b'{"error":"boom"}') -> None:
        self.then(*[Answer(status, body) for _ in range(times)])

    def throttle(self, times: int = 1, retry_after: float | str = 1) -> None:
        headers = {"Retry-After": str(retry_after)}
        self.then(*[Answer(429, b'{"error":"slow down"}', headers) for _ in range(times)])

    def slow(self, seconds: float, times: int = 1) -> None:
        self.then(*[Answer(delay=seconds) for _ in range(times)])

    def reset(self, times: int = 1) -> None:
        self.then(*[Answer(action="reset") for _ in range(times)])

    def junk(self, times: int = 1) -> None:
        self.then(*[Answer(action="junk") for _ in range(times)])

    def reject(
        self,
        predicate: Callable[[Received], bool],
        status: int = 400,
        body: bytes = b'{"error":"invalid message"}',
    ) -> None:
        self.respond(lambda r: Answer(status, body) if predicate(r) else None)

    def respond(self, responder: Responder) -> None:
        """A rule consulted for every request (after planned answers): an Answer or None."""
        with self._lock:
            self._rules.append(responder)

    def clear(self) -> None:
        with self._lock:
            self._plan.clear()
            self._rules.clear()

    # -- what arrived

    @property
    def accepted(self) -> list[Received]:
        with self._lock:
            return [r for r in self.received if 200 <= r.status < 300]

    def accepted_json(self) -> list[Any]:
        return [r.json() for r in self.accepted]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until `count` requests were accepted; bounded in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            accepted = self.accepted
            if len(accepted) >= count:
                return accepted
            time.sleep(0.02)
        raise AssertionError(
            f"the vendor accepted {len(self.accepted)} requests, expected {count}, "
            f"within {timeout}s ({len(self.received)} received in all)"
        )

    # -- the server

    async def _up(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._serve, LOOPBACK, self.port, reuse_address=True, backlog=1024
            )

    async def _down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._conns):
            writer.transport.abort()
        self._conns.clear()

    def _next_answer(self, request: Received) -> Answer:
        with self._lock:
            if self._plan:
                return self._plan.popleft()
            rules = list(self._rules)
        for rule in rules:
            answer = rule(request)
            if answer is not None:
                return answer
        return self.default

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                request = Received(method, path, headers, body, time.time())
                answer = self._next_answer(request)
                with self._lock:
                    self.count += 1
                    if self.keep:
                        self.received.append(request)
                if answer.delay:
                    await asyncio.sleep(answer.delay)
                if answer.action == "reset":
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                if answer.action == "junk":
                    writer.write(b"\x00\x01garbage, not HTTP\r\n\r\n")
                    await writer.drain()
                    writer.close()
                    return
                request.status = answer.status
                reason = {200: "OK", 400: "Bad Request", 429: "Too Many Requests"}.get(
                    answer.status, "X"
                )
                out = [
                    f"HTTP/1.1 {answer.status} {reason}",
                    f"Content-Length: {len(answer.body)}",
                    "Content-Type: application/json",
                ]
                out += [f"{k}: {v}" for k, v in answer.headers.items()]
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + answer.body)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self._conns.discard(writer)


def webhook_tag(url: str, name: str = "hook", **params: Any) -> dict[str, Any]:
    """An `http_request` tag (container.json entry) that posts each event's id and name."""
    body = {"event_id": "{{event_id}}", "event_name": "{{event_name}}"}
    return {
        "name": name,
        "type": "http_request",
        "fire_on": ["all"],
        "params": {"url": url, "body": body, **params},
    }


def main() -> None:
    """Run a fake vendor on a port (for benchmarks): python -m fakes.vendor PORT."""
    import sys

    vendor = FakeVendor(int(sys.argv[1]) if len(sys.argv) > 1 else None).start()
    print(vendor.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        vendor.close()


if __name__ == "__main__":
    main()
