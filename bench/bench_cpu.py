"""Benchmark: CPU per hit of the real job, in-process, through the whole ASGI app.

    python bench/bench_cpu.py                        # E, K and the log tag, this checkout
    python bench/bench_cpu.py --tree ../before       # + the same from another checkout
    python bench/bench_cpu.py --tags                 # + no tag at all, and each tag alone
    python bench/bench_cpu.py --callgrind            # instructions instead of CPU time
    python bench/bench_cpu.py --profile E            # cProfile of E's hits (to a file)

The wall clock of this shared machine moves by ±15 % from one run to the next; the CPU time
of the process that runs the hits (`time.process_time`, the minimum of `--rounds` batches)
moves less, yet still by several percent when other work runs. So each checkout (`--tree`,
its own `.venv`) runs in a process of its own, started once; the rounds alternate between
them (this checkout, then each tree, in every round), and the report gives the cost per hit
and each tree's ratio to this one.

What a process measures (`create_app` with the checkout's shipped `container.json`, its
lifespan run, then hits sent straight to the ASGI app: no sockets, no HTTP parsing, which
uvicorn does the same for every version):

- E: an events-API purchase with full `user_data` (`bench_hits.PURCHASE`, a unique id each);
- K: collector hits (`page_view` and `purchase` in turn) through `/collect` with a returning
  visitor's cookies, the ones the server set on a first hit (`bench_hits.COLLECT`);
- log: the log tag's `fire` alone with the shipped container's params, on E's purchase: CPU
  of the thread that calls it (a server's event loop); its writer thread not counted;

the Meta tag live (pixel id and token set) with the Graph API unreachable (a closed loopback
port: its lane pauses, messages stay in the outbox), the log tag writing its line (level
info) to stderr, a file. Hits go in batches of 64 at once (`asyncio.gather`, as wrk's 64
connections), on uvloop like `tagserver serve`. The outbox writer is another process: its
CPU is not counted here. `--tags` adds E and K through an app whose container holds no tag
at all (the client's own work, cookies and all), and per tag of the container E through an
app whose container holds only that tag, less E with no tag.

`--callgrind` runs each process under valgrind's callgrind and counts the instructions of
each batch (all threads), which move by well under 1 % from run to run even on a loaded
machine. It measures the hit path alone: the Meta tag in dry run like the other vendors (no
message to store), hits one after the other, so no hit ever waits and the event loop runs
nothing else meanwhile (its timers would count as much as they run in wall-clock time,
which valgrind stretches fifty-fold). Slow: about two minutes for the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

from bench_hits import COLLECT, ORIGIN, PURCHASE, UA  # noqa: E402

API_KEY = "bench-key"
CONCURRENCY = 64
SCENARIOS = ("E", "K")


# -- the child: one checkout's app, in its own process ----------------------------------------


class Driver:
    """Hits sent straight to one ASGI app (lifespan included)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.counter = 0
        self.cookie = ""
        self._lifespan: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._lifespan_sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[Any] | None = None

    async def start(self) -> None:
        async def receive() -> dict[str, Any]:
            return await self._lifespan.get()

        async def send(message: dict[str, Any]) -> None:
            await self._lifespan_sent.put(message)

        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self._task = asyncio.ensure_future(self.app(scope, receive, send))
        await self._lifespan.put({"type": "lifespan.startup"})
        answer = await self._lifespan_sent.get()
        if answer["type"] != "lifespan.startup.complete":
            raise SystemExit(f"startup failed: {answer}")

    async def stop(self) -> None:
        await self._lifespan.put({"type": "lifespan.shutdown"})
        await self._lifespan_sent.get()
        if self._task is not None:
            await self._task

    async def request(
        self, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
            "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"127.0.0.1:8080"),
                        (b"content-length", str(len(body)).encode()), *headers],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080), "state": {},
        }  # fmt: skip
        sent: list[dict[str, Any]] = []
        given = False

        async def receive() -> dict[str, Any]:
            nonlocal given
            if given:
                await asyncio.sleep(3600)
                return {"type": "http.disconnect"}
            given = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        start = sent[0]
        answer = b"".join(m.get("body", b"") for m in sent[1:])
        return start["status"], start.get("headers", []), answer

    def event_hit(self) -> tuple[str, bytes, list[tuple[bytes, bytes]]]:
        self.counter += 1
        body = json.dumps(PURCHASE).replace("EVENT_ID", f"cpu-{os.getpid()}-{self.counter}")
        headers = [(b"content-type", b"application/json"),
                   (b"authorization", f"Bearer {API_KEY}".encode()),
                   (b"user-agent", UA.encode())]  # fmt: skip
        return "/api/events", body.encode(), headers

    def collect_hit(self) -> tuple[str, bytes, list[tuple[bytes, bytes]]]:
        self.counter += 1
        name = "purchase" if self.counter % 2 == 0 else "page_view"
        text = json.dumps(COLLECT).replace("EVENT_NAME", name)
        text = text.replace("EVENT_ID", f"cpu-{os.getpid()}-{self.counter}")
        headers = [(b"content-type", b"text/plain;charset=UTF-8"), (b"origin", ORIGIN.encode()),
                   (b"user-agent", UA.encode()), (b"cookie", self.cookie.encode())]  # fmt: skip
        return "/collect", text.encode(), headers

    async def visitor(self) -> None:
        """A returning visitor's cookies: what the server set on a first collector hit."""
        first = json.loads(json.dumps(COLLECT).replace("EVENT_NAME", "page_view"))
        first["events"][0]["page"]["page_location"] += "?fbclid=IwAR0bench"
        body = json.dumps(first).replace("EVENT_ID", "first").encode()
        headers = [(b"content-type", b"text/plain;charset=UTF-8"), (b"origin", ORIGIN.encode()),
                   (b"user-agent", UA.encode())]  # fmt: skip
        status, answer_headers, _ = await self.request("/collect", body, headers)
        assert status == 200, status
        jar = [v.decode("latin-1").split(";", 1)[0] for k, v in answer_headers
               if k.lower() == b"set-cookie"]  # fmt: skip
        self.cookie = "; ".join(jar)

    async def batch(self, scenario: str, hits: int) -> float:
        """What `hits` hits of `scenario` cost (METER), CONCURRENCY at a time."""
        make = self.event_hit if scenario == "E" else self.collect_hit
        requests = [make() for _ in range(hits)]
        METER.start()
        if METER.callgrind:  # one after the other: a hit that never waits never lets the
            for request in requests:  # loop run anything else (timers) meanwhile
                status, _, body = await self.request(*request)
                if status != 200:
                    raise SystemExit(f"{scenario}: {status} {body[:300]!r}")
            return METER.stop()
        for start in range(0, hits, CONCURRENCY):
            answers = await asyncio.gather(
                *(self.request(*r) for r in requests[start : start + CONCURRENCY])
            )
            for status, _, body in answers:
                if status != 200:
                    raise SystemExit(f"{scenario}: {status} {body[:300]!r}")
        return METER.stop()


