"""Benchmark: building the Conversions API request body for 10,000 full Purchase events.

    python bench/bench_meta.py [--events 10000] [--rounds 2] [--vendors-only] [--cpu]
    python bench/bench_meta.py --callgrind [--events 1000] [--tree ../before]

The per-vendor table (always printed; `--vendors-only` skips the SDK comparison) times each
conversions tag — meta_capi, tiktok_events, pinterest_capi, snapchat_capi — the same way
(`fire` + the stored payload + the request body) on the same 13-key events, round-robin in
one process, and gives µs per event and the ratio to meta_capi.

"Building" = normalize + hash + serialize, from raw event data to the JSON bytes of the
requests (1000 events each):

- tagserver: `MetaCapiTag.fire` for each event (mapping, normalization, SHA-256, refusal
  checks, match quality, the Outgoing message), its payload serialized as the outbox stores
  it, then the sender's body around the stored payloads (`orjson`).
- Meta's official SDK (`facebook-business`, in the `bench` extra): `UserData`, `CustomData`,
  `Content` and `Event` objects from the same raw values, `EventRequest.get_params()` (its
  normalization and hashing), then the body `EventRequest.execute()` would send: the SDK's
  own top-level JSON encoding, form-encoded by `requests` as the SDK's session does.

Inputs are identical and chosen so the SDK accepts them (it refuses country names, formatted
dates and the like); tagserver does more work on them (it also hashes external_id, checks
what Meta would refuse, scores match quality). Every event has 13 user_data keys (em, ph, fn,
ln, ge, db, ct, st, zp, country, external_id, client_ip_address, client_user_agent) and 2–3
contents. The two run alternately, A B A B, in one process; the report gives each round, the
medians and the ratio, after checking that both produce the same hashes for the same inputs.
For reference each round also times tagserver's mapping alone (normalize + hash + serialize,
the SDK's scope, without refusal checks, match quality and the outbox message), and the SDK
with a plain `json.dumps` body instead of the form encoding its `execute()` does.

Times are wall clock by default; `--cpu` takes this process's CPU time instead
(`time.process_time`), steadier on a shared machine where other work takes the core now and
then; compare the best rounds then (the least disturbed), which the report gives too.
`--callgrind` counts instructions per event instead (valgrind), of the whole tag, the mapping
and the SDK's body, for this checkout and each `--tree` (its own `.venv`; the SDK only where
installed): stable to well under 1 % on a loaded machine, so fit to compare two versions. Not
a measure of time: valgrind runs SHA-256 without the CPU's SHA instructions, so hashing weighs
more there than on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
from tagserver.tags.meta_capi import MetaCapiTag
from tagserver.tags.meta_capi.mapping import build
from tagserver.tags.pinterest_capi import PinterestCapiTag
from tagserver.tags.snapchat_capi import SnapchatCapiTag
from tagserver.tags.tiktok_events import TikTokEventsTag

from tagserver import metrics
from tagserver.event import RequestContext
from tagserver.plugins import FireContext
from tagserver.settings import Settings

try:  # Meta's SDK (the `bench` extra); another checkout's venv (--tree) may lack it
    from facebook_business.adobjects.serverside.action_source import ActionSource
    from facebook_business.adobjects.serverside.content import Content
    from facebook_business.adobjects.serverside.custom_data import CustomData
    from facebook_business.adobjects.serverside.event import Event
    from facebook_business.adobjects.serverside.event_request import EventRequest
    from facebook_business.adobjects.serverside.gender import Gender
    from facebook_business.adobjects.serverside.user_data import UserData
    from facebook_business.api import _top_level_param_json_encode
    from requests.models import RequestEncodingMixin

    HAVE_SDK = True
except ImportError:
    HAVE_SDK = False

BATCH = 1000
PIXEL = "1234567890123456"
TOKEN = "EAAbenchmarkTOKEN"
UA = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15"
)
FIRST = ["Mary", "James", "Zoë", "José", "Anna", "Liam", "Sofía", "Noah", "Emma", "Oliver"]
LAST = ["Smith", "García", "Müller", "Johnson", "Rossi", "Brown", "Nguyen", "Kowalski"]
CITIES = [("San Francisco", "ca", "941"), ("New York", "ny", "100"), ("Austin", "tx", "787"),
          ("Seattle", "wa", "981"), ("Chicago", "il", "606"), ("Boston", "ma", "021")]  # fmt: skip
AREAS = ["415", "212", "512", "206", "312", "617", "650", "718"]


def raw_events(count: int, now: int) -> list[dict[str, Any]]:
    """Raw purchase data, one dict per event (what a shop backend would have)."""
    out = []
    for i in range(count):
        city, state, zip3 = CITIES[i % len(CITIES)]
        items = [
            {"id": f"SKU-{i % 500}", "quantity": 1 + i % 3, "price": 19.99},
            {"id": f"SKU-{(i * 7) % 500}", "quantity": 1, "price": 5.5},
        ]
        if i % 2:
            items.append({"id": f"SKU-{(i * 13) % 500}", "quantity": 2, "price": 12.0})
        out.append(
            {
                "event_id": f"order-{i}",
                "event_time": now - 60 - i % 3600,
                "url": f"https://www.shop.example/checkout/thanks?order={i}",
                "email": f"Customer.{i}@Example.com",
                "phone": f"+1 ({AREAS[i % len(AREAS)]}) 555-{i % 10000:04d}",
                "first_name": FIRST[i % len(FIRST)],
                "last_name": LAST[(i // 3) % len(LAST)],
                "gender": "f" if i % 2 else "m",
                "birth": f"19{50 + i % 50}{1 + i % 12:02d}{1 + i % 28:02d}",
                "city": city,
                "state": state,
                "zip": f"{zip3}{i % 100:02d}-{i % 10000:04d}",
                "country": "us",
                "customer_id": f"cust-{i}",
                "ip": f"203.0.{(i // 256) % 256}.{i % 256}",
                "items": items,
                "value": round(sum(it["price"] * it["quantity"] for it in items), 2),
                "currency": "usd",
            }
        )
    return out


# -- tagserver ----------------------------------------------------------------------------------


def tagserver_events(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same data as common event data (what a client hands the tag)."""
    return [
        {
            "event_name": "purchase",
            "event_id": r["event_id"],
            "event_time": r["event_time"],
            "page_location": r["url"],
            "ip_override": r["ip"],
            "user_agent": UA,
            "user_id": r["customer_id"],
            "value": r["value"],
            "currency": r["currency"],
            "transaction_id": r["event_id"],
            "items": [
                {"item_id": it["id"], "quantity": it["quantity"], "price": it["price"]}
                for it in r["items"]
            ],
            "user_data": {
                "email_address": r["email"],
                "phone_number": r["phone"],
                "gender": r["gender"],
                "date_of_birth": r["birth"],
                "address": {
                    "first_name": r["first_name"],
                    "last_name": r["last_name"],
                    "city": r["city"],
                    "region": r["state"],
                    "postal_code": r["zip"],
                    "country": r["country"],
                },
            },
        }
        for r in raw
    ]


