"""The status page's deliveries over time (last minute, hour, day and the chart) come from the
outbox, so they are the sum of every worker and, with a shared PostgreSQL outbox, of every
instance; they survive a restart, and buckets older than a day are pruned.

Real servers on loopback, a fake vendor, the page's JSON twin and its HTML.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fakes.vendor import FakeVendor, webhook_tag
from prometheus_client.parser import text_string_to_metric_families
from support import ServerProcess, app_client, minimal_container, wait_until

from tagserver.delivery.delivery_counts import (
    BUCKET_SECONDS,
    CountRow,
    bucket_of,
    minute_of,
    read_range,
    summarize,
)
from tagserver.delivery.delivery_types import DeadLetter, Retry, Settlement
from tagserver.delivery.outbox_backend import open_admin, open_outbox
from tagserver.delivery.outbox_pg import SCHEMA_VERSION as PG_SCHEMA_VERSION
from tagserver.delivery.outbox_pg import PgStore, migrate
from tagserver.delivery.outbox_store import SCHEMA_VERSION, Store, database_path
from tagserver.plugins import Outgoing
from tagserver.settings import Settings

PASSWORD = "status password"
AUTH = {"Authorization": "Bearer test-key"}
FAST = {
    "TAGSERVER_RETRY_BASE_SECONDS": "0.05",
    "TAGSERVER_RETRY_CAP_SECONDS": "0.2",
    "TAGSERVER_PREVIEW_PASSWORD": PASSWORD,
}
ROW = re.compile(
    r'<tr class="(delivered|failed)"[^>]*><th>\w+</th><td>(\d+)[^<]*(?:<span[^>]*>[^<]*</span>)?'
    r"</td><td>(\d+)"
)


def post(server: ServerProcess, event_id: str) -> None:
    with httpx.Client() as http:  # a new connection each: with 2 workers, both take some
        event = {"event_name": "purchase", "event_id": event_id}
        r = http.post(server.url + "/api/events", json=event, headers=AUTH)
        assert r.status_code == 200, r.text


def signed_in(server: ServerProcess) -> httpx.Client:
    http = httpx.Client(base_url=server.url)
    r = http.post("/preview/login", data={"password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return http


def page(server: ServerProcess, cookies: httpx.Cookies) -> tuple[dict[str, Any], str]:
    """The JSON twin's destination "crm" and the HTML page, each on a new connection (so
    that with several workers, different workers answer)."""
    with httpx.Client(base_url=server.url, cookies=cookies) as http:
        figures = http.get("/preview/api/status").json()
    with httpx.Client(base_url=server.url, cookies=cookies) as http:
        html = http.get("/preview/status").text
    return next(d for d in figures["destinations"] if "crm" in d["tags"]), html


def shows(server: ServerProcess, cookies: httpx.Cookies, delivered: int, failed: int) -> bool:
    """Both the JSON and the HTML show these last-hour figures, and the chart their sum."""
    d, html = page(server, cookies)
    rows = {m[0]: int(m[2]) for m in ROW.findall(html)}  # the hour column
    chart = f'aria-label="last hour: {delivered} delivered, {failed} failed"'
    return (
        d["delivered"]["hour"] == delivered
        and d["failed"]["hour"] == failed
        and sum(p["delivered"] for p in d["chart"]) == delivered
        and sum(p["failed"] for p in d["chart"]) == failed
        and rows == {"delivered": delivered, "failed": failed}
        and chart in html
    )


def delivered_by(server: ServerProcess) -> float:
    """What this instance's own counters say it delivered (what the page used to show)."""
    text = httpx.get(server.url + "/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "tagserver_deliveries_total" and s.labels.get("outcome") == "delivered"
    )


def crm(vendor: FakeVendor) -> dict[str, Any]:
    vendor.reject(lambda r: r.json()["event_id"] == "refused")  # → one dead letter
    return minimal_container(tags=[webhook_tag(vendor.url + "/hook", name="crm")])


# -- every instance sharing one PostgreSQL outbox