class Meter:
    """CPU seconds of this process (`time.process_time`); with `--callgrind`, instructions
    executed (all threads), counted by callgrind between `start` and `stop`."""

    def __init__(self) -> None:
        self.callgrind = os.environ.get("BENCH_CPU_CALLGRIND")  # the output file
        self.started = 0.0
        self.thread_only = False

    def start(self, thread_only: bool = False) -> None:
        self.thread_only = thread_only
        if self.callgrind:
            self._control("--instr=on")
        elif thread_only:
            self.started = time.thread_time()
        else:
            self.started = time.process_time()

    def stop(self) -> float:
        if not self.callgrind:
            now = time.thread_time() if self.thread_only else time.process_time()
            return now - self.started
        self._control("--dump")
        self._control("--instr=off")
        dumps = Path(self.callgrind).parent.glob(Path(self.callgrind).name + ".*")
        newest = max(dumps, key=lambda p: int(p.name.rsplit(".", 1)[1]))
        for line in newest.read_text().splitlines():
            if line.startswith("totals:"):
                return float(line.split()[1])
        raise SystemExit(f"no totals in {newest}")

    def _control(self, what: str) -> None:
        subprocess.run(["callgrind_control", what, str(os.getpid())], check=True,
                       capture_output=True)  # fmt: skip


METER = Meter()


class LogTagBench:
    """The log tag's `fire` alone, as the shipped container calls it (its params resolved),
    on E's purchase: CPU of the calling thread (the event loop's, in a server)."""

    def __init__(self, app: Any) -> None:
        from tagserver.tags.log import LogTag

        from tagserver.event import RequestContext
        from tagserver.plugins import FireContext

        state = app.state.tagserver
        self.settings = state.settings
        self.redact = state.runtime.redact
        self.context = FireContext
        self.tag = LogTag("log_all", {}, self.settings)
        self.params = {"message": "event received", "fields": {"environment": "production"},
                       "level": "info", "include_event": True, "ip_addresses": "masked"}  # fmt: skip
        self.request = RequestContext.from_scope(
            method="POST", url="http://127.0.0.1:8080/api/events", path="/api/events",
            query={}, headers={"user-agent": UA}, cookies={}, peer_ip="127.0.0.1",
            scheme="http", settings=self.settings,
        )  # fmt: skip
        self.request.client_name = "events_api"
        self.counter = 0

    def batch(self, hits: int) -> float:
        events = []
        for _ in range(hits):
            self.counter += 1
            event = json.loads(json.dumps(PURCHASE).replace("EVENT_ID", f"log-{self.counter}"))
            event["event_time"] = int(time.time())
            events.append(event)
        contexts = [self.context(self.request, self.settings, "log_all", {}, self.redact)
                    for _ in events]  # fmt: skip
        METER.start(thread_only=True)
        for event, ctx in zip(events, contexts, strict=True):
            self.tag.fire(event, self.params, ctx)
        return METER.stop()


