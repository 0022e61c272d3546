"""Benchmark: hits per second, end to end, against a bare Starlette app on the same machine.

    python bench/bench_hits.py                      # the real job (default), then idle tags
    python bench/bench_hits.py --mode real --workers2   # + tagserver --workers 2
    python bench/bench_hits.py --mode real --workers2 --tree ../before   # W2 from each, too
    python bench/bench_hits.py --tree ../before     # + E and K from another checkout
    python bench/bench_hits.py --mode one-tag       # the one-`http_request`-tag stand-in
    python bench/bench_hits.py --mode all           # real job, one tag, then a vendor outage
    python bench/bench_hits.py --mode outage --outage-minutes 1
    python bench/bench_hits.py --mode hits --tree ../other-checkout   # two versions of C
    python bench/bench_hits.py --mode hits --postgres   # B and C on a PostgreSQL outbox too
    python bench/bench_hits.py --mode hits --identity   # + a Meta tag, with and without the
                                                        #   identity cookie and geo headers

The real job (`real`, the default): the shipped `container.json` unchanged (log_all,
meta_capi, the dry TikTok/Pinterest/Snapchat tags, ga4_forward) with the Meta tag live
(pixel and token set) delivering to the fake Graph API (tests/fakes/graph.py) on loopback.
E = events-API purchases with full `user_data`; K = collector `page_view`/`purchase` hits
through /collect with a returning visitor's cookies (`_fbp`, `_fbc`, client id); I30 and
I100 = E with 30 and 100 more `http_request` tags whose triggers never match the event; A =
a bare Starlette app answering 204 to the same POSTs. Every server runs one worker pinned
with `taskset` to the same core (`--server-core`), wrk runs on the other one, and runs
alternate A E K I30 I100 A E K ... (the servers not measured are frozen with SIGSTOP).
Prints hits/s, p50/p99, the ratios to A and the idle tags' cost; then p99 at half of each
one's maximum rate (open loop, `bench/steady.py`); `--workers2` adds E on `--workers 2`
(on every core) and its ratio to E; with `--tree`, W2 from each checkout too, each against
that checkout's E.

One tag (`one-tag`, was `hits`): A = a bare Starlette app answering 204; B = `tagserver serve` handling the
same POST /api/events end to end (events API client → container with one `http_request` tag
→ outbox group commit → 200) while its dispatcher delivers every message to a fake vendor;
C = the same with the vendor unreachable (its lane pauses, messages pile up on disk): the hit
path alone. A2 = a bare Starlette app doing the same HTTP exchange as B and C (reads the body,
answers the same JSON): not the target's baseline, but it shows what the exchange itself costs.
One worker each, uvloop + httptools, `wrk` at 64 connections with a unique event id per
request, runs alternating A A2 B C A A2 B C. Prints hits/s, p50/p99 per run, the medians and
the ratios to A (and of B and C to A2); then p50/p99 of each at a fixed rate (open loop,
`bench/steady.py`), half of C's maximum. `--tree DIR` adds C as another checkout runs it (C1, C2 ...), in the same rounds:
on a shared machine, only versions measured side by side can be compared. `--postgres` starts
a PostgreSQL (Debian's binaries, a temporary cluster on loopback) and adds B and C with the
outbox there (`TAGSERVER_OUTBOX_URL`), in the same rounds; at the end the vendor of both C
servers comes up and each one's drain rate is measured for `--drain-seconds`. `--identity`
adds CM (C plus a `meta_capi` tag, Graph unreachable, hits with a User-Agent) and CI (the same server
setup, every hit carrying a valid identity cookie and Cloudflare geo headers): CI / CM is what
opening the cookie (AES-GCM) and filling the event's keys cost per hit.

Outage (`outage`): the fake vendor is down for N minutes while `hey` sends a steady rate of
hits; prints the server's RSS and the outbox backlog over time (memory stays flat: the backlog
lives on disk), then brings the vendor back and prints how fast the backlog drains.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fakes.vendor import FakeVendor  # noqa: E402

API_KEY = "bench-key"
BODY = {
    "event_name": "purchase",
    "client_id": "1234567890.1700000000",
    "page_location": "https://shop.example/checkout/thanks?order=1",
    "value": 42.5,
    "currency": "EUR",
    "transaction_id": "T-1",
    "items": [{"item_id": "SKU-1", "price": 42.5, "quantity": 1}],
}
# wrk calls `request` in each of its threads, each with its own counter: the thread's number
# keeps the event ids unique. Two threads counting alike sent every id twice, and the outbox
# stored each once: until 2026-12-06 half of every run's hits were repeats (`unique_ids`).
LUA_THREADS = """
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_no", threads)
end
"""
LUA = (
    LUA_THREADS
    + """
local counter = 0
local body = [[%s]]
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
%s
request = function()
  counter = counter + 1
  local id = string.format("bench-%%d-%%d-%%d", os.time(), thread_no, counter)
  return wrk.format(nil, "/api/events", nil, (body:gsub("EVENT_ID", id)))
end
"""
)
# for CM and CI (--identity): a browser's User-Agent; CI adds the cookie and geo headers
IDENTITY_SECRET = "bench-identity-secret-key"
UA_HEADER = 'wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0"'
META_TAG = {"name": "meta", "type": "meta_capi", "fire_on": ["all"],
            "params": {"pixel_id": "1234567890", "access_token": "bench-token"}}  # fmt: skip
BARE_APP = """
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

# what tagserver's events API answers for one accepted event
ANSWER = (
    b'{"accepted":1,"rejected":0,"results":[{"index":0,"accepted":true,'
    b'"event_id":"bench-1700000000-1","event_name":"purchase","tags_fired":["webhook"],'
    b'"tags_not_fired":{}}]}'
)


async def hit(request):
    return Response(status_code=204)


async def same_exchange(request):
    await request.body()
    return Response(ANSWER, media_type="application/json")