VENDORS: list[tuple[str, Any, dict[str, Any]]] = [
    ("meta_capi", MetaCapiTag, {"pixel_id": PIXEL, "access_token": TOKEN, "api_version": "v25.0",
                                "action_source": "website", "external_id_hashing": "sha256"}),
    ("tiktok_events", TikTokEventsTag, {"pixel_code": "CBENCH1234567", "access_token": TOKEN,
                                        "api_version": "v1.3"}),
    ("pinterest_capi", PinterestCapiTag, {"ad_account_id": "549755885175", "access_token": TOKEN}),
    ("snapchat_capi", SnapchatCapiTag, {"pixel_id": "1ec32188-754e-4be2-8e55-c949a984a39f",
                                        "access_token": TOKEN}),
]  # fmt: skip


def run_tag(tag_class: Any, params: dict[str, Any], events: list[dict[str, Any]]) -> list[bytes]:
    """`fire` for each event, each payload stored as the outbox does, one body per 1000."""
    settings = Settings()
    request = RequestContext.from_scope(
        method="POST", url="https://sgtm.shop.example/api/events", path="/api/events",
        query={}, headers={"user-agent": "bench"}, cookies={}, peer_ip="127.0.0.1",
        scheme="https", settings=settings,
    )  # fmt: skip
    tag = tag_class("bench", {}, settings)
    bodies = []
    for start in range(0, len(events), BATCH):
        stored = []
        for event in events[start : start + BATCH]:
            ctx = FireContext(request=request, settings=settings, tag_name="bench")
            outgoing = tag.fire(event, params, ctx)
            assert outgoing, f"{tag_class.type_name} sent nothing: {ctx.notes}"
            stored.extend(orjson.dumps(o.payload) for o in outgoing)
        bodies.append(orjson.dumps({"data": [orjson.Fragment(p) for p in stored]}))
    return bodies