def make_app(tree: Path, work: Path, name: str, only_tag: str | None = None) -> Any:
    """`create_app` on the checkout's shipped container (or only its tag `only_tag`, or no
    tag at all when `only_tag` is "-")."""
    try:
        from tagserver.web.app import create_app
    except ImportError:  # a checkout from before the regroup into subpackages
        from tagserver.app import create_app  # type: ignore[no-redef]
    from tagserver.settings import Settings

    container = json.loads((tree / "container.json").read_text())
    container.pop("$schema", None)
    if only_tag is not None:
        container["tags"] = [t for t in container["tags"] if t["name"] == only_tag]
    path = work / f"{name}.json"
    path.write_text(json.dumps(container))
    settings = Settings.from_env(
        None, container=str(path), data_dir=str(work / name), api_keys=API_KEY,
        allowed_origins=ORIGIN, secret_key="bench-secret-key-bench-secret-key-bench",
        log_level="info", meta_graph_url="http://127.0.0.1:9",
        ga4_collect_url="http://127.0.0.1:9/g/collect",
    )  # fmt: skip
    return create_app(settings)


async def child(tree: Path, hits: int, tags: bool, profile: str | None) -> None:
    """Wait for a scenario name on stdin, answer its CPU µs per hit; until stdin closes.

    The app sets logging up as `tagserver serve` does: its lines (the log tag's) go to
    stderr, which the parent points at a file."""
    if not METER.callgrind:  # Meta live (its messages go to the outbox)
        os.environ.update({"META_PIXEL_ID": "1234567890", "META_ACCESS_TOKEN": "bench-meta-token"})
    work = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    drivers = {"app": Driver(make_app(tree, work, "app"))}
    names: list[str] = []
    if tags:
        names = [t["name"] for t in json.loads((tree / "container.json").read_text())["tags"]]
        drivers["-"] = Driver(make_app(tree, work, "none", "-"))
        for name in names:
            drivers[name] = Driver(make_app(tree, work, f"tag-{name}", name))
    for driver in drivers.values():
        await driver.start()
    main = drivers["app"]
    await main.visitor()
    for driver in drivers.values():
        driver.cookie = main.cookie
    for scenario in SCENARIOS:  # warm-up: caches, lazy imports, the lane's first failures
        await main.batch(scenario, hits // 2)
    for driver in drivers.values():
        await driver.batch("E", hits // 4)
    if profile:
        import cProfile
        import pstats

        # the event loop thread's CPU time, not the wall clock: a wait for the GIL (held by
        # the log writer thread meanwhile) is not the waiting function's cost
        profiler = cProfile.Profile(time.thread_time)
        profiler.enable()
        await main.batch(profile, hits)
        profiler.disable()
        with open(work / "profile.txt", "w") as out:
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("cumulative").print_stats(120)
            stats.sort_stats("tottime").print_stats(40)
        print(f"# profile of {profile}: {work / 'profile.txt'}", file=sys.stderr)
    log_tag = LogTagBench(main.app)
    log_tag.batch(hits)  # warm-up
    print(json.dumps({"ready": names}), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        what = line.strip()
        if what in SCENARIOS:
            seconds = await main.batch(what, hits)
        elif what == "log":  # the log tag's fire alone, on this thread (the event loop's)
            seconds = log_tag.batch(hits)
        elif what == "-K":  # no tag at all, K: the collector's own work (cookies ...)
            seconds = await drivers["-"].batch("K", hits)
        else:  # a tag alone (or "-", none): its app, E
            seconds = await drivers[what].batch("E", hits)
        print(json.dumps({"us": seconds / hits * (1e-3 if METER.callgrind else 1e6)}), flush=True)
    for driver in drivers.values():
        await driver.stop()


# -- the parent: alternate the checkouts --------------------------------------------------------


class Checkout:
    def __init__(self, name: str, tree: Path, args: argparse.Namespace) -> None:
        self.name = name
        python = tree / ".venv" / "bin" / "python"
        command = [str(python if python.exists() else sys.executable), str(HERE), "--child",
                   str(tree), "--hits", str(args.hits)]  # fmt: skip
        self.work = Path(tempfile.mkdtemp(prefix="bench-cpu-log-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAGSERVER_")}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        if args.callgrind:  # instructions counted only while a batch runs (Meter)
            out = self.work / "callgrind.out"
            command = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                       f"--callgrind-out-file={out}", *command]  # fmt: skip
            env["BENCH_CPU_CALLGRIND"] = str(out)
        if args.tags:
            command.append("--tags")
        if args.profile:
            command += ["--profile", args.profile]
        # the server's log (the log tag's lines) to a file, as a deployed server's stderr
        self.log = self.work / "server.log"
        with open(self.log, "wb") as stderr:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                env=env, cwd=tempfile.gettempdir(),
            )  # fmt: skip
        self.tags: list[str] = []

    def ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise SystemExit(
                f"{self.name}: the benchmark process exited ({self.proc.wait()}):\n{tail}"
            )
        self.tags = json.loads(line)["ready"]

    def measure(self, what: str) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        select.select([self.proc.stdout], [], [])
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name}: the benchmark process exited ({self.proc.wait()})")
        return float(json.loads(line)["us"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(60)
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("# profile"):
                print(f"{self.name}: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hits", type=int, default=1024, help="hits per batch (default 1024)")
    parser.add_argument("--rounds", type=int, default=5, help="batches per scenario")
    parser.add_argument("--tree", action="append", default=[], help="another checkout")
    parser.add_argument("--tags", action="store_true", help="also each tag alone (E)")
    parser.add_argument("--profile", choices=SCENARIOS, help="cProfile one batch (to a file)")
    parser.add_argument(
        "--callgrind", action="store_true",
        help="count instructions with valgrind's callgrind instead (slow; stable when loaded)",
    )  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import uvloop

        uvloop.run(child(Path(args.child), args.hits, args.tags, args.profile))
        return

    root = HERE.parent.parent
    checkouts = [Checkout("this", root, args)]
    checkouts += [Checkout(Path(t).resolve().name, Path(t).resolve(), args) for t in args.tree]
    try:
        for checkout in checkouts:
            checkout.ready()
        what = [*SCENARIOS, "log"]
        if args.tags:
            what += ["-", "-K", *checkouts[0].tags]
        runs: dict[tuple[str, str], list[float]] = {}
        print(f"# {args.hits} hits per batch, {args.rounds} rounds, load average "
              f"{os.getloadavg()[0]:.2f}, Python {sys.version.split()[0]}")  # fmt: skip
        for round_no in range(1, args.rounds + 1):
            for item in what:
                for checkout in checkouts:
                    if item not in (*SCENARIOS, "log", "-", "-K", *checkout.tags):
                        continue
                    runs.setdefault((checkout.name, item), []).append(checkout.measure(item))
            print(f"round {round_no}: " + ", ".join(
                f"{c.name} {s} {runs[(c.name, s)][-1]:.0f}" for s in SCENARIOS
                for c in checkouts), flush=True)  # fmt: skip
        unit = "thousand instructions" if args.callgrind else "CPU µs"
        print(f"\n{unit} per hit, min of {args.rounds} (median); ×: its min ÷ this one's "
              "(above 1: this checkout is cheaper)")  # fmt: skip
        base = checkouts[0].name
        for item in what:
            label = {"E": "E events-API purchase", "K": "K collector hits",
                     "log": "log tag's fire" + (" (all threads)" if args.callgrind
                                                else " (its thread)"),
                     "-": "E, no tag at all", "-K": "K, no tag at all",
                     }.get(item, f"E, only {item}")  # fmt: skip
            cells = []
            for checkout in checkouts:
                times = runs.get((checkout.name, item))
                if not times:
                    continue
                cell = f"{checkout.name} {min(times):7.1f} ({statistics.median(times):7.1f})"
                if checkout.name != base and (base, item) in runs:
                    cell += f" {min(times) / min(runs[(base, item)]):.2f}×"
                cells.append(cell)
            print(f"  {label:<30} " + "   ".join(cells))
        if args.tags:
            print("\neach tag's own cost: E with only it, less E with no tag (min):")
            for checkout in checkouts:
                none = min(runs[(checkout.name, "-")])
                costs = ", ".join(
                    f"{t} {min(runs[(checkout.name, t)]) - none:.1f}" for t in checkout.tags
                )
                print(f"  {checkout.name}: {costs}")
    finally:
        for checkout in checkouts:
            checkout.close()


if __name__ == "__main__":
    main()
