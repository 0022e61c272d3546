"""An open-loop load generator: requests at evenly spaced times, latency from the scheduled time.

    python bench/steady.py URL PATH RATE SECONDS BODY_FILE [-H 'Name: value' ...]

Why not `hey -q`: hey's workers each fire at `rate / connections` on their own ticker, all
started at once, so the server sees bursts of `connections` requests (64 at a time) and the
"fixed rate" p50 mostly measures the queue a burst builds. Here one scheduler sends request n
at `start + n / rate` on any idle keep-alive connection (opening more when none is idle, up to
`--connections`), and a request's latency runs from its scheduled time: a server that falls
behind is charged for the wait (no coordinated omission). `EVENT_ID` in the body becomes a
unique id per request. Prints one JSON line: rps, p50, p90, p99, max (ms), errors, late
(requests that could not even be sent on time because every connection was busy).

Plain asyncio streams on loopback, uvloop when installed; run it on a core of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from urllib.parse import urlsplit


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def exchange(self, request: bytes) -> int:
        """Send one request, read its response; the status code."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await self.reader.readexactly(length)
        return status


async def run(args: argparse.Namespace) -> dict[str, float | int]:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    template = open(args.body, "rb").read()  # noqa: SIM115, ASYNC230 - read before the clock starts
    headers = "".join(f"{h}\r\n" for h in args.header)
    idle: list[Connection] = []
    opened = 0
    latencies: list[float] = []
    errors = late = 0
    done = asyncio.Event()
    outstanding = 0
    run_id = f"{os.getpid()}-{int(time.time())}"

    def request(n: int) -> bytes:
        body = template.replace(b"EVENT_ID", f"steady-{run_id}-{n}".encode())
        return (
            f"POST {args.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: {args.content_type}\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
        ).encode() + body

    async def one(n: int, due: float, conn: Connection | None) -> None:
        nonlocal opened, errors, outstanding
        try:
            if conn is None:  # counted in `opened` by the scheduler already
                conn = Connection(*await asyncio.open_connection(host, port))
            status = await conn.exchange(request(n))
            latencies.append(time.perf_counter() - due)
            if not 200 <= status < 300:
                errors += 1
            idle.append(conn)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            opened -= 1
        finally:
            outstanding -= 1
            if outstanding == 0:
                done.set()

    loop = asyncio.get_running_loop()
    interval = 1.0 / args.rate
    total = int(args.rate * args.seconds)
    start = time.perf_counter() + 0.05
    tasks = set()
    for n in range(total):
        due = start + n * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if not idle and opened >= args.connections:
            late += 1  # every connection busy: wait for one (charged to this request's latency)
            while not idle and opened >= args.connections:
                await asyncio.sleep(0.0005)
        conn = idle.pop() if idle else None
        if conn is None:
            opened += 1
        outstanding += 1
        done.clear()
        task = loop.create_task(one(n, due, conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if outstanding:
        await asyncio.wait_for(done.wait(), 60)
    elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0.0
        )

    return {
        "rps": len(latencies) / elapsed,
        "p50": pct(0.50),
        "p90": pct(0.90),
        "p99": pct(0.99),
        "max": latencies[-1] * 1000 if latencies else 0.0,
        "errors": errors,
        "late": late,
        "connections": opened,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("path")
    parser.add_argument("rate", type=float)
    parser.add_argument("seconds", type=float)
    parser.add_argument("body")
    parser.add_argument("-H", "--header", action="append", default=[])
    parser.add_argument("-T", "--content-type", default="application/json")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        print(json.dumps(asyncio.run(run(args))))
    else:
        print(json.dumps(uvloop.run(run(args))))


if __name__ == "__main__":
    main()