@pytest.mark.slow
def test_instances_sharing_postgresql_show_the_sum_and_keep_it_over_a_restart(
    tmp_path: Path, postgres: Any
) -> None:
    env = {**FAST, "TAGSERVER_OUTBOX_URL": postgres.create_database()}
    with FakeVendor() as vendor:
        container = crm(vendor)
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        a = ServerProcess(tmp_path / "a", container, env=env)
        b = ServerProcess(tmp_path / "b", container, env=env)
        with a:
            for i in range(3):  # a is alone: it delivers these
                post(a, f"a-{i}")
            vendor.wait_for(3)
            with b:
                vendor.fail(1, status=503)  # one send refused for now: retried
                for event_id in ("b-0", "b-1", "b-2", "b-3", "refused"):
                    post(b, event_id)
                vendor.wait_for(7)
                on_a, on_b = signed_in(a), signed_in(b)
                wait_until(lambda: shows(a, on_a.cookies, 7, 2), timeout=15)
                wait_until(lambda: shows(b, on_b.cookies, 7, 2), timeout=15)
                d, _ = page(b, on_b.cookies)
                by_a, by_b = delivered_by(a), delivered_by(b)
                on_a.close()
                on_b.close()
        # b alone, started again: the figures were stored, not counted in memory
        b = ServerProcess(tmp_path / "b", container, env=env)
        with b:
            again = signed_in(b)
            wait_until(lambda: shows(b, again.cookies, 7, 2), timeout=15)
            after, _ = page(b, again.cookies)
            again.close()
    assert by_a >= 3 and by_a + by_b == 7  # each instance's own counters: a share each
    assert d["delivered"]["minute"] == 7 and d["delivered"]["day"] == 7
    assert d["retried"]["hour"] == 1 and d["dead_lettered"]["hour"] == 1
    assert d["dead_letters"] == 1 and d["pending"] == 0
    assert after["delivered"]["day"] == 7 and after["dead_lettered"]["day"] == 1


# -- every worker on one SQLite outbox


@pytest.mark.slow
def test_workers_on_one_sqlite_outbox_show_the_sum_and_keep_it_over_a_restart(
    tmp_path: Path,
) -> None:
    with FakeVendor() as vendor:
        container = crm(vendor)
        vendor.fail(1, status=503)
        with ServerProcess(tmp_path, container, env=FAST, workers=2) as server:
            for i in range(8):
                post(server, f"w-{i}")
            post(server, "refused")
            vendor.wait_for(8)
            http = signed_in(server)
            # several answers, from either worker: each shows the sum
            for _ in range(6):
                wait_until(lambda: shows(server, http.cookies, 8, 2), timeout=15)  # noqa: B023
            d, _ = page(server, http.cookies)
            http.close()
        with ServerProcess(tmp_path, container, env=FAST) as server:  # started again
            http = signed_in(server)
            wait_until(lambda: shows(server, http.cookies, 8, 2), timeout=15)
            http.close()
    assert d["delivered"] == {"minute": 8, "hour": 8, "day": 8}
    assert d["retried"]["hour"] == 1 and d["dead_lettered"]["hour"] == 1


# -- stored, pruned, migrated


def seed(settings: Settings, rows: list[tuple[float, int, int, int]]) -> None:
    """Counts of a destination at given times, as dispatchers would have stored them."""
    route = {"url": "http://127.0.0.1:9/hook"}
    if not settings.outbox_url:
        store = Store.open(database_path(settings.data_dir))
        dest = store.destination_id("http_request:seeded", "http_request", route, time.time())
        for at, *counts in rows:
            store.conn.execute(
                "INSERT INTO delivery_counts VALUES (?, ?, ?, ?, ?)", (bucket_of(at), dest, *counts)
            )
        store.close()
        return

    async def go() -> None:
        conn = await asyncpg.connect(settings.outbox_url)
        await migrate(conn)
        dest = await PgStore(conn).destination_id(
            "http_request:seeded", "http_request", route, time.time()
        )
        for at, *counts in rows:
            await conn.execute(
                "INSERT INTO tagserver_outbox_counts VALUES ($1, $2, $3, $4, $5)",
                bucket_of(at), dest, *counts,
            )  # fmt: skip
        await conn.close()

    asyncio.run(go())