def vendor_table(events: list[dict[str, Any]], rounds: int) -> None:
    times: dict[str, list[float]] = {name: [] for name, _, _ in VENDORS}
    for round_no in range(1, rounds + 1):
        for name, tag_class, params in VENDORS:
            t, _ = timed(run_tag, tag_class, params, [dict(e) for e in events])
            times[name].append(t)
            line(round_no, name, t, len(events))
    meta = statistics.median(times["meta_capi"])
    print()
    print(f"{'tag':16s} {'µs/event (median)':>18s} {'× meta_capi':>12s}")
    for name, _, _ in VENDORS:
        med = statistics.median(times[name])
        print(f"{name:16s} {med / len(events) * 1e6:18.1f} {med / meta:12.2f}")


def run_tagserver(events: list[dict[str, Any]]) -> list[bytes]:
    settings = Settings()
    request = RequestContext.from_scope(
        method="POST", url="https://sgtm.shop.example/api/events", path="/api/events",
        query={}, headers={"user-agent": "bench"}, cookies={}, peer_ip="127.0.0.1",
        scheme="https", settings=settings,
    )  # fmt: skip
    tag = MetaCapiTag("meta", {}, settings)
    params = {"pixel_id": PIXEL, "access_token": TOKEN, "api_version": "v25.0",
              "action_source": "website", "external_id_hashing": "sha256"}  # fmt: skip
    bodies = []
    for start in range(0, len(events), BATCH):  # one request body per 1000 events
        stored = []
        for event in events[start : start + BATCH]:
            ctx = FireContext(request=request, settings=settings, tag_name="meta")
            # the outbox keeps each message's payload as JSON (orjson) from the hit on
            stored.extend(orjson.dumps(o.payload) for o in tag.fire(event, params, ctx))
        # the sender's request body: {"data": [...]} around the stored payloads
        bodies.append(orjson.dumps({"data": [orjson.Fragment(p) for p in stored]}))
    return bodies


def run_mapping_only(events: list[dict[str, Any]]) -> list[bytes]:
    """Only what the SDK does too: map + normalize + hash + serialize (no refusal checks, no
    match quality, no outbox message). For reference next to the full tag."""
    settings = Settings()
    request = RequestContext.from_scope(
        method="POST", url="https://sgtm.shop.example/api/events", path="/api/events",
        query={}, headers={"user-agent": "bench"}, cookies={}, peer_ip="127.0.0.1",
        scheme="https", settings=settings,
    )  # fmt: skip
    params = {"action_source": "website", "external_id_hashing": "sha256"}
    bodies = []
    for start in range(0, len(events), BATCH):
        stored = [
            orjson.dumps(build(e, params, request).event) for e in events[start : start + BATCH]
        ]
        bodies.append(orjson.dumps({"data": [orjson.Fragment(p) for p in stored]}))
    return bodies