app = Starlette(routes=[Route("/api/events", hit, methods=["POST"])])
same_exchange_app = Starlette(routes=[Route("/api/events", same_exchange, methods=["POST"])])
"""


# -- the real job ---------------------------------------------------------------------------------

DEFAULT_CONTAINER = ROOT / "container.json"
PIXEL, TOKEN = "1234567890", "bench-meta-token"
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
# an events-API purchase with full user data (the scenario)
PURCHASE = {
    "event_name": "purchase",
    "event_id": "EVENT_ID",
    "client_id": "1234567890.1700000000",
    "page_location": "https://shop.example/checkout/thanks?order=1",
    "page_referrer": "https://shop.example/cart",
    "value": 42.5,
    "currency": "EUR",
    "transaction_id": "T-1",
    "items": [{"item_id": "SKU-1", "price": 21.25, "quantity": 2}],
    "user_id": "customer-7",
    "user_agent": UA,
    "ip_override": "203.0.113.7",
    "user_data": {
        "email_address": "Jane.Doe@Example.com",
        "phone_number": "+44 20 7946 0958",
        "address": {
            "first_name": "Jane",
            "last_name": "Doe",
            "city": "London",
            "postal_code": "SW1A 1AA",
            "country": "GB",
        },
    },  # fmt: skip
}
# a collector hit from collector.js: one event per hit, page_view or purchase in turn
COLLECT = {
    "pid": "3f2b8c1e-1d2f-4c4e-9a51-3f7a2b8c9d10",
    "ts": 1700000000000,
    "consent": {"ad_storage": "granted", "analytics_storage": "granted"},
    "user": {"email": "jane.doe@example.com", "country": "GB"},
    "events": [
        {"name": "EVENT_NAME", "id": "EVENT_ID", "params": {"value": 42.5, "currency": "EUR",
         "transaction_id": "T-1"},
         "page": {"page_location": "https://shop.example/checkout/thanks",
                  "page_referrer": "https://shop.example/cart", "page_title": "Thanks",
                  "language": "en-GB", "screen_resolution": "1920x1080"}}
    ],
}  # fmt: skip
LUA_EVENTS = (
    LUA_THREADS
    + """
local counter = 0
local body = [[%s]]
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
wrk.headers["User-Agent"] = "%s"
request = function()
  counter = counter + 1
  local id = string.format("bench-%%d-%%d-%%d", os.time(), thread_no, counter)
  return wrk.format(nil, "/api/events", nil, (body:gsub("EVENT_ID", id)))
end
"""
)
LUA_COLLECT = (
    LUA_THREADS
    + """
local counter = 0
local body = [[%s]]
wrk.method = "POST"
wrk.headers["Content-Type"] = "text/plain;charset=UTF-8"
wrk.headers["Origin"] = "%s"
wrk.headers["User-Agent"] = "%s"
wrk.headers["Cookie"] = "%s"
request = function()
  counter = counter + 1
  local id = string.format("bench-%%d-%%d-%%d", os.time(), thread_no, counter)
  local name = (counter %% 2 == 0) and "purchase" or "page_view"
  local text = body:gsub("EVENT_ID", id):gsub("EVENT_NAME", name)
  return wrk.format(nil, "/collect", nil, text)
end
"""
)
BARE_REAL_APP = """
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route


async def hit(request):
    return Response(status_code=204)


app = Starlette(routes=[Route("/api/events", hit, methods=["POST"]),
                        Route("/collect", hit, methods=["POST"])])
