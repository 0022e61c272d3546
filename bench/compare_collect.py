"""Same answers: generated collector hits through this checkout and another, compared.

    python bench/compare_collect.py --tree ../before            # 3000 hits, seed 1
    python bench/compare_collect.py --tree ../before --hits 20000 --seed 7

A change to the collector's hot path (cookies, the identity cookie, click ids, CORS, body
checks) must not change what a visitor or a tag sees. Each checkout (its own `.venv`) runs
the same generated hits in a process of its own, at the same frozen clock: returning and new
visitors with valid, malformed, expired, forged and rotated cookies, consent granted and
denied, click ids in the page URL, user data and logouts, broken bodies, foreign origins,
HTTPS behind a proxy, preflights. For each hit it prints what a user sees: the status, the
answer's JSON, its headers, its Set-Cookie headers in order (the identity cookie's sealed
value opened: its keys and issue time, since its nonce is random) and every event the
container's tags received; the parent compares them line by line and shows the first
differences.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
NOW = 1_796_574_720.25  # the frozen clock (seconds)
SECRET, OLD_SECRET = "compare-secret-key-compare-secret-key", "compare-old-key-compare-old-key-0"
SEED = "3f2b8c1e-1d2f-4c4e-9a51-3f7a2b8c9d10"
DAY = 86400

CONTAINER: dict[str, Any] = {
    "name": "compare", "version": "1",
    "clients": [
        {"name": "collector", "type": "collector"},
        {"name": "collector_ttp", "type": "collector",
         "params": {"path": "/collect2", "generate_ttp": True, "client_id_cookie": "my_cid"}},
        {"name": "collector_off", "type": "collector",
         "params": {"path": "/collect3", "set_cookies": False}},
    ],
    "variables": [],
    "triggers": [{"name": "all", "event": "*"}],
    "tags": [{"name": "log_all", "type": "log", "fire_on": ["all"]}],
    "cookie_keeper": {"cookies": ["_ga", "_ga_*", "_gcl_aw", {"name": "_mine", "consent": "none"}]},
}  # fmt: skip


# -- generated hits (the same in every process: seeded) ---------------------------------------


def pick(rng: random.Random, *options: Any) -> Any:
    return options[rng.randrange(len(options))]


def bad(rng: random.Random, value: Any, good: Any) -> Any:
    """`value` (one the collector refuses) once in 40 hits, else `good`."""
    return value if rng.random() < 0.025 else good


def consent(rng: random.Random) -> Any:
    if rng.random() < 0.3:
        return bad(rng, "denied", pick(rng, None, {}))
    values = ("granted", "denied", True, False)
    kinds = ("ad_storage", "analytics_storage", "ad_user_data")
    return {k: bad(rng, " Denied ", pick(rng, *values)) for k in kinds if rng.random() < 0.5}


def user(rng: random.Random) -> Any:
    if rng.random() < 0.35:
        return bad(rng, "someone", pick(rng, None, {}))
    fields = {
        "email": ("jane.doe@example.com", " Jane.Doe@Example.COM ", "not-an-email", "a" * 64,
                  "b@x.io"),
        "phone": ("+44 20 7946 0958", 442079460958, "0207 946 0958", "12"),
        "first_name": ("Jane", "Zoë", "O'Brien"), "last_name": ("Doe", ""),
        "city": ("London", "San Francisco"), "region": ("California", "CA", "Greater London"),
        "postal_code": ("SW1A 1AA", "94025-1234", 2134),
        "country": ("GB", "United States", "USA", "Narnia"),
        "external_id": ("cust-42", "cust-43"), "user_id": ("u-1",),
    }  # fmt: skip
    out = {k: pick(rng, *v) for k, v in fields.items() if rng.random() < 0.3}
    return {**out, "nickname": "x"} if rng.random() < 0.025 else out


def page(rng: random.Random) -> dict[str, Any]:
    query = pick(rng, "", "?fbclid=IwAR0one", "?fbclid=IwAR0two", "?fbclid=bad!id",
                 "?ttclid=E.C.P.tt1&epik=dj0pin", "?ScCid=snap-1", "?a=1&tagserver_preview=tok",
                 "?fbclid=IwAR0one&ttclid=tt2&sccid=snap-2")  # fmt: skip
    out: dict[str, Any] = {"page_location": f"https://www.shop.example/p/{rng.randrange(5)}{query}"}
    if rng.random() < 0.5:
        out.update(page_referrer="https://www.google.com/", page_title="Mug", language="en-GB",
                   screen_resolution=bad(rng, "wide", "1920x1080"))  # fmt: skip
    return out


def event(rng: random.Random, n: int) -> Any:
    if rng.random() < 0.05:
        return pick(rng, "not an event", {"name": ""}, {"name": "x", "params": {"user_data": 1}},
                    {"name": "x", "what": 1}, {"name": "x", "params": {"value": "ten"}})  # fmt: skip
    out: dict[str, Any] = {"name": pick(rng, "page_view", "purchase", "view_item", " add_to_cart ")}
    if rng.random() < 0.7:
        out["id"] = f"ev-{n}-{rng.randrange(1000)}"
    if rng.random() < 0.9:
        out["page"] = page(rng)
    if rng.random() < 0.5:
        out["params"] = {"value": pick(rng, 12.5, "7.25", 3), "currency": "EUR",
                         "items": [{"item_id": "MUG", "price": 12.5}], "transaction_id": 981}  # fmt: skip
    return out


def body(rng: random.Random, n: int) -> bytes:
    roll = rng.random()
    if roll < 0.04:
        return pick(rng, b"", b"{", b"[]", b'{"events": []}', b'{"events": [], "x": 1}',
                    b'{"events": [{"name": "a\\u0001"}]}', b'{"events": "no"}', b"\xff\xfe",
                    b'{"events": [{"name": "a", "params": {"k": [[[[[[1]]]]]]}}]}',
                    b'{"events": [{"name": "a", "params": {"' + b"k" * 101 + b'": 1}}]}',
                    b'{"consent": {"x": "granted"}, "events": [{"name": "a"}]}',
                    b'{"user": {"email": 5.5e400}, "events": [{"name": "a"}]}')  # fmt: skip
    envelope: dict[str, Any] = {}
    if rng.random() < 0.8:
        envelope["pid"] = pick(rng, SEED, "short", f"page-{rng.randrange(3)}-0123456789")
    if rng.random() < 0.6:
        envelope["ts"] = bad(rng, "x", pick(rng, int(NOW * 1000) - 5000, 1_700_000_000_000, 1.5e12))
    for key, make in (("consent", consent), ("user", user)):
        if rng.random() < 0.6:
            envelope[key] = make(rng)
    if rng.random() < 0.1:
        envelope["logout"] = bad(rng, "yes", pick(rng, True, False))
    count = 0 if envelope.get("logout") is True and rng.random() < 0.4 else rng.randrange(1, 4)
    envelope["events"] = [event(rng, n) for _ in range(count)]
    return json.dumps(envelope).encode()


def cookies(rng: random.Random, sealed: dict[str, str]) -> dict[str, str]:
    choices: dict[str, tuple[str, ...]] = {
        "_fbp": ("fb.1.1796000000000.123456789", "fb.2.1796000000000.987654321.AQ", "garbage", ""),
        "_fbc": ("fb.1.1796000000000.IwAR0one", "fb.1.1796000000000.IwAR0two", "fb.1.x.y", ""),
        "tagserver_cid": ("1234567890.1796000000", "bad value!"),
        "my_cid": ("42.1796000000",),
        "tagserver_ident": tuple(sealed.values()),
        "ttclid": ("E.C.P.tt1", "bad id"), "_epik": ("dj0pin", "dj0other"),
        "_scclid": ("snap-1",), "_ttp": ("01HTTPABCDEFGHJKLMNOP", "x"), "_scid": ("scid-1",),
        "_ga": ("GA1.1.123.456",), "_ga_ABC": ("GS1.1.1.1.1.1",), "_gcl_aw": ("GCL.1.x y",),
        "_mine": ("mine",), "other": ("1",),
    }  # fmt: skip
    return {k: pick(rng, *v) for k, v in choices.items() if rng.random() < 0.45}


def request(rng: random.Random, n: int, sealed: dict[str, str]) -> dict[str, Any]:
    headers = {"content-type": "text/plain;charset=UTF-8", "user-agent": pick(rng, "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0", "curl/8.5")}  # fmt: skip
    origin = pick(rng, "https://www.shop.example", "https://evil.example", None, "null")
    if origin:
        headers["origin"] = origin
    if rng.random() < 0.3:
        headers["x-forwarded-proto"] = "https"
        headers["x-forwarded-for"] = "203.0.113.7"
    jar = cookies(rng, sealed)
    if jar:
        headers["cookie"] = "; ".join(f"{k}={v}" for k, v in jar.items())
    method = "POST" if rng.random() < 0.95 else pick(rng, "GET", "OPTIONS")
    if method == "OPTIONS":
        headers["access-control-request-headers"] = "Content-Type, X-Other"
    return {
        "method": method,
        "path": pick(rng, "/collect", "/collect", "/collect", "/collect2", "/collect3"),
        "host": pick(rng, "sgtm.shop.example", "sgtm.shop.example", "127.0.0.1:8080", "localhost"),
        "headers": headers,
        "body": body(rng, n).decode("latin-1"),
    }


# -- one checkout's answers -------------------------------------------------------------------


async def answers(tree: Path, hits: int, seed: int) -> None:
    import time

    time.time = lambda: NOW  # type: ignore[assignment]  # the same clock in every process

    from tagserver.tags.log import LogTag

    from tagserver.settings import Settings
    from tagserver.visitor.identity_cookie import COOKIE, Keyring
    from tagserver.web.app import create_app

    received: list[dict[str, Any]] = []
    fire = LogTag.fire

    def recording(self: Any, event: Any, params: Any, ctx: Any) -> Any:
        received.append(json.loads(json.dumps(event, default=str)))
        return fire(self, event, params, ctx)

    LogTag.fire = recording  # type: ignore[method-assign]
    work = Path(tempfile.mkdtemp(prefix="compare-collect-"))
    (work / "container.json").write_text(json.dumps(CONTAINER))
    settings = Settings.from_env(
        None, container=str(work / "container.json"), data_dir=str(work / "data"),
        secret_key=SECRET, previous_secret_keys=OLD_SECRET, trusted_proxies="127.0.0.1",
        log_level="warning",
    )  # fmt: skip
    app = create_app(settings)
    current, old = Keyring(SECRET, []), Keyring(OLD_SECRET, [])
    em = "8c87b489ce35cf2e2f39f80e282cb2e804932a56a213983eeeb428407d43b52d"
    ph = "a1" * 32
    sealed = {
        "valid": current.seal({"em": em}, int(NOW) - 3600),
        "valid, two keys": current.seal({"em": em, "ph": ph}, int(NOW) - 10 * DAY),
        "expired": current.seal({"em": em}, int(NOW) - 31 * DAY),
        "from the future": current.seal({"em": em}, int(NOW) + 3600),
        "old key": old.seal({"ph": ph}, int(NOW) - DAY),
        "forged": base64.urlsafe_b64encode(b"\x01" + bytes(60)).rstrip(b"=").decode(),
        "junk": "not-a-cookie",
    }

    def shown(value: str) -> Any:
        opened = current.open(value) or old.open(value)
        return [sorted(opened[0].items()), opened[1]] if opened else value

    rng = random.Random(seed)
    await lifespan(app, "startup")
    for n in range(hits):
        hit = request(rng, n, sealed)
        received.clear()
        status, headers, answer = await send(app, hit)
        cookies_set, others = [], []
        for name, value in headers:
            if name == "set-cookie":
                cookie, _, attrs = value.partition(";")
                key, _, val = cookie.partition("=")
                cookies_set.append([key, shown(val) if key == COOKIE and val else val, attrs])
            elif name not in ("content-length", "date"):
                others.append([name, value])
        try:
            payload = json.loads(answer)
        except ValueError:
            payload = answer.decode("latin-1")
        line = {"n": n, "status": status, "answer": payload, "headers": sorted(others),
                "set_cookie": cookies_set, "events": list(received)}  # fmt: skip
        print(json.dumps(line, sort_keys=True), flush=True)
    await lifespan(app, "shutdown")


async def lifespan(app: Any, what: str) -> None:
    import asyncio

    if what == "startup":
        lifespan.queue = asyncio.Queue()  # type: ignore[attr-defined]
        lifespan.sent = asyncio.Queue()  # type: ignore[attr-defined]
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        lifespan.task = asyncio.ensure_future(  # type: ignore[attr-defined]
            app(scope, lifespan.queue.get, lifespan.sent.put)  # type: ignore[attr-defined]
        )
    await lifespan.queue.put({"type": f"lifespan.{what}"})  # type: ignore[attr-defined]
    await lifespan.sent.get()  # type: ignore[attr-defined]


async def send(app: Any, hit: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    body = hit["body"].encode("latin-1")
    raw = [(k.encode(), v.encode("latin-1")) for k, v in hit["headers"].items()]
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": hit["method"], "scheme": "http", "path": hit["path"],
        "raw_path": hit["path"].encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", hit["host"].encode()),
                    (b"content-length", str(len(body)).encode()), *raw],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080), "state": {},
    }  # fmt: skip
    sent: list[dict[str, Any]] = []
    given = False

    async def receive() -> dict[str, Any]:
        nonlocal given
        if given:
            return {"type": "http.disconnect"}
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def collect(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, collect)
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in sent[0]["headers"]]
    return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


# -- the parent: run both, compare ------------------------------------------------------------


def run(tree: Path, args: argparse.Namespace) -> list[str]:
    python = tree / ".venv" / "bin" / "python"
    command = [str(python if python.exists() else sys.executable), str(HERE), "--child",
               str(tree), "--hits", str(args.hits), "--seed", str(args.seed)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if done.returncode:
        raise SystemExit(f"{tree}: exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout.splitlines()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", help="the other checkout (with its .venv)")
    parser.add_argument("--hits", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import asyncio

        asyncio.run(answers(Path(args.child), args.hits, args.seed))
        return
    if not args.tree:
        parser.error("--tree is required")
    ours, theirs = run(HERE.parent.parent, args), run(Path(args.tree).resolve(), args)
    differ = [(a, b) for a, b in zip(ours, theirs, strict=True) if a != b]
    statuses: dict[int, int] = {}
    for line in ours:
        status = json.loads(line)["status"]
        statuses[status] = statuses.get(status, 0) + 1
    print(f"{len(ours)} hits (status: {dict(sorted(statuses.items()))}), {len(differ)} differ")
    for a, b in differ[:3]:
        mine, other = json.loads(a), json.loads(b)
        print(f"hit {mine['n']}:")
        for key in sorted(k for k in mine if mine[k] != other.get(k)):
            print(f"  {key}: this  {json.dumps(mine[key])[:400]}")
            print(f"  {' ' * len(key)}  other {json.dumps(other.get(key))[:400]}")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
