"""kill -9 under load: every event that got a 2xx reaches the vendor after a restart.

A real `tagserver serve` subprocess takes a few thousand events from concurrent clients and is
killed with SIGKILL mid-load. It is started again on the same data dir and the vendor comes
up; every acknowledged event must arrive. A duplicate is allowed only for an event the vendor
had already received before the kill (a send in flight: delivered, not yet recorded).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest
from fakes.vendor import Answer, FakeVendor, webhook_tag
from support import ServerProcess, minimal_container, wait_until

AUTH = {"Authorization": "Bearer test-key"}
EVENTS = 3000
KILL_AFTER = 1200  # acknowledged events before the kill
ENV = {
    "TAGSERVER_RETRY_BASE_SECONDS": "0.05",
    "TAGSERVER_RETRY_CAP_SECONDS": "0.5",
    "TAGSERVER_OUTBOX_LEASE_SECONDS": "2",
    "TAGSERVER_SEND_CONCURRENCY": "4",
}


async def load(server: ServerProcess, acked: set[str], group: bool = True) -> int:
    """Send EVENTS events, 64 at a time; kill -9 the server once KILL_AFTER are acknowledged."""
    killed = asyncio.Event()
    limit = asyncio.Semaphore(64)
    errors = 0

    async def one(http: httpx.AsyncClient, i: int) -> None:
        nonlocal errors
        event_id = f"crash-{i:05d}"
        async with limit:
            try:
                r = await http.post(
                    server.url + "/api/events",
                    json={"event_name": "purchase", "event_id": event_id},
                    headers=AUTH,
                )
            except httpx.HTTPError:
                errors += 1
                return
        if r.status_code == 200:
            assert r.json()["results"][0]["tags_fired"] == ["hook"]
            acked.add(event_id)
            if len(acked) >= KILL_AFTER and not killed.is_set():
                killed.set()
                server.kill(group)

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits, timeout=10) as http:
        await asyncio.gather(*(one(http, i) for i in range(EVENTS)))
    assert killed.is_set(), f"the server was never killed ({len(acked)} acknowledged)"
    return errors


@pytest.mark.slow
@pytest.mark.parametrize(
    ("vendor_at_kill", "killed"),
    [("down", "process group"), ("up and slow", "process group"), ("down", "server only")],
)
async def test_kill_9_mid_load_loses_nothing_acknowledged(tmp_path, vendor_at_kill, killed):
    vendor = FakeVendor()
    if vendor_at_kill != "down":
        vendor.respond(lambda r: Answer(delay=0.005))
        vendor.up()
    container = minimal_container(tags=[webhook_tag(vendor.url + "/hook")])
    server = ServerProcess(tmp_path, container, env=ENV).start()
    restarted = None
    try:
        acked: set[str] = set()
        writers = server.writer_pids()
        assert len(writers) == 1
        errors = await load(server, acked, group=killed == "process group")
        before_kill = {r.json()["event_id"] for r in vendor.accepted}
        assert KILL_AFTER <= len(acked) < EVENTS and errors > 0  # killed mid-load, for real
        # a writer whose server is gone commits what it has and exits: no orphan
        wait_until(lambda: not server.writer_pids(), timeout=10)
        if killed == "server only":
            assert "Traceback" not in server.logs()  # it exits quietly, too

        restarted = ServerProcess(tmp_path, server.container_path, env=ENV).start()
        vendor.clear()
        vendor.up()
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            arrived = {r.json()["event_id"] for r in vendor.accepted}
            if acked <= arrived:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # anything sent twice would arrive by now
        counts = Counter(r.json()["event_id"] for r in vendor.accepted)
        missing = acked - set(counts)
        assert not missing, (
            f"{len(missing)} acknowledged events never arrived, e.g. {sorted(missing)[:5]}"
        )
        duplicates = {event_id for event_id, n in counts.items() if n > 1}
        assert duplicates <= before_kill, duplicates - before_kill
        assert len(duplicates) <= 8  # at most what was in flight (send_concurrency 4)
        assert set(counts) <= {f"crash-{i:05d}" for i in range(EVENTS)}
    finally:
        server.stop()
        if restarted is not None:
            restarted.stop()
        vendor.close()


@pytest.mark.slow
def test_sigterm_finishes_in_flight_sends_then_leaves_the_rest_for_the_next_start(tmp_path):
    with FakeVendor() as vendor:
        # both are in flight when SIGTERM comes: "first" finishes within the grace, "late" not
        delays = {"first": 0.5, "late": 30}
        vendor.respond(lambda r: Answer(delay=delays.get(r.json()["event_id"], 0)))
        env = {**ENV, "TAGSERVER_SHUTDOWN_GRACE_SECONDS": "1.5", "TAGSERVER_OUTBOX_LEASE_SECONDS": "600"}  # fmt: skip
        container = minimal_container(tags=[webhook_tag(vendor.url + "/hook")])
        server = ServerProcess(tmp_path, container, env=env).start()
        try:
            for event_id in ("first", "late"):
                r = httpx.post(
                    server.url + "/api/events",
                    json={"event_name": "purchase", "event_id": event_id},
                    headers=AUTH,
                )
                assert r.status_code == 200
            deadline = time.monotonic() + 5
            while len(vendor.received) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            stopping = time.monotonic()
            server.stop()  # SIGTERM
            took = time.monotonic() - stopping
        finally:
            server.stop()
        assert took < 6, server.logs()
        assert [r.json()["event_id"] for r in vendor.accepted] == ["first"]  # finished in grace
        assert "released 1 claimed messages" in server.logs()
        delays.clear()
        with ServerProcess(tmp_path, server.container_path, env=env):
            vendor.wait_for(2, timeout=10)  # "late" again, released, not held for the lease
        assert [r.json()["event_id"] for r in vendor.accepted] == ["first", "late"]
