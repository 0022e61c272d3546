"""The PostgreSQL outbox shared by several instances: a lost instance strands nothing, an
unreachable PostgreSQL refuses hits (503 + Retry-After, /healthz 503) and loses nothing it
acknowledged, the schema is created once however many instances start together, and the
URL's password shows nowhere.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import asyncpg
import httpx
import pytest
from click.testing import CliRunner
from fakes.vendor import FakeVendor, webhook_tag
from pg import PASSWORD, postgres_server
from support import ServerProcess, app_client, minimal_container, wait_until

from tagserver.cli.main import main
from tagserver.delivery.outbox_pg import SCHEMA_VERSION, PgOutbox, safe_url
from tagserver.plugins import Outgoing
from tagserver.settings import Settings, SettingsError

AUTH = {"Authorization": "Bearer test-key"}
FAST = {"retry_base_seconds": 0.05, "retry_cap_seconds": 0.5}


def event(event_id: str) -> dict[str, str]:
    return {"event_name": "purchase", "event_id": event_id}


# -- several instances --------------------------------------------------------------------


EVENTS = 3000
KILL_AFTER = 1200
ENV = {
    "TAGSERVER_RETRY_BASE_SECONDS": "0.05",
    "TAGSERVER_RETRY_CAP_SECONDS": "0.5",
    "TAGSERVER_OUTBOX_LEASE_SECONDS": "2",
    "TAGSERVER_SEND_CONCURRENCY": "4",
}


@pytest.mark.slow
async def test_an_instance_killed_mid_load_strands_nothing_the_survivor_delivers_it(
    tmp_path, postgres
):
    url = postgres.create_database()
    vendor = FakeVendor()  # down: nothing is delivered before the kill
    container = minimal_container(tags=[webhook_tag(vendor.url + "/hook")])
    env = {**ENV, "TAGSERVER_OUTBOX_URL": url}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = ServerProcess(tmp_path / "a", container, env=env)
    b = ServerProcess(tmp_path / "b", container, env=env)
    a.start()
    b.start()
    try:
        acked: dict[str, str] = {}  # event id → the instance that acknowledged it
        killed = asyncio.Event()
        limit = asyncio.Semaphore(64)

        async def one(http: httpx.AsyncClient, i: int) -> None:
            server, name = (a, "a") if i % 2 else (b, "b")
            event_id = f"pg-crash-{i:05d}"
            async with limit:
                try:
                    r = await http.post(server.url + "/api/events", json=event(event_id), headers=AUTH)  # fmt: skip
                except httpx.HTTPError:
                    return
            if r.status_code == 200:
                acked[event_id] = name
                if len(acked) >= KILL_AFTER and not killed.is_set():
                    killed.set()
                    a.kill()  # kill -9, never restarted

        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(limits=limits, timeout=10) as http:
            await asyncio.gather(*(one(http, i) for i in range(EVENTS)))
        assert killed.is_set()
        by_a = {e for e, name in acked.items() if name == "a"}
        assert len(by_a) > 300 and len(acked) < EVENTS  # a took its share, then died
        assert a.proc is not None and a.proc.poll() is not None

        vendor.up()  # only b is alive to deliver
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if set(acked) <= {r.json()["event_id"] for r in vendor.accepted}:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # anything sent twice would arrive by now
        counts = Counter(r.json()["event_id"] for r in vendor.accepted)
        missing = set(acked) - set(counts)
        assert not missing, f"{len(missing)} acknowledged events never arrived, e.g. {sorted(missing)[:5]}"  # fmt: skip
        # the vendor was down until after the kill: nothing was in flight, no duplicate
        assert [e for e, n in counts.items() if n > 1] == []
        assert by_a <= set(counts)  # what the dead instance accepted, the survivor delivered
        args = ["outbox", "status", "--json", "--outbox-url", url]
        status = await asyncio.to_thread(CliRunner().invoke, main, args)
        assert json.loads(status.output)["destinations"] == []  # all delivered, none pending
        assert PASSWORD not in a.logs() + b.logs()
    finally:
        a.stop()
        b.stop()
        vendor.close()


async def test_instances_starting_together_create_the_schema_once(postgres):
    url = postgres.create_database()
    outboxes = [PgOutbox(Settings(outbox_url=url)) for _ in range(6)]
    await asyncio.gather(*(o.start() for o in outboxes))
    try:
        assert all(o.problem is None for o in outboxes)
        conn = await asyncpg.connect(url)
        try:
            versions = await conn.fetch("SELECT version FROM tagserver_outbox_schema")
        finally:
            await conn.close()
        assert [r[0] for r in versions] == [SCHEMA_VERSION]
        # and every instance stores into the same outbox
        await asyncio.gather(*(
            o.put([Outgoing("d", {"n": i}, f"id{i}", "http_request", route={"url": "http://x"})])
            for i, o in enumerate(outboxes)
        ))  # fmt: skip
        assert sum(d["pending"] for d in await outboxes[0].stats()) == 6
    finally:
        await asyncio.gather(*(o.close() for o in outboxes))


# -- PostgreSQL down ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_postgres():
    """A cluster of this module's own: the tests stop and start it."""
    with postgres_server() as server:
        yield server