# -- Meta's SDK ---------------------------------------------------------------------------------


def run_sdk(raw: list[dict[str, Any]]) -> list[bytes]:
    bodies = []
    for start in range(0, len(raw), BATCH):  # one request body per 1000 events
        bodies.append(_sdk_body(raw[start : start + BATCH]))
    return bodies


def run_sdk_json_only(raw: list[dict[str, Any]]) -> list[bytes]:
    """The SDK's objects and normalization, but a plain `json.dumps(get_params())` body
    instead of the form encoding execute() does. For reference."""
    return [_sdk_body(raw[s : s + BATCH], form=False) for s in range(0, len(raw), BATCH)]


def _sdk_body(raw: list[dict[str, Any]], form: bool = True) -> bytes:
    events = []
    for r in raw:
        user = UserData(
            emails=[r["email"]],
            phones=[r["phone"]],
            first_names=[r["first_name"]],
            last_names=[r["last_name"]],
            genders=[Gender.FEMALE if r["gender"] == "f" else Gender.MALE],
            dates_of_birth=[r["birth"]],
            cities=[r["city"]],
            states=[r["state"]],
            zip_codes=[r["zip"]],
            country_codes=[r["country"]],
            external_ids=[r["customer_id"]],
            client_ip_address=r["ip"],
            client_user_agent=UA,
        )
        contents = [
            Content(product_id=it["id"], quantity=it["quantity"], item_price=it["price"])
            for it in r["items"]
        ]
        custom = CustomData(
            value=r["value"],
            currency=r["currency"],
            contents=contents,
            content_ids=[it["id"] for it in r["items"]],
            num_items=sum(it["quantity"] for it in r["items"]),
            content_type="product",
            order_id=r["event_id"],
        )
        events.append(
            Event(
                event_name="Purchase",
                event_time=r["event_time"],
                event_id=r["event_id"],
                event_source_url=r["url"],
                action_source=ActionSource.WEBSITE,
                user_data=user,
                custom_data=custom,
            )
        )
    request = EventRequest(pixel_id=PIXEL, events=events, access_token=TOKEN)
    if not form:
        return json.dumps(request.get_params()).encode()
    # what EventRequest.execute() sends: the SDK JSON-encodes the top-level params and
    # requests form-encodes them (application/x-www-form-urlencoded)
    params = _top_level_param_json_encode(request.get_params())
    return RequestEncodingMixin._encode_params(params).encode()


# -- checks and timing ------------------------------------------------------------------------


def same_hashes(ours: list[bytes], sdk: list[bytes]) -> list[str]:
    """Keys whose hashes agree for every event (external_id: the SDK sends it unhashed)."""
    a = [e["user_data"] for b in ours for e in orjson.loads(b)["data"]]
    b = [
        json.loads(e)["user_data"]
        for body in sdk
        for e in json.loads(parse_qs(body.decode())["data"][0])
    ]
    assert len(a) == len(b)
    keys = ["em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country"]
    agree = [k for k in keys if all(x[k] == y[k] for x, y in zip(a, b, strict=True))]
    return agree


CLOCK = time.perf_counter  # `--cpu`: time.process_time


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    """`fn(*args)` and its time, inside an event loop as a server runs its tags: the tags'
    metrics are gathered and handed to prometheus-client in one flush, timed too (a server
    flushes every 0.1 s; outside a loop each metric call would flush at once, ~5 % of a tag)."""

    async def run() -> tuple[float, Any]:
        started = CLOCK()
        result = fn(*args)
        metrics.flush()
        return CLOCK() - started, result

    return asyncio.run(run())


def line(round_no: int, label: str, seconds: float, events: int) -> None:
    per_event = seconds / events * 1e6
    print(f"round {round_no} {label:26s} {seconds * 1000:8.1f} ms  {per_event:6.1f} µs/event")


