"""Benchmark: draining the outbox, one `http_request` message per vendor request.

    python bench/bench_drain.py                               # this checkout, 20 000 messages
    python bench/bench_drain.py --tree /work/main --tree .    # checkouts side by side
    python bench/bench_drain.py --messages 5000 --rounds 3
    python bench/bench_drain.py --vendor-delay 0.02 --concurrency 16  # a vendor 20 ms away

A fake vendor (`tests/fakes`) runs on loopback in its own process, so its CPU is not counted.
For each round and each checkout (`--tree`, alternating), a fresh process imports tagserver
from that checkout (PYTHONPATH), fills a new outbox with N messages for one `http_request`
destination (a webhook URL with an API-key header), then starts the Dispatcher in-process
(uvloop, the shared httpx client, a preview with no session, the container's redactor, as
`tagserver serve` has them) and waits until the outbox is empty. It prints the drain rate
(messages/s, wall clock) and the CPU per delivered message: of the whole server (its process
and the outbox writer process) and of the event-loop thread alone, then the medians per
checkout.
`--vendor-delay` makes every answer take that long (an endpoint that is not on loopback: the
rate then depends on the sends in flight, `--concurrency`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk_live_bench_0123456789abcdef"
VENDOR = """
import asyncio, sys, time
import uvloop
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # the fake vendor's loop: keep it cheap
sys.path.insert(0, sys.argv[1])
from fakes.vendor import Answer, FakeVendor
vendor = FakeVendor(keep=False).start()
vendor.default = Answer(delay=float(sys.argv[2]))  # the vendor's answer time (network + work)
print(vendor.url, flush=True)
while True:
    time.sleep(3600)
"""


async def drain(url: str, count: int, data_dir: str, concurrency: int = 0) -> dict[str, Any]:
    from tagserver.tags.http_request import HttpRequestTag

    from tagserver.delivery.dispatch import Dispatcher
    from tagserver.delivery.outbox import Outbox
    from tagserver.plugins import Outgoing, Registry
    from tagserver.preview import Preview
    from tagserver.redact import Redactor
    from tagserver.settings import Settings

    limits: dict[str, Any] = {"send_concurrency": concurrency} if concurrency else {}
    settings = Settings(data_dir=data_dir, outbox_max_messages=max(100_000, count * 2), **limits)
    outbox = Outbox(settings)
    await outbox.start()
    route = {
        "method": "POST",
        "url": url + "/hook",
        "headers": {"X-Api-Key": SECRET},
        "body_format": "json",
    }
    now = time.time()
    batch: list[Outgoing] = []
    for i in range(count):
        payload = {"event_id": f"e{i}", "event_name": "purchase", "value": 42.5, "currency": "EUR"}
        batch.append(
            Outgoing(
                destination="http_request:127.0.0.1:bench",
                payload=payload,
                dedup_id=f"e{i}",
                tag_type="http_request",
                tag_name="hook",
                route=route,
                deadline=now + 72 * 3600,
                created_at=now,
            )
        )
        if len(batch) == 1000:
            await outbox.put(batch)
            batch = []
    if batch:
        await outbox.put(batch)
    assert outbox.pending == count, outbox.pending

    preview = Preview(settings)
    await preview.start()
    container_redactor = Redactor([SECRET])
    gc.collect()
    gc.freeze()  # as `tagserver serve` does (tagserver.web.app.quiet_gc)
    gc.set_threshold(20_000, 20, 20)
    dispatcher = Dispatcher(
        outbox,
        Registry(tags={"http_request": HttpRequestTag}),
        settings,
        preview=preview,
        redact=lambda: container_redactor,
    )
    cpu0, thread0, wall0 = process_cpu(outbox), time.thread_time(), time.perf_counter()
    await dispatcher.start()
    deadline = wall0 + 600
    while outbox.pending > 0 and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    wall = time.perf_counter() - wall0
    cpu, thread = process_cpu(outbox) - cpu0, time.thread_time() - thread0
    left = outbox.pending
    await dispatcher.close()
    await preview.close()
    await outbox.close()
    done = count - left
    return {
        "delivered": done,
        "seconds": round(wall, 3),
        "msg_per_s": round(done / wall, 1),
        "cpu_us_per_msg": round(cpu / max(1, done) * 1e6, 1),
        "loop_cpu_us_per_msg": round(thread / max(1, done) * 1e6, 1),
    }


def process_cpu(outbox: Any) -> float:
    """CPU seconds of this process and of the outbox's writer process (older checkouts
    commit in a thread of this process instead)."""
    seconds = time.process_time()
    writer = getattr(getattr(outbox, "_writer", None), "process", None)
    if writer is not None:
        fields = Path(f"/proc/{writer.pid}/stat").read_text().rsplit(")", 1)[1].split()
        seconds += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


def child(args: argparse.Namespace) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as data_dir:
        result = asyncio.run(drain(args.url, args.messages, data_dir, args.concurrency))
    print(json.dumps(result), flush=True)


def parent(args: argparse.Namespace) -> None:
    trees = [Path(t).resolve() for t in (args.tree or [ROOT])]
    vendor = subprocess.Popen(
        [sys.executable, "-c", VENDOR, str(ROOT / "tests"), str(args.vendor_delay)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert vendor.stdout is not None
        url = vendor.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        results: dict[Path, list[dict[str, Any]]] = {t: [] for t in trees}
        for round_ in range(args.rounds):
            for tree in trees:
                env = {**os.environ, "PYTHONPATH": str(tree)}
                out = subprocess.run(
                    [sys.executable, __file__, "--child", "--url", url, "--messages", str(args.messages),
                     "--concurrency", str(args.concurrency)],
                    cwd=tree, env=env, capture_output=True, text=True, timeout=900, check=False,
                )  # fmt: skip
                if out.returncode != 0:
                    sys.exit(f"{tree}: child failed\n{out.stderr}")
                result = json.loads(out.stdout.strip().splitlines()[-1])
                results[tree].append(result)
                print(f"round {round_ + 1} {tree}: {result}", flush=True)
        print(f"\nmedians, {args.messages} messages, {args.rounds} rounds:")
        print(f"{'checkout':40} {'msg/s':>8} {'CPU us/msg':>11} {'loop us/msg':>12}")
        for tree, runs in results.items():
            rate = statistics.median(r["msg_per_s"] for r in runs)
            cpu = statistics.median(r["cpu_us_per_msg"] for r in runs)
            loop = statistics.median(r["loop_cpu_us_per_msg"] for r in runs)
            print(f"{str(tree):40} {rate:8.0f} {cpu:11.0f} {loop:12.0f}")
    finally:
        vendor.terminate()
        vendor.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tree", action="append", help="checkout to import tagserver from")
    parser.add_argument(
        "--vendor-delay", type=float, default=0.0, help="seconds the fake vendor takes per answer"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=0,
        help="TAGSERVER_SEND_CONCURRENCY (default: the setting's)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    child(args) if args.child else parent(args)


if __name__ == "__main__":
    main()