@pytest.mark.slow
def test_postgres_stopped_while_hits_arrive_gets_503_then_recovers_losing_nothing(
    tmp_path, own_postgres
):
    url = own_postgres.create_database()
    with FakeVendor() as vendor:
        vendor.down()  # keep everything in the outbox while PostgreSQL comes and goes
        container = minimal_container(tags=[webhook_tag(vendor.url + "/hook")])
        # A claim whose commit PostgreSQL made but whose answer the stop cut off is held until
        # its lease ends (by design: then any worker takes it again); keep that wait short.
        settings = {
            "outbox_url": url, "outbox_timeout_seconds": 1.0, "outbox_lease_seconds": 5.0, **FAST
        }  # fmt: skip
        with app_client(tmp_path, container, **settings) as client:
            acked: set[str] = set()
            n = 0

            def post() -> httpx.Response:
                nonlocal n
                n += 1
                r = client.post("/api/events", json=event(f"e{n}"), headers=AUTH)
                if r.status_code == 200:
                    acked.add(f"e{n}")
                return r

            for _ in range(20):
                assert post().status_code == 200
            own_postgres.stop()
            answers = [post() for _ in range(5)]
            refused = [r for r in answers if r.status_code == 503]
            assert refused, [r.status_code for r in answers]
            assert all(r.headers["retry-after"] for r in refused)
            health = client.get("/healthz")
            assert health.status_code == 503
            assert "PostgreSQL outbox" in health.json()["reason"]
            assert "unreachable" in health.json()["reason"]
            assert PASSWORD not in health.text and PASSWORD not in refused[-1].text

            own_postgres.start()
            wait_until(lambda: client.get("/healthz").status_code == 200, timeout=20)
            for _ in range(20):
                assert post().status_code == 200
            vendor.up()
            wait_until(lambda: acked <= {r.json()["event_id"] for r in vendor.accepted}, timeout=30)
    assert len(acked) >= 40


def test_a_server_started_while_postgres_is_down_answers_503_until_it_is_up(tmp_path, own_postgres):
    url = own_postgres.create_database()
    own_postgres.stop()
    try:
        container = minimal_container(tags=[webhook_tag("http://127.0.0.1:9/hook")])
        settings = {"outbox_url": url, "outbox_timeout_seconds": 1.0}
        with app_client(tmp_path, container, **settings) as client:
            r = client.post("/api/events", json=event("early"), headers=AUTH)
            assert r.status_code == 503 and r.headers["retry-after"]
            assert client.get("/healthz").status_code == 503
            own_postgres.start()
            wait_until(lambda: client.get("/healthz").status_code == 200, timeout=20)
            assert client.post("/api/events", json=event("later"), headers=AUTH).status_code == 200
    finally:
        if not own_postgres.running():
            own_postgres.start()


# -- the URL's password ---------------------------------------------------------------------


def test_the_password_never_shows(tmp_path, postgres, caplog):
    url = postgres.create_database()
    assert PASSWORD not in safe_url(url) and "tagserver@127.0.0.1" in safe_url(url)
    wrong = url.rsplit(":", 1)[0] + ":9/nope"  # the same credentials, a closed port
    result = CliRunner().invoke(main, ["outbox", "status", "--outbox-url", wrong])
    assert result.exit_code == 1
    assert "cannot reach the PostgreSQL outbox" in result.output
    assert PASSWORD not in result.output
    with pytest.raises(SettingsError) as bad:
        Settings(outbox_url=f"mysql://u:{PASSWORD}@h/db")
    assert PASSWORD not in str(bad.value)
    settings = CliRunner().invoke(main, ["settings"], env={"TAGSERVER_OUTBOX_URL": url})
    assert PASSWORD not in settings.output


def test_postgres_too_slow_gets_503_and_healthz_says_so_until_it_answers(tmp_path, postgres):
    url = postgres.create_database()
    container = minimal_container(tags=[webhook_tag("http://127.0.0.1:9/hook")])
    settings = {"outbox_url": url, "outbox_timeout_seconds": 0.5}
    with app_client(tmp_path, container, **settings) as client:
        assert client.post("/api/events", json=event("before"), headers=AUTH).status_code == 200

        async def hold_lock(release: asyncio.Event, held: asyncio.Event) -> None:
            conn = await asyncpg.connect(url)
            try:
                async with conn.transaction():
                    await conn.execute(
                        "LOCK TABLE tagserver_outbox_messages IN ACCESS EXCLUSIVE MODE"
                    )
                    held.set()
                    await release.wait()
            finally:
                await conn.close()

        release, held = client.portal.call(lambda: _events())
        locker = client.portal.start_task_soon(hold_lock, release, held)
        client.portal.call(held.wait)
        slow = client.post("/api/events", json=event("slow"), headers=AUTH)
        assert slow.status_code == 503 and slow.headers["retry-after"]
        health = client.get("/healthz")
        assert health.status_code == 503 and "no answer within 0.5 s" in health.json()["reason"]
        client.portal.call(release.set)
        locker.result(timeout=10)
        wait_until(lambda: client.get("/healthz").status_code == 200, timeout=10)
        assert client.post("/api/events", json=event("after"), headers=AUTH).status_code == 200
    args = ["outbox", "status", "--json", "--outbox-url", url]
    (row,) = json.loads(CliRunner().invoke(main, args).output)["destinations"]
    assert row["pending"] == 2  # before and after; the refused one was not stored


async def _events() -> tuple[asyncio.Event, asyncio.Event]:
    return asyncio.Event(), asyncio.Event()