# -- instructions (--callgrind), side by side with other checkouts (--tree) -------------------


def count_child(events_count: int) -> None:
    """Under callgrind: instructions per event of the whole tag, its mapping and (when the SDK
    is installed) the SDK's `execute()` body, on the same events; one JSON line."""
    now = int(time.time())
    raw = raw_events(events_count, now)
    events = tagserver_events(raw)
    meta = VENDORS[0]
    run_tag(meta[1], meta[2], tagserver_events(raw_events(200, now)))  # warm-up
    run_mapping_only(tagserver_events(raw_events(200, now)))
    jobs: list[tuple[str, Any, Any]] = [
        ("tag", lambda e: run_tag(meta[1], meta[2], e), lambda: [dict(e) for e in events]),
        ("mapping", run_mapping_only, lambda: [dict(e) for e in events]),
    ]
    if HAVE_SDK:
        run_sdk(raw_events(200, now))
        jobs.append(("sdk", run_sdk, lambda: raw))
    out = {}
    for name, job, data in jobs:
        given = data()
        _callgrind("--instr=on")
        job(given)
        _callgrind("--dump")
        _callgrind("--instr=off")
        out[name] = _callgrind_total() / events_count
    print(json.dumps(out), flush=True)


def _callgrind(what: str) -> None:
    subprocess.run(["callgrind_control", what, str(os.getpid())], check=True,
                   capture_output=True)  # fmt: skip