def stored_buckets(settings: Settings) -> int:
    if not settings.outbox_url:
        conn = sqlite3.connect(database_path(settings.data_dir))
        try:
            return int(conn.execute("SELECT count(*) FROM delivery_counts").fetchone()[0])
        finally:
            conn.close()

    async def go() -> int:
        conn = await asyncpg.connect(settings.outbox_url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM tagserver_outbox_counts"))
        finally:
            await conn.close()

    return asyncio.run(go())


def test_windows_read_the_stored_buckets_and_old_ones_are_pruned(
    tmp_path: Path, outbox_backend: dict[str, Any]
) -> None:
    settings = Settings(data_dir=str(tmp_path / "data"), **outbox_backend)
    now = time.time()
    # (when, delivered, retried, dead-lettered)
    seed(settings, [(now - 2 * 86400, 50, 5, 5), (now - 23 * 3600, 7, 1, 0), (now - 1800, 3, 0, 2)])
    assert stored_buckets(settings) == 3
    with app_client(tmp_path, minimal_container(), preview_password=PASSWORD) as client:
        r = client.post("/preview/login", data={"password": PASSWORD}, follow_redirects=False)
        assert r.status_code == 303
        figures = client.get("/preview/api/status").json()
        # the outbox's maintenance drops what no window shows any more (first run after 1 s)
        wait_until(lambda: stored_buckets(settings) == 2, timeout=10)
        html = client.get("/preview/status").text
    d = next(d for d in figures["destinations"] if d["destination"] == "http_request:seeded")
    assert d["delivered"] == {"minute": 0, "hour": 3, "day": 10}
    assert d["failed"] == {"minute": 0, "hour": 2, "day": 3}
    assert d["state"] == "unused"  # no tag sends there now; shown, since it did today
    assert len(d["chart"]) == 60
    (point,) = [p for p in d["chart"] if p["delivered"] or p["failed"]]
    assert point == {"at": minute_of(now - 1800), "delivered": 3, "failed": 2}
    assert 'aria-label="last hour: 3 delivered, 2 failed"' in html
    since = figures["health"]["delivery_windows_since"]
    assert 60 <= figures["time"] - since["minute"] <= 60 + BUCKET_SECONDS


def seed_retrying(settings: Settings, error: str) -> None:
    """A message another instance tried and will retry in an hour, as it recorded it."""
    route = {"url": "http://127.0.0.1:9/hook"}
    now = time.time()
    values = (now - 60, 2, now - 30, now - 5, 503, error, now + 3600)
    insert = (
        "INSERT INTO {table} (destination_id, payload, dedup_id, created_at, attempts,"
        " first_attempt_at, last_attempt_at, last_status, last_error, next_attempt_at)"
        " VALUES ({dest}, '{{}}', 'elsewhere', {marks})"
    )
    if not settings.outbox_url:
        store = Store.open(database_path(settings.data_dir))
        dest = store.destination_id("http_request:seeded", "http_request", route, now)
        store.conn.execute(
            insert.format(table="messages", dest=dest, marks="?, ?, ?, ?, ?, ?, ?"), values
        )
        store.close()
        return

    async def go() -> None:
        conn = await asyncpg.connect(settings.outbox_url)
        await migrate(conn)
        dest = await PgStore(conn).destination_id("http_request:seeded", "http_request", route, now)
        marks = ", ".join(f"${i}" for i in range(1, 8))
        await conn.execute(
            insert.format(table="tagserver_outbox_messages", dest=dest, marks=marks), *values
        )
        await conn.close()

    asyncio.run(go())


def test_retrying_and_the_last_error_come_from_the_outbox(
    tmp_path: Path, outbox_backend: dict[str, Any]
) -> None:
    settings = Settings(data_dir=str(tmp_path / "data"), **outbox_backend)
    seed_retrying(settings, "HTTP 503: the vendor is down for maintenance")
    with app_client(tmp_path, minimal_container(), preview_password=PASSWORD) as client:
        r = client.post("/preview/login", data={"password": PASSWORD}, follow_redirects=False)
        assert r.status_code == 303
        figures = client.get("/preview/api/status").json()
        html = client.get("/preview/status").text
    d = next(d for d in figures["destinations"] if d["destination"] == "http_request:seeded")
    assert d["pending"] == 1 and d["retrying"] == 1 and d["in_flight"] == 0
    last = d["last_error"]
    assert last["status"] == 503 and last["error"].endswith("down for maintenance")
    assert last["dead_letter"] is False
    assert "1 failed before, to retry" in html and "down for maintenance" in html


async def test_counts_are_what_a_settlement_applied(
    tmp_path: Path, outbox_backend: dict[str, Any]
) -> None:
    """Counted once per message, as the outbox applied it: a settlement written twice, or
    one by a worker that lost its lease, counts nothing more."""
    settings = Settings(data_dir=str(tmp_path), **outbox_backend)
    outbox = open_outbox(settings)
    await outbox.start()
    try:
        route = {"url": "http://127.0.0.1:9/hook"}
        await outbox.put(
            [Outgoing("dest", {"n": i}, f"id{i}", "http_request", route=route) for i in range(4)]
        )
        ((dest_id, *_),) = await outbox.due()
        claim = await outbox.claim(dest_id, "w1", 10)
        m = [message.id for message in claim.messages]
        plan = Settlement(
            delivered=[m[0]],
            retry=[Retry(m[1], time.time() + 60, 503, "HTTP 503")],
            dead=[DeadLetter(m[2], True, 400, "bad", "", "", "refused by the vendor")],
        )
        await outbox.settle("w1", plan)
        await outbox.settle("w1", plan)  # recorded again: nothing is counted twice
        await outbox.settle("w2", Settlement(retry=[Retry(m[3], time.time() + 60, None, "")]))
    finally:
        await outbox.close()
    now = time.time()

    def read() -> list[CountRow]:  # as the status page reads it (the admin is synchronous)
        admin = open_admin(settings)
        try:
            return admin.delivery_counts(*read_range(now))
        finally:
            admin.close()

    rows = await asyncio.to_thread(read)
    figures = summarize(rows, now)["dest"]
    assert figures["delivered"]["minute"] == 1
    assert figures["retried"]["minute"] == 1  # w2 did not hold m[3]: not applied, not counted
    assert figures["dead_lettered"]["minute"] == 1
    assert figures["chart"][-1] == {"at": minute_of(now), "delivered": 1, "failed": 2}


def downgrade(settings: Settings) -> None:
    """Make the outbox what the release before the counts left: no counts table, old version."""
    if not settings.outbox_url:
        conn = sqlite3.connect(database_path(settings.data_dir), isolation_level=None)
        conn.executescript("DROP TABLE delivery_counts; PRAGMA user_version = 4;")
        conn.close()
        return

    async def go() -> None:
        conn = await asyncpg.connect(settings.outbox_url)
        await conn.execute(
            "DROP TABLE tagserver_outbox_counts; UPDATE tagserver_outbox_schema SET version = 2"
        )
        await conn.close()

    asyncio.run(go())


def test_an_outbox_from_before_the_counts_is_migrated_in_place(
    tmp_path: Path, outbox_backend: dict[str, Any]
) -> None:
    settings = Settings(data_dir=str(tmp_path / "data"), **outbox_backend)
    vendor = FakeVendor()  # down: the message stays pending
    try:
        container = minimal_container(tags=[webhook_tag(vendor.url + "/hook", name="crm")])
        with app_client(tmp_path, container, retry_base_seconds=0.05) as client:
            event = {"event_name": "purchase", "event_id": "kept"}
            assert client.post("/api/events", json=event, headers=AUTH).status_code == 200
        downgrade(settings)
        vendor.up()
        with app_client(tmp_path, container, preview_password=PASSWORD) as client:
            vendor.wait_for(1)
            r = client.post("/preview/login", data={"password": PASSWORD}, follow_redirects=False)
            assert r.status_code == 303

            def delivered() -> dict[str, Any] | None:
                figures = client.get("/preview/api/status").json()
                d = next(d for d in figures["destinations"] if "crm" in d["tags"])
                return d if d["delivered"]["hour"] == 1 else None

            d = wait_until(delivered, timeout=10)
    finally:
        vendor.close()
    assert d["pending"] == 0 and vendor.accepted_json()[0]["event_id"] == "kept"
    if not settings.outbox_url:
        conn = sqlite3.connect(database_path(settings.data_dir))
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.close()
    else:

        async def version() -> int:
            conn = await asyncpg.connect(settings.outbox_url)
            try:
                return int(await conn.fetchval("SELECT version FROM tagserver_outbox_schema"))
            finally:
                await conn.close()

        assert asyncio.run(version()) == PG_SCHEMA_VERSION


# -- how windows are cut


def test_a_window_sums_the_buckets_overlapping_it() -> None:
    now = 1_000_045.0  # 25 s into a minute, 5 s into a bucket
    rows = [
        CountRow("d", "t", bucket_of(now), 1, 0, 0),  # this bucket
        CountRow("d", "t", bucket_of(now - 60), 2, 0, 0),  # overlaps the last minute
        CountRow("d", "t", bucket_of(now - 60) - BUCKET_SECONDS, 4, 0, 0),  # just before it
        CountRow("d", "t", bucket_of(now - 3600), 8, 1, 0),  # overlaps the last hour
        CountRow("d", "t", 0, 16, 0, 1),  # earlier today, summed by the outbox
    ]
    figures = summarize(rows, now)["d"]
    assert figures["delivered"] == {"minute": 3, "hour": 15, "day": 31}
    assert figures["retried"] == {"minute": 0, "hour": 1, "day": 1}
    assert figures["dead_lettered"] == {"minute": 0, "hour": 0, "day": 1}
    chart = figures["chart"]
    assert len(chart) == 60 and chart[-1]["at"] == minute_of(now)
    assert chart[-1]["delivered"] == 1 and chart[-2]["delivered"] == 6
    since, fine_since = read_range(now)
    assert since == bucket_of(now - 86400) and fine_since <= bucket_of(now - 3600)