"""


def real_container(idle: int = 0, root: Path = ROOT) -> dict[str, Any]:
    """The shipped container.json (of the checkout at `root`), plus `idle` http_request tags
    that never fire."""
    container: dict[str, Any] = json.loads((root / "container.json").read_text())
    container.pop("$schema", None)
    for n in range(idle):
        container["triggers"].append({"name": f"idle_{n}", "event": f"never_{n}",
                                      "conditions": [{"variable": "page_path",
                                                      "operator": "starts_with",
                                                      "value": f"/idle/{n}"}]})  # fmt: skip
        container["tags"].append({
            "name": f"idle_{n}", "type": "http_request", "fire_on": [f"idle_{n}"],
            "params": {"url": f"http://127.0.0.1:9/idle/{n}", "body": {"e": "{{event_name}}"}},
        })  # fmt: skip
    return container


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# for CT: an exclude and an augment (with a {{variable}}) applied to the bench's one tag
TRANSFORMATIONS = [
    {"name": "no_phone", "type": "exclude", "keys": ["user_data.phone_number", "page_title"]},
    {"name": "stamp", "type": "augment", "set": {"brand": "acme", "source": "{{client_name}}"}},
]


def identity_headers() -> str:
    """wrk header lines: a valid identity cookie (email, phone, name, city sealed with the
    bench's secret key) and Cloudflare geo headers (loopback is a trusted proxy)."""
    sys.path.insert(0, str(ROOT))
    from tagserver.visitor.identity_cookie import Keyring, hashed_keys

    user = {"email_address": "jane@example.com", "phone_number": "+16505551212",
            "address": {"first_name": "Jane", "last_name": "Doe", "city": "Paris"}}  # fmt: skip
    value = Keyring(IDENTITY_SECRET, []).seal(hashed_keys(user), int(time.time()))
    headers = {"Cookie": f"tagserver_ident={value}", "CF-IPCountry": "FR",
               "CF-Region-Code": "IDF", "CF-Postal-Code": "75001"}  # fmt: skip
    return "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise SystemExit(f"server exited with {proc.returncode}; its log ends:\n{tail}")
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer in {timeout}s")


class Servers:
    """The fake vendor, the bare app and tagserver, all on loopback."""

    def __init__(
        self,
        work: Path,
        vendor_up: bool = True,
        env: dict[str, str] | None = None,
        pin: int | None = None,
    ):
        self.work = work
        self.pin = pin  # the core every one-worker server runs on (taskset), None: unpinned
        self.vendor = FakeVendor(keep=False)
        if vendor_up:
            self.vendor.up()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TAGSERVER_")}
        self.env.update(env or {})

    def start_bare(
        self, app: str = "app", source: str = BARE_APP
    ) -> tuple[str, subprocess.Popen[bytes]]:
        (self.work / "bare_app.py").write_text(source)
        port = free_port()
        proc = self._spawn(
            [sys.executable, "-m", "uvicorn", f"bare_app:{app}", "--app-dir", str(self.work),
             "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http",
             "httptools", "--no-access-log", "--log-level", "warning"],
            f"bare-{app}", pin=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url + "/", proc, self.work / f"bare-{app}.log")
        return url, proc

    def start_tagserver(
        self,
        name: str = "tagserver",
        vendor_url: str | None = None,
        tree: Path | None = None,
        extra_env: dict[str, str] | None = None,
        transformations: list[dict[str, Any]] | None = None,
        container: dict[str, Any] | None = None,
        workers: int = 1,
        extra_tags: list[dict[str, Any]] | None = None,
    ) -> tuple[str, subprocess.Popen[bytes]]:
        """`tagserver serve` with one worker; from `tree` (a checkout) if given: with the
        checkout's own `.venv` when it has one (its entry points and package mapping), else
        through PYTHONPATH."""
        vendor_url = vendor_url or self.vendor.url
        container = container or {
            "name": "bench",
            "version": "1",
            "clients": [{"name": "events_api", "type": "events_api"}],
            "triggers": [{"name": "all", "event": "*"}],
            "tags": [
                {
                    "name": "webhook",
                    "type": "http_request",
                    "fire_on": ["all"],
                    "params": {
                        "url": vendor_url + "/orders",
                        "headers": {"X-Api-Key": "vendor-key"},
                        "body": {
                            "event_id": "{{event_id}}",
                            "event": "{{event_name}}",
                            "order": "{{transaction_id}}",
                            "value": "{{value}}",
                            "currency": "{{currency}}",
                            "ip": "{{client_ip}}",
                        },
                    },
                }
            ],
        }
        if transformations:
            container["transformations"] = transformations
        container["tags"].extend(extra_tags or [])
        path = self.work / f"{name}.json"
        path.write_text(json.dumps(container))
        port = free_port()
        env = {
            "TAGSERVER_API_KEYS": API_KEY,
            "TAGSERVER_LOG_LEVEL": "warning",
            "TAGSERVER_PREVIEW_PASSWORD": "bench-preview-password",
        }
        python = sys.executable
        if tree is not None and (tree / ".venv" / "bin" / "python").exists():
            python = str(tree / ".venv" / "bin" / "python")
        elif tree is not None:
            env["PYTHONPATH"] = str(tree)
        env.update(extra_env or {})
        proc = self._spawn(
            [python, "-m", "tagserver", "serve", "--host", "127.0.0.1", "--port",
             str(port), "--container", str(path), "--data-dir", str(self.work / "data" / name),
             "--workers", str(workers)],
            name, env, pin=workers == 1,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url + "/healthz", proc, self.work / f"{name}.log")
        return url, proc

    def _spawn(
        self, args: list[str], name: str, env: dict[str, str] | None = None, pin: bool = False
    ) -> subprocess.Popen[bytes]:
        if pin and self.pin is not None:
            args = ["taskset", "-c", str(self.pin), *args]
        elif self.pin is not None:
            # every core: without this, a `--workers 2` server inherited the bench's own
            # affinity (wrk's core) and ran both workers on one core
            args = ["taskset", "-c", f"0-{(os.cpu_count() or 1) - 1}", *args]
        log = open(self.work / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        # an empty working directory: `python -m` puts it first on sys.path, and B's data dir
        # (work/tagserver) there would shadow the tagserver package as a namespace package
        cwd = self.work / "cwd"
        cwd.mkdir(exist_ok=True)
        proc = subprocess.Popen(
            args, env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=cwd,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.vendor.close()


# -- wrk ---------------------------------------------------------------------------------------


def to_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(
    url: str, seconds: float, connections: int, script: Path, core: int | None = None
) -> dict[str, Any]:
    pin = ["taskset", "-c", str(core)] if core is not None else []
    out = subprocess.run(
        [*pin, "wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rate,
        "p50": to_ms(latency["50"]),
        "p99": to_ms(latency["99"]),
        "non2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else "",
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
    }


def steady(
    url: str,
    seconds: float,
    rate: float,
    body_file: Path,
    path: str = "/api/events",
    headers: tuple[str, ...] = (f"Authorization: Bearer {API_KEY}",),
    content_type: str = "application/json",
    core: int | None = None,
) -> dict[str, Any]:
    """A fixed request rate, open loop (bench/steady.py): requests evenly spaced, a unique
    event id each, latency counted from each request's scheduled time. Not `hey -q`: its
    workers fire in step, so the server saw bursts of 64 and the p50 measured the bursts."""
    pin = ["taskset", "-c", str(core)] if core is not None else []
    flags = [arg for header in headers for arg in ("-H", header)]
    out = subprocess.run(
        [*pin, sys.executable, str(ROOT / "bench" / "steady.py"), url, path, str(rate),
         str(seconds), str(body_file), "-T", content_type, *flags],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return dict(json.loads(out))


def outbox_pending(data_dir: Path) -> int:
    path = data_dir / "outbox.sqlite3"
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT total(pending) FROM destinations").fetchone()[0])
    finally:
        conn.close()


def pg_pending(url: str) -> int:
    import asyncio

    import asyncpg

    async def count() -> int:
        conn = await asyncpg.connect(url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM tagserver_outbox_messages"))
        finally:
            await conn.close()

    return asyncio.run(count())


def drain_rate(vendor: FakeVendor, seconds: float) -> float:
    """Messages/s the vendor receives from its first delivery on, over `seconds`."""
    vendor.up()
    deadline = time.monotonic() + 60
    while vendor.count == 0 and time.monotonic() < deadline:  # the paused lane's next probe
        time.sleep(0.05)
    start, first = time.monotonic(), vendor.count
    time.sleep(seconds)
    return (vendor.count - first) / (time.monotonic() - start)


def disk_mb(data_dir: Path) -> float:
    return sum(p.stat().st_size for p in data_dir.glob("outbox.sqlite3*")) / 1e6


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (a server and its outbox writer)."""
    total = 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += rss_mb(int(child))
    except OSError:  # gone meanwhile
        pass
    return total


def machine() -> str:
    cpus = os.cpu_count()
    load = os.getloadavg()[0]
    return f"{cpus} CPUs, load average {load:.2f} at start, Python {sys.version.split()[0]}"


# -- modes ---------------------------------------------------------------------------------------


def visitor_cookies(url: str) -> str:
    """A returning visitor's Cookie header: what the server set on a first collector hit."""
    import httpx

    first = json.loads(json.dumps(COLLECT).replace("EVENT_NAME", "page_view"))
    first["events"][0]["page"]["page_location"] += "?fbclid=IwAR0bench"
    answer = httpx.post(
        url + "/collect", content=json.dumps(first).replace("EVENT_ID", "first"),
        headers={"content-type": "text/plain;charset=UTF-8", "origin": ORIGIN, "user-agent": UA},
    )  # fmt: skip
    answer.raise_for_status()
    jar = [h.split(";", 1)[0] for h in answer.headers.get_list("set-cookie")]
    return "; ".join(jar)


ORIGIN = "https://shop.example"


def run_real(args: argparse.Namespace) -> dict[str, Any]:
    """The real job: the shipped container with Meta live, events API and collector hits."""
    from fakes.graph import FakeGraph

    work = Path(tempfile.mkdtemp(prefix="bench-real-"))
    wrk_core = 1 - args.server_core if (os.cpu_count() or 1) > 1 else None
    if wrk_core is not None:
        os.sched_setaffinity(0, {wrk_core})  # the fake Graph API's threads, off the servers' core
    graph = FakeGraph(token=TOKEN, pixel_ids={PIXEL}).start()
    env = {
        "META_PIXEL_ID": PIXEL,
        "META_ACCESS_TOKEN": TOKEN,
        "TAGSERVER_META_GRAPH_URL": graph.url,
        "TAGSERVER_LOG_LEVEL": "info",  # the log tag writes its line (the default level)
        "TAGSERVER_ALLOWED_ORIGINS": ORIGIN,
        # one key for every server: the visitor's cookies are valid on each of them
        "TAGSERVER_SECRET_KEY": "bench-secret-key-bench-secret-key-bench",
    }
    servers = Servers(work, vendor_up=False, pin=args.server_core)
    try:
        started: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
        started["A bare starlette"] = servers.start_bare(source=BARE_REAL_APP)
        tagserver = servers.start_tagserver(
            "tagserver-e", container=real_container(), extra_env=env
        )
        scripts = {"events": work / "events.lua", "collect": work / "collect.lua"}
        scripts["events"].write_text(LUA_EVENTS % (json.dumps(PURCHASE), API_KEY, UA))
        cookie = visitor_cookies(tagserver[0])
        scripts["collect"].write_text(LUA_COLLECT % (json.dumps(COLLECT), ORIGIN, UA, cookie))
        # (name, server, script): A runs both scripts, the runs' names say which
        plan: list[tuple[str, str, str]] = [
            ("A  bare, events POST", "A bare starlette", "events"),
            ("A  bare, collect POST", "A bare starlette", "collect"),
            ("E  events API purchase", "E", "events"),
            ("K  collector hits", "E", "collect"),
        ]
        started["E"] = tagserver
        for idle in args.idle:
            if idle:
                name = f"I{idle}"
                started[name] = servers.start_tagserver(
                    f"tagserver-i{idle}", container=real_container(idle), extra_env=env
                )
                plan.append((f"{name:<4} E + {idle} idle tags", name, "events"))
        for number, tree in enumerate(args.tree or [], start=1):
            # E again, from another checkout (its .venv): two versions side by side
            name = f"E{number}"
            started[name] = servers.start_tagserver(
                f"tagserver-e{number}", container=real_container(root=Path(tree).resolve()),
                extra_env=env, tree=Path(tree).resolve(),
            )  # fmt: skip
            plan.append((f"{name}   E from {Path(tree).resolve().name}"[:26], name, "events"))
            plan.append((f"K{number}   K from {Path(tree).resolve().name}"[:26], name, "collect"))
        # W2 beside each E it is compared with: E's checkout, E's run of the same round
        own_e = {"W2 E on --workers 2": "E  events API purchase"}
        if args.workers2:
            started["W2"] = servers.start_tagserver(
                "tagserver-w2", container=real_container(), extra_env=env, workers=2
            )
            plan.append(("W2 E on --workers 2", "W2", "events"))
            for number, tree in enumerate(args.tree or [], start=1):
                root = Path(tree).resolve()
                name = f"W2{number}"
                started[name] = servers.start_tagserver(
                    f"tagserver-w2{number}", container=real_container(root=root),
                    extra_env=env, tree=root, workers=2,
                )  # fmt: skip
                label = f"{name}  W2 from {root.name}"[:26]
                plan.append((label, name, "events"))
                own_e[label] = next(lbl for lbl, server, _ in plan if server == f"E{number}")

        def only(name: str) -> None:
            """Freeze the others (SIGSTOP): no background delivery steals the measured one's CPU."""
            for other, (_, proc) in started.items():
                os.killpg(proc.pid, signal.SIGCONT if other == name else signal.SIGSTOP)
            time.sleep(0.2)

        probe(started["E"][0], graph)
        print(
            f"# real job: {args.connections} connections, {args.duration}s per run, servers on "
            f"core {args.server_core}, wrk on core {wrk_core}, {machine()}"
        )
        for _label, server, script in plan:  # warm up
            only(server)
            wrk(started[server][0], 2, args.connections, scripts[script], wrk_core)
        only("E")
        unique_ids(started["E"][0], args.connections, scripts["events"], graph, wrk_core)
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in plan}
        for round_no in range(args.rounds):
            for label, server, script in plan:
                only(server)
                cpu, idle = process_cpu(started[server][1].pid), machine_idle()
                result = wrk(started[server][0], args.duration, args.connections,
                             scripts[script], wrk_core)  # fmt: skip
                result["cpu"] = cpu_split(cpu, process_cpu(started[server][1].pid), result)
                result["idle"] = (machine_idle() - idle) / args.duration
                runs[label].append(result)
                print(
                    f"round {round_no + 1} {label:<26} {result['rps']:>7.0f} hits/s  "
                    f"p50 {result['p50']:6.2f} ms  p99 {result['p99']:6.2f} ms"
                    + (f"  non-2xx {result['non2xx']}" if result["non2xx"] else "")
                    + (f"  socket errors: {result['socket_errors']}" if result["socket_errors"] else "")
                )  # fmt: skip
        # each run's baseline: the bare app's run of the same POST
        bare = {label: f"A  bare, {script} POST" for label, _, script in plan}
        summary = {
            label: {
                "rps": statistics.median(r["rps"] for r in results),
                "p50": statistics.median(r["p50"] for r in results),
                "p99": max(r["p99"] for r in results),
                # each round's ratio to the bare app's run of the same round
                "ratios": [
                    r["rps"] / a["rps"] for r, a in zip(results, runs[bare[label]], strict=True)
                ],
            }
            for label, results in runs.items()
        }
        print(f"median of {args.rounds} rounds (p99: the worst round), load now "
              f"{os.getloadavg()[0]:.2f}:")  # fmt: skip
        for label, row in summary.items():
            ratios = ", ".join(f"{r:.2f}" for r in row["ratios"])
            print(
                f"  {label:<26} {row['rps']:>7.0f} hits/s  p50 {row['p50']:6.2f} ms  "
                f"p99 {row['p99']:6.2f} ms  ratio to A {statistics.median(row['ratios']):.2f}"
                f" (rounds: {ratios})"
            )
        print("targets: E ≥ 0.35× A, K ≥ 0.4× A, p99 ≤ 25 ms at half the maximum rate")
        base = summary["E  events API purchase"]["rps"]
        for label, row in summary.items():
            if label.startswith("I"):
                idle = int(label.split()[0][1:])
                cost = (base / row["rps"] - 1) * 100
                print(f"  {idle} idle tags: {row['rps'] / base:.3f} of E ({cost:+.1f} % per hit; "
                      f"target ≤ 5 % for 100)")  # fmt: skip
            if label.startswith("W2"):
                one = summary[own_e[label]]["rps"]
                print(f"  {label.split()[0]} --workers 2: {row['rps'] / one:.2f}× one worker of "
                      f"the same checkout ({own_e[label].split()[0]}; target ≥ 1.6)")  # fmt: skip
        print("where the CPU went (medians; µs per hit from /proc, cores over the run):")
        for label, results in runs.items():
            if label.startswith(("E", "K", "W2")):
                split = {
                    k: statistics.median(r["cpu"][k] for r in results) for k in results[0]["cpu"]
                }
                idle = statistics.median(r["idle"] for r in results)
                print(f"  {label:<26} worker(s) {split['server_us']:5.0f} µs, outbox writer(s) "
                      f"{split['writer_us']:4.0f} µs per hit; the server used {split['cores']:.2f} "
                      f"cores; {idle:.2f} of the machine's cores stood idle")  # fmt: skip
        bodies = {"events": work / "events.json", "collect": work / "collect.json"}
        bodies["events"].write_text(json.dumps(PURCHASE))  # EVENT_ID: unique per request
        bodies["collect"].write_text(json.dumps(COLLECT).replace("EVENT_NAME", "purchase"))
        for label, server, script in plan:
            if label.startswith(("I", "W2", "A")):  # A's half rate is beyond the generator
                continue
            rate = round(summary[label]["rps"] / 2, -1)
            only(server)
            headers: tuple[str, ...] = (f"Authorization: Bearer {API_KEY}", f"User-Agent: {UA}")
            content_type = "application/json"
            if script == "collect":
                headers = (f"Origin: {ORIGIN}", f"User-Agent: {UA}", f"Cookie: {cookie}")
                content_type = "text/plain;charset=UTF-8"
            path = "/api/events" if script == "events" else "/collect"
            result = steady(started[server][0], args.duration, rate, bodies[script], path=path,
                            headers=headers, content_type=content_type, core=wrk_core)  # fmt: skip
            print(f"steady {rate:>6.0f}/s {label:<26} got {result['rps']:>6.0f}/s  "
                  f"p50 {result['p50']:6.2f} ms  p99 {result['p99']:6.2f} ms  "
                  f"(open loop{', errors ' + str(result['errors']) if result['errors'] else ''})")  # fmt: skip
        for _, proc in started.values():
            os.killpg(proc.pid, signal.SIGCONT)
        time.sleep(1)
        print(f"the fake Graph API received {len(graph.requests)} requests meanwhile")
        return {"summary": summary}
    finally:
        servers.close()
        graph.stop()
        shutil.rmtree(work, ignore_errors=True)


def cpu_split(
    before: dict[str, float], after: dict[str, float], result: dict[str, Any]
) -> dict[str, float]:
    """A wrk run's CPU: µs per hit of the worker(s) and of the outbox writer(s), and the
    cores the server's processes used together."""
    hits = max(result["requests"], 1)
    used = {name: after[name] - before[name] for name in before}
    return {
        "server_us": used["server"] / hits * 1e6,
        "writer_us": used["writer"] / hits * 1e6,
        "cores": sum(used.values()) / (result["requests"] / max(result["rps"], 1e-9)),
    }


def machine_idle() -> float:
    """CPU seconds the whole machine has stood idle since boot (all cores, from /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")  # idle, iowait


def process_cpu(pgid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by a server's processes, from /proc: its
    worker(s) and its outbox writer (one session each: `start_new_session`)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"server": 0.0, "writer": 0.0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[2]) != pgid:  # the session's process group
            continue
        seconds = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        out["writer" if b"outbox_writer" in cmdline else "server"] += seconds
    return out


def run_delivery(args: argparse.Namespace) -> dict[str, Any]:
    """The delivery side's cost: the real job at a fixed, modest rate, CPU per hit from /proc.

    E (this checkout) and E1, E2 ... (`--tree`) get the same open-loop rate of events-API
    purchases (`bench/steady.py`) in alternating runs, the others frozen; each run ends once
    the fake Graph API has received every event. Prints, per hit, the CPU time of the worker
    and of its outbox writer (user + system, from /proc) and the Graph requests per 100 hits.
    CPU time, not hits/s: it is what a loaded, shared machine distorts least."""
    from fakes.graph import FakeGraph

    work = Path(tempfile.mkdtemp(prefix="bench-delivery-"))
    load_core = 1 - args.server_core if (os.cpu_count() or 1) > 1 else None
    if load_core is not None:
        os.sched_setaffinity(0, {load_core})
    graph = FakeGraph(token=TOKEN, pixel_ids={PIXEL}).start()
    env = {
        "META_PIXEL_ID": PIXEL,
        "META_ACCESS_TOKEN": TOKEN,
        "TAGSERVER_META_GRAPH_URL": graph.url,
        "TAGSERVER_LOG_LEVEL": "info",
    }
    servers = Servers(work, vendor_up=False, pin=args.server_core)
    try:
        started = {"E": servers.start_tagserver("tagserver-e", container=real_container(),
                                                extra_env=env)}  # fmt: skip
        for number, tree in enumerate(args.tree or [], start=1):
            root = Path(tree).resolve()
            started[f"E{number}"] = servers.start_tagserver(
                f"tagserver-e{number}", container=real_container(root=root), extra_env=env,
                tree=root,
            )  # fmt: skip
        body = work / "events.json"
        body.write_text(json.dumps(PURCHASE))
        headers = (f"Authorization: Bearer {API_KEY}", f"User-Agent: {UA}")

        def only(name: str) -> None:
            for other, (_, proc) in started.items():
                os.killpg(proc.pid, signal.SIGCONT if other == name else signal.SIGSTOP)
            time.sleep(0.2)

        def one_run(name: str, rate: float) -> dict[str, float]:
            url, proc = started[name]
            only(name)
            events, requests = len(graph.accepted_events()), graph.request_count()
            before = process_cpu(proc.pid)
            result = steady(url, args.duration, rate, body, headers=headers, core=load_core)
            sent = round(result["rps"] * args.duration) - result["errors"]
            deadline = time.monotonic() + 30
            while len(graph.accepted_events()) - events < sent and time.monotonic() < deadline:
                time.sleep(0.01)
            after = process_cpu(proc.pid)
            delivered = len(graph.accepted_events()) - events
            return {
                "server_us": (after["server"] - before["server"]) / delivered * 1e6,
                "writer_us": (after["writer"] - before["writer"]) / delivered * 1e6,
                "graph_per_100": (graph.request_count() - requests) / delivered * 100,
                "delivered": delivered,
                "p99": result["p99"],
            }

        print(f"# delivery cost: open loop at {args.delivery_rates} hits/s, {args.duration}s "
              f"per run, servers on core {args.server_core}, {machine()}")  # fmt: skip
        for name in started:  # warm up
            one_run(name, args.delivery_rates[0])
        runs: dict[tuple[str, float], list[dict[str, float]]] = {}
        for round_no in range(args.rounds):
            for rate in args.delivery_rates:
                for name in started:
                    r = one_run(name, rate)
                    runs.setdefault((name, rate), []).append(r)
                    print(f"round {round_no + 1} {name:<3} {rate:>5.0f}/s  CPU per hit: worker "
                          f"{r['server_us']:5.0f} us, writer {r['writer_us']:4.0f} us;  "
                          f"Graph requests per 100 hits {r['graph_per_100']:5.1f};  "
                          f"p99 {r['p99']:6.2f} ms;  {r['delivered']:.0f} delivered")  # fmt: skip
        print(f"median of {args.rounds} rounds, load now {os.getloadavg()[0]:.2f}:")
        summary: dict[str, dict[str, float]] = {}
        for (name, rate), results in runs.items():
            row = {k: statistics.median(r[k] for r in results) for k in results[0]}
            summary[f"{name} {rate:.0f}"] = row
            total = row["server_us"] + row["writer_us"]
            base = summary.get(f"E {rate:.0f}")
            ratio = ""
            if base is not None and name != "E":
                ratio = f"  E / {name} = {(base['server_us'] + base['writer_us']) / total:.2f}"
            print(f"  {name:<3} {rate:>5.0f}/s  {total:5.0f} us CPU per hit (worker "
                  f"{row['server_us']:.0f}, writer {row['writer_us']:.0f}), Graph requests per "
                  f"100 hits {row['graph_per_100']:.1f}{ratio}")  # fmt: skip
        for _, proc in started.values():
            os.killpg(proc.pid, signal.SIGCONT)
        return {"summary": summary}
    finally:
        servers.close()
        graph.stop()
        shutil.rmtree(work, ignore_errors=True)


def probe(url: str, graph: Any) -> None:
    """One purchase through the events API: Meta fires, and the fake Graph API receives it."""
    import httpx

    answer = httpx.post(
        url + "/api/events", content=json.dumps(PURCHASE).replace("EVENT_ID", "probe-1"),
        headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json",
                 "user-agent": UA},
    ).json()  # fmt: skip
    result = answer["results"][0]
    if "meta_capi" not in result.get("tags_fired", []):
        raise SystemExit(f"meta_capi did not fire: {answer}")
    deadline = time.monotonic() + 15
    while not graph.requests and time.monotonic() < deadline:
        time.sleep(0.1)
    if not graph.requests or graph.requests[-1].status != 200:
        raise SystemExit("the fake Graph API did not accept the probe's event")
    print(f"probe: fired {result['tags_fired']}; Graph API accepted it")


def unique_ids(url: str, connections: int, script: Path, graph: Any, core: int | None) -> None:
    """Every hit wrk sends carries an event id of its own: each one reaches the fake Graph API
    as its own event. A script whose threads repeat ids measures repeats, which the outbox
    stores once and nobody delivers (until 2026-12-06, half of every run's hits)."""
    before = len(graph.accepted_events())
    sent = wrk(url, 2, connections, script, core)["requests"]
    deadline = time.monotonic() + 30
    while len(graph.accepted_events()) - before < sent and time.monotonic() < deadline:
        time.sleep(0.2)
    delivered = len(graph.accepted_events()) - before
    if delivered < sent:
        raise SystemExit(
            f"{sent} hits sent, {delivered} events reached the Graph API: repeated ids?"
        )
    print(f"unique ids: each of {sent} hits reached the Graph API as its own event")


def run_hits(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-hits-"))
    script = work / "post.lua"
    body = json.dumps({**BODY, "event_id": "EVENT_ID"})
    script.write_text(LUA % (body, API_KEY, ""))
    scripts: dict[str, Path] = {}
    servers = Servers(work)
    postgres = None
    try:
        pg_urls: dict[str, str] = {}
        c_vendor = FakeVendor(keep=False)  # down until the drain phase
        c_pg_vendor = FakeVendor(keep=False)
        quick = {"TAGSERVER_RETRY_CAP_SECONDS": "1"}  # a paused lane probes each second
        started = {
            "A bare starlette": servers.start_bare(),
            # A2: bare, but the same HTTP exchange as B and C: reads the body, answers the JSON
            "A2 bare, same exchange": servers.start_bare("same_exchange_app"),
            # B: its dispatcher delivers every message to the fake vendor meanwhile
            "B tagserver": servers.start_tagserver("tagserver"),
            # C: vendor unreachable, its lane paused: the hit path alone (messages pile up)
            "C tagserver, vendor down": servers.start_tagserver("tagserver-c", c_vendor.url, extra_env=quick),
        }  # fmt: skip
        if args.postgres:
            from pg import postgres_server

            postgres = postgres_server()
            cluster = postgres.__enter__()
            pg_urls = {"B": cluster.create_database(), "C": cluster.create_database()}
            started["Bpg tagserver, PostgreSQL"] = servers.start_tagserver(
                "tagserver-bpg", extra_env={"TAGSERVER_OUTBOX_URL": pg_urls["B"]}
            )
            started["Cpg PostgreSQL, vendor down"] = servers.start_tagserver(
                "tagserver-cpg", c_pg_vendor.url,
                extra_env={"TAGSERVER_OUTBOX_URL": pg_urls["C"], **quick},
            )  # fmt: skip
        for number, tree in enumerate(args.tree or [], start=1):
            # C again, from another checkout: two versions side by side in the same run
            name = f"C{number} {Path(tree).resolve().name}"[:25]
            started[name] = servers.start_tagserver(
                f"tagserver-c{number}", f"http://127.0.0.1:{free_port()}", Path(tree).resolve()
            )
        if args.transformations:
            # C with transformations on its tag: what shaping the event costs per hit
            started["CT transformations"] = servers.start_tagserver(
                "tagserver-ct", f"http://127.0.0.1:{free_port()}", transformations=TRANSFORMATIONS
            )
        if args.identity:
            # CM: C plus a Meta tag; CI: the same, hits with the identity cookie and geo
            secret = {"TAGSERVER_SECRET_KEY": IDENTITY_SECRET,  # Graph unreachable, like C's
                      "TAGSERVER_META_GRAPH_URL": f"http://127.0.0.1:{free_port()}"}  # fmt: skip
            started["CM meta tag"] = servers.start_tagserver(
                "tagserver-cm", f"http://127.0.0.1:{free_port()}", extra_env=secret,
                extra_tags=[META_TAG],
            )  # fmt: skip
            started["CI meta + identity, geo"] = servers.start_tagserver(
                "tagserver-ci", f"http://127.0.0.1:{free_port()}", extra_env=secret,
                extra_tags=[META_TAG],
            )  # fmt: skip
            scripts["CM meta tag"] = work / "post-ua.lua"
            scripts["CM meta tag"].write_text(LUA % (body, API_KEY, UA_HEADER))
            scripts["CI meta + identity, geo"] = work / "post-identity.lua"
            scripts["CI meta + identity, geo"].write_text(
                LUA % (body, API_KEY, UA_HEADER + "\n" + identity_headers())
            )
        contenders = {name: url for name, (url, _) in started.items()}

        def only(name: str) -> None:
            """Freeze the others (SIGSTOP), so B's background delivery never steals their CPU."""
            for other, (_, proc) in started.items():
                os.killpg(proc.pid, signal.SIGCONT if other == name else signal.SIGSTOP)
            time.sleep(0.2)

        print(f"# hits: {args.connections} connections, {args.duration}s per run, {machine()}")
        for name, url in contenders.items():  # warm up
            only(name)
            wrk(url, 2, args.connections, scripts.get(name, script))
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
        for round_no in range(args.rounds):
            for name, url in contenders.items():
                only(name)
                result = wrk(url, args.duration, args.connections, scripts.get(name, script))
                runs[name].append(result)
                print(
                    f"round {round_no + 1} {name:<25} {result['rps']:>7.0f} hits/s  "
                    f"p50 {result['p50']:6.2f} ms  p99 {result['p99']:6.2f} ms"
                    + (f"  non-2xx {result['non2xx']}" if result["non2xx"] else "")
                    + (f"  socket errors: {result['socket_errors']}" if result["socket_errors"] else "")
                )  # fmt: skip
        summary = {
            name: {
                "rps": statistics.median(r["rps"] for r in results),
                "p50": statistics.median(r["p50"] for r in results),
                "p99": max(r["p99"] for r in results),
            }
            for name, results in runs.items()
        }
        bare = summary["A bare starlette"]["rps"]
        print("median of the rounds (p99: the worst round):")
        for name, row in summary.items():
            print(
                f"  {name:<25} {row['rps']:>7.0f} hits/s  p50 {row['p50']:6.2f} ms  "
                f"p99 {row['p99']:6.2f} ms  ratio to bare {row['rps'] / bare:.2f}"
            )
        print("target: ratio ≥ 0.5, p99 ≤ 25 ms")
        exchange = summary["A2 bare, same exchange"]["rps"]
        for name in summary:
            if not name.startswith("A"):
                print(f"  {name}: {summary[name]['rps'] / exchange:.2f} of A2 (same HTTP exchange)")
        if args.postgres:
            for pg_name, lite in (("Bpg tagserver, PostgreSQL", "B tagserver"),
                                  ("Cpg PostgreSQL, vendor down", "C tagserver, vendor down")):  # fmt: skip
                ratio = summary[pg_name]["rps"] / summary[lite]["rps"]
                print(f"  {pg_name}: {ratio:.2f} of {lite} (SQLite outbox); target ≥ 0.7")
        if args.identity:
            ratio = summary["CI meta + identity, geo"]["rps"] / summary["CM meta tag"]["rps"]
            print(f"  CI meta + identity, geo: {ratio:.2f} of CM (the same without cookie, geo)")
        rate = args.steady_rate or round(summary["C tagserver, vendor down"]["rps"] / 2, -2)
        body_file = work / "body.json"
        body_file.write_text(json.dumps(BODY))
        for name, url in contenders.items():
            only(name)
            result = steady(url, args.duration, rate, body_file)
            print(
                f"steady {rate:.0f} hits/s {name:<25} got {result['rps']:>6.0f}/s  "
                f"p50 {result['p50']:6.2f} ms  p99 {result['p99']:6.2f} ms  (open loop)"
            )
        for _, proc in started.values():
            os.killpg(proc.pid, signal.SIGCONT)
        time.sleep(1)
        print(
            f"B delivered {servers.vendor.count} messages to the vendor meanwhile; its outbox "
            f"holds {outbox_pending(work / 'tagserver')}, C's {outbox_pending(work / 'tagserver-c')}"
        )
        if args.postgres:
            print(
                f"backlogs: C (SQLite) {outbox_pending(work / 'tagserver-c')}, "
                f"Cpg (PostgreSQL) {pg_pending(pg_urls['C'])}; each vendor comes up in turn"
            )
            for name, vendor in (("C  SQLite    ", c_vendor), ("Cpg PostgreSQL", c_pg_vendor)):
                for other, (_, proc) in started.items():  # only the draining server runs
                    running = other.startswith(name.split()[0] + " ")
                    os.killpg(proc.pid, signal.SIGCONT if running else signal.SIGSTOP)
                rate = drain_rate(vendor, args.drain_seconds)
                print(f"drain {name}: {rate:7.0f} messages/s over {args.drain_seconds:g}s")
                vendor.down()
            for _, proc in started.values():
                os.killpg(proc.pid, signal.SIGCONT)
        c_vendor.close()
        c_pg_vendor.close()
        return {"summary": summary}
    finally:
        servers.close()
        if postgres is not None:
            postgres.__exit__(None, None, None)
        shutil.rmtree(work, ignore_errors=True)


def run_outage(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-outage-"))
    body_file = work / "body.json"
    body_file.write_text(json.dumps(BODY))
    cap = str(args.retry_cap)
    servers = Servers(work, vendor_up=False, env={"TAGSERVER_RETRY_CAP_SECONDS": cap})
    try:
        url, proc = servers.start_tagserver()
        seconds = int(args.outage_minutes * 60)
        print(
            f"# outage: vendor down {seconds}s, steady load {args.rate} hits/s (hey), "
            f"retry cap {cap}s, {machine()}"
        )
        workers = 4
        load = subprocess.Popen(
            ["hey", "-z", f"{seconds}s", "-c", str(workers), "-q", str(args.rate / workers),
             "-m", "POST", "-T", "application/json", "-H", f"Authorization: Bearer {API_KEY}",
             "-D", str(body_file), url + "/api/events"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        started = time.time()
        samples = []
        step = max(5.0, seconds / 12)
        next_sample = started
        while load.poll() is None:
            now = time.time()
            if now >= next_sample:
                sample = (
                    now - started,
                    rss_mb(proc.pid),
                    outbox_pending(work / "data" / "tagserver"),
                    disk_mb(work / "data" / "tagserver"),
                )
                samples.append(sample)
                print(
                    f"t={sample[0]:6.0f}s  RSS {sample[1]:6.1f} MB  backlog {sample[2]:>7}  "
                    f"outbox files {sample[3]:6.1f} MB"
                )
                next_sample += step
            time.sleep(0.5)
        hey_out = load.stdout.read() if load.stdout else ""
        status = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", hey_out))
        backlog = outbox_pending(work / "data" / "tagserver")
        db_mb = disk_mb(work / "data" / "tagserver")
        print(
            f"load done: responses by status {status}; backlog {backlog} messages, "
            f"RSS {rss_mb(proc.pid):.1f} MB, outbox files {db_mb:.1f} MB on disk"
        )
        servers.vendor.up()
        up_at = time.time()
        first = None
        last_count = 0
        print("vendor up: draining")
        while True:
            pending = outbox_pending(work / "data" / "tagserver")
            count = servers.vendor.count
            if first is None and count > last_count:
                first = time.time() - up_at
            last_count = count
            if pending == 0:
                break
            if time.time() - up_at > args.drain_timeout:
                print(f"drain not finished after {args.drain_timeout}s: {pending} left")
                break
            time.sleep(0.5)
        took = time.time() - up_at
        drained = backlog - outbox_pending(work / "data" / "tagserver")
        sending = took - (first or 0)
        rate = drained / sending if sending > 0 else 0.0
        print(
            f"drained {drained} messages in {took:.1f}s: first delivery {first or 0:.1f}s after "
            f"the vendor came back (the paused lane's next probe), then {rate:.0f} messages/s; "
            f"RSS {rss_mb(proc.pid):.1f} MB"
        )
        return {"samples": samples, "backlog": backlog, "drain_rate": rate, "first": first}
    finally:
        servers.close()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mode", choices=("real", "one-tag", "hits", "outage", "delivery", "all"), default="real",
        help="real: the shipped container (default); one-tag (or hits): one http_request tag; "
        "outage: the vendor down for a while; delivery: CPU per hit at fixed rates (delivery "
        "side); all: real, one-tag and outage",
    )  # fmt: skip
    parser.add_argument(
        "--idle", type=int, nargs="*", default=[0, 30, 100],
        help="real: also E with these numbers of idle http_request tags",
    )  # fmt: skip
    parser.add_argument("--workers2", action="store_true", help="real: also E on --workers 2")
    parser.add_argument("--server-core", type=int, default=0, help="real: the servers' core")
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="A B rounds")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--steady-rate", type=float, default=0, help="hits/s of the fixed-rate latency run "
        "(default: half of tagserver's measured maximum)",
    )  # fmt: skip
    parser.add_argument(
        "--tree", action="append", help="also run C (one-tag) or E and K (real) from this "
        "checkout (its .venv, else through PYTHONPATH), side by side with this one; repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--postgres", action="store_true", help="also B and C with a PostgreSQL outbox "
        "(a temporary cluster), and both C servers' drain rates",
    )  # fmt: skip
    parser.add_argument("--drain-seconds", type=float, default=10)
    parser.add_argument(
        "--transformations",
        action="store_true",
        help="also run C with an exclude and an augment transformation on its tag (CT)",
    )
    parser.add_argument(
        "--identity",
        action="store_true",
        help="also run C plus a Meta tag without (CM) and with (CI) the identity cookie and "
        "geo headers on every hit: the cost of opening the cookie and filling the keys",
    )
    parser.add_argument(
        "--delivery-rates", type=float, nargs="+", default=[300, 800],
        help="delivery: the fixed hit rates (per second) measured",
    )  # fmt: skip
    parser.add_argument("--outage-minutes", type=float, default=5)
    parser.add_argument("--rate", type=float, default=200, help="hits/s during the outage")
    parser.add_argument("--retry-cap", type=float, default=30, help="TAGSERVER_RETRY_CAP_SECONDS")
    parser.add_argument("--drain-timeout", type=float, default=900)
    args = parser.parse_args()
    needs = ("wrk", "hey") if args.mode in ("all", "outage") else ("wrk",)  # hey: optional
    for tool in needs:
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed on PATH")
    if args.mode in ("all", "real"):
        run_real(args)
    if args.mode in ("all", "hits", "one-tag"):
        run_hits(args)
    if args.mode in ("all", "outage"):
        run_outage(args)
    if args.mode == "delivery":
        run_delivery(args)


if __name__ == "__main__":
    main()