def _callgrind_total() -> float:
    out = Path(os.environ["BENCH_META_CALLGRIND"])
    newest = max(out.parent.glob(out.name + ".*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
    for line_text in newest.read_text().splitlines():
        if line_text.startswith("totals:"):
            return float(line_text.split()[1])
    raise SystemExit(f"no totals in {newest}")


def callgrind_table(trees: list[str], events_count: int) -> None:
    """Instructions per event for this checkout and each of `trees` (each with its own
    `.venv`), counted by callgrind: they move by well under 1 % between runs, however loaded
    the machine; CPU time on a shared machine moves by 10 % and more."""
    here = Path(__file__).resolve()
    results = {}
    for tree in [str(here.parent.parent), *trees]:
        with tempfile.TemporaryDirectory(prefix="bench-meta-") as tmp:
            work = Path(tmp)
            python = Path(tree) / ".venv" / "bin" / "python"
            command = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                       f"--callgrind-out-file={work / 'cg.out'}",
                       str(python if python.exists() else sys.executable), str(here),
                       "--count-child", "--events", str(events_count)]  # fmt: skip
            env = {**os.environ, "BENCH_META_CALLGRIND": str(work / "cg.out")}
            done = subprocess.run(command, env=env, cwd=work, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{tree}: {done.stderr[-2000:]}")
        results[Path(tree).name] = json.loads(done.stdout.strip().splitlines()[-1])
    this = results[here.parent.parent.name]
    print(f"thousand instructions per event ({events_count} events; ×: the other's ÷ this one's)")
    for name, counts in results.items():
        cells = [f"{what} {counts[what] / 1000:7.1f} k" + (
                 f" ({counts[what] / this[what]:.3f}×)" if counts is not this else "")
                 for what in ("tag", "mapping", "sdk") if what in counts]  # fmt: skip
        print(f"{name:12s} " + ", ".join(cells))
    if "sdk" in this:
        print(
            f"SDK body ÷ mapping (instructions, this checkout): {this['sdk'] / this['mapping']:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2, help="A B pairs (default 2: A B A B)")
    parser.add_argument("--vendors-only", action="store_true", help="only the per-vendor table")
    parser.add_argument("--cpu", action="store_true", help="CPU time instead of the wall clock")
    parser.add_argument(
        "--callgrind", action="store_true",
        help="instructions per event (valgrind's callgrind) instead of times: stable when loaded",
    )  # fmt: skip
    parser.add_argument("--tree", action="append", default=[],
                        help="with --callgrind: also another checkout (its .venv)")  # fmt: skip
    parser.add_argument("--count-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count_child:
        count_child(args.events)
        return
    if args.callgrind:
        callgrind_table(args.tree, args.events)
        return
    if not HAVE_SDK and not args.vendors_only:
        raise SystemExit("Meta's SDK is not installed: pip install -e '.[bench]'")
    if args.cpu:
        global CLOCK
        CLOCK = time.process_time

    now = int(time.time())
    raw = raw_events(args.events, now)
    events = tagserver_events(raw)
    for _, tag_class, params in VENDORS:  # warm-up
        run_tag(tag_class, params, tagserver_events(raw_events(200, now)))
    vendor_table(events, args.rounds)
    if args.vendors_only:
        return
    print()
    # warm-up (imports, lazy metadata, caches of the interpreter), not timed
    run_tagserver(tagserver_events(raw_events(200, now)))
    run_sdk(raw_events(200, now))

    ours_times, sdk_times, mapping_times, sdk_json_times = [], [], [], []
    for round_no in range(1, args.rounds + 1):
        t, ours = timed(run_tagserver, [dict(e) for e in events])
        ours_times.append(t)
        line(round_no, "A tagserver tag", t, args.events)
        t, sdk = timed(run_sdk, raw)
        sdk_times.append(t)
        line(round_no, "B facebook-sdk", t, args.events)
        t, _ = timed(run_mapping_only, [dict(e) for e in events])
        mapping_times.append(t)
        line(round_no, "  tagserver mapping only", t, args.events)
        t, _ = timed(run_sdk_json_only, raw)
        sdk_json_times.append(t)
        line(round_no, "  facebook-sdk, JSON body", t, args.events)

    agree = same_hashes(ours, sdk)
    ours_med, sdk_med = statistics.median(ours_times), statistics.median(sdk_times)
    print()
    print(f"events: {args.events}, requests: {len(ours)} (≤ {BATCH} events each)")
    print(f"body bytes: tagserver {sum(map(len, ours)):,}, facebook-sdk {sum(map(len, sdk)):,}")
    print(f"identical hashes for: {', '.join(agree)}")
    print(f"python {platform.python_version()}, facebook-business {version('facebook-business')}")
    print(f"clock: {'CPU time of this process' if CLOCK is time.process_time else 'wall clock'}")
    print(
        f"median tagserver    {ours_med * 1000:8.1f} ms  ({ours_med / args.events * 1e6:.1f} µs/event)"
    )
    print(
        f"median facebook-sdk {sdk_med * 1000:8.1f} ms  ({sdk_med / args.events * 1e6:.1f} µs/event)"
    )
    map_med = statistics.median(mapping_times)
    print(
        f"median mapping only {map_med * 1000:8.1f} ms  ({map_med / args.events * 1e6:.1f} µs/event)"
    )
    for label, times in (("tagserver", ours_times), ("facebook-sdk", sdk_times),
                         ("mapping only", mapping_times)):  # fmt: skip
        print(f"best {label:15s} {min(times) / args.events * 1e6:8.1f} µs/event")
    print(f"ratio (medians): tagserver is {sdk_med / ours_med:.1f}× faster")
    print(f"ratio (best rounds): {min(sdk_times) / min(ours_times):.1f}×")
    print(f"ratio of the mapping alone (medians): {sdk_med / map_med:.1f}×")
    print(f"ratio of the mapping alone (best rounds): {min(sdk_times) / min(mapping_times):.1f}×")
    json_med = statistics.median(sdk_json_times)
    print(
        f"for reference, facebook-sdk with a plain JSON body (no form encoding): "
        f"{json_med / args.events * 1e6:.1f} µs/event; tag {json_med / ours_med:.1f}×, "
        f"mapping {json_med / map_med:.1f}×"
    )


if __name__ == "__main__":
    main()
