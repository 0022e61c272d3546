"""The outbox: what a 2xx promises is on disk; routes stored once; 503 when it cannot store.

Tests taking `outbox_backend` run on SQLite and PostgreSQL; the others are about the SQLite
outbox's own machinery (its writer process, the disk)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakes.outbox_jobs import cap_database
from fakes.vendor import FakeVendor, webhook_tag
from prometheus_client import REGISTRY
from support import app_client, minimal_container, wait_until

from tagserver.cli.main import main
from tagserver.delivery import outbox as outbox_module
from tagserver.delivery.outbox import Outbox, Store, database_path
from tagserver.delivery.outbox_writer import Frames, request_frame
from tagserver.errors import Unavailable
from tagserver.plugins import Outgoing
from tagserver.settings import Settings

AUTH = {"Authorization": "Bearer test-key"}
SECRET = "sk_live_0123456789abcdef"
FAST = {"retry_base_seconds": 0.05, "retry_cap_seconds": 0.2}


@pytest.fixture
def vendor():
    with FakeVendor() as v:
        yield v


@pytest.fixture
def dead_vendor():
    """A port where nothing listens (yet): connections are refused."""
    v = FakeVendor()
    yield v
    v.close()


def container(url: str, **params):
    return minimal_container(tags=[webhook_tag(url, **params)])


def post(client, event_id: str, **extra):
    return client.post(
        "/api/events", json={"event_name": "purchase", "event_id": event_id, **extra}, headers=AUTH
    )


def outbox_status(data_dir) -> dict:
    result = CliRunner().invoke(main, ["outbox", "status", "--json", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def pending(data_dir) -> int:
    return sum(d["pending"] for d in outbox_status(data_dir)["destinations"])


def test_a_2xx_means_the_message_is_on_disk(tmp_path, dead_vendor, outbox_backend):
    with app_client(tmp_path, container(dead_vendor.url + "/hook"), **FAST) as client:
        for i in range(5):
            assert post(client, f"e{i}").status_code == 200
        # read by another connection, as another process (the CLI) would
        assert pending(tmp_path / "data") == 5


async def test_puts_that_arrive_together_share_one_commit(tmp_path):
    outbox = Outbox(Settings(data_dir=str(tmp_path)))
    await outbox.start()
    before = REGISTRY.get_sample_value("tagserver_outbox_commit_seconds_count") or 0
    messages = [
        [Outgoing("dest", {"n": i}, f"id{i}", "http_request", route={"url": "http://x"})]
        for i in range(300)
    ]
    await asyncio.gather(*(outbox.put(m) for m in messages))
    commits = (REGISTRY.get_sample_value("tagserver_outbox_commit_seconds_count") or 0) - before
    await outbox.close()
    conn = sqlite3.connect(database_path(tmp_path))
    assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 300
    assert commits <= 3


async def test_put_returns_after_its_commit(tmp_path):
    outbox = Outbox(Settings(data_dir=str(tmp_path)))
    await outbox.start()
    try:
        await outbox.put([Outgoing("dest", {"n": 1}, "id1", "http_request", route={})])
        conn = sqlite3.connect(database_path(tmp_path))
        assert conn.execute("SELECT dedup_id FROM messages").fetchall() == [("id1",)]
    finally:
        await outbox.close()


def test_routes_with_secrets_are_stored_once_and_never_with_messages(tmp_path, dead_vendor):
    tag_params = {"headers": {"Authorization": f"Bearer {SECRET}"}}
    with app_client(tmp_path, container(dead_vendor.url + "/hook", **tag_params), **FAST) as client:
        for i in range(20):
            assert post(client, f"e{i}").status_code == 200
        metrics = client.get("/metrics").text
    conn = sqlite3.connect(database_path(tmp_path / "data"))
    routes = conn.execute("SELECT route FROM destinations").fetchall()
    assert len(routes) == 1 and SECRET.encode() in routes[0][0]
    rows = conn.execute("SELECT * FROM messages").fetchall()
    assert len(rows) == 20
    assert SECRET not in repr(rows)
    assert SECRET not in metrics
    for command in (["status"], ["dead-letters", "--payload"], ["dead-letters", "--json"]):
        result = CliRunner().invoke(
            main, ["outbox", *command, "--data-dir", str(tmp_path / "data")]
        )
        assert result.exit_code == 0 and SECRET not in result.output


def test_outbox_full_answers_503_and_keeps_everything_acknowledged(
    tmp_path, dead_vendor, outbox_backend
):
    settings = {**FAST, "outbox_max_messages": 5}
    with app_client(tmp_path, container(dead_vendor.url + "/hook"), **settings) as client:
        answers = {f"e{i}": post(client, f"e{i}") for i in range(9)}
        acked = [eid for eid, r in answers.items() if r.status_code == 200]
        refused = [r for r in answers.values() if r.status_code == 503]
        assert len(acked) == 5 and len(refused) == 4
        assert all(int(r.headers["retry-after"]) > 0 for r in refused)
        assert "the outbox is full" in refused[0].json()["error"]
        health = client.get("/healthz")  # the server stays up, and says it refuses hits
        assert health.status_code == 503
        assert "the outbox is full" in health.json()["reason"]

        dead_vendor.up()
        received = dead_vendor.wait_for(5, timeout=15)
        time.sleep(0.3)  # nothing more arrives
        assert sorted(r.json()["event_id"] for r in dead_vendor.accepted) == sorted(acked)
        assert len(received) == 5
        assert post(client, "after").status_code == 200  # room again


def test_low_disk_answers_503_with_retry_after(tmp_path, vendor):
    settings = {**FAST, "outbox_min_free_bytes": 10**18}
    with app_client(tmp_path, container(vendor.url + "/hook"), **settings) as client:
        r = post(client, "e1")
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) > 0
        assert "free" in r.json()["error"]
        health = client.get("/healthz")
        assert health.status_code == 503
        assert health.json()["status"] == "unavailable"
        assert "below the minimum" in health.json()["reason"]
    time.sleep(0.2)
    assert vendor.received == []


def test_sqlite_disk_full_answers_503_and_loses_nothing_acknowledged(
    tmp_path, dead_vendor, monkeypatch
):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the writer finds the job
    big = "x" * 20000  # a few pages per message
    tag = webhook_tag(dead_vendor.url + "/hook")
    tag["params"]["body"]["padding"] = "{{event.padding}}"
    with app_client(tmp_path, minimal_container(tags=[tag]), **FAST) as client:
        outbox = client.app.state.tagserver.outbox

        def limit(extra_pages: int | None) -> None:
            client.portal.call(outbox.run, cap_database, extra_pages)

        limit(12)
        answers = {f"e{i}": post(client, f"e{i}", padding=big) for i in range(8)}
        acked = [eid for eid, r in answers.items() if r.status_code == 200]
        full = [r for r in answers.values() if r.status_code == 503]
        assert acked and full, {k: r.status_code for k, r in answers.items()}
        assert "disk holding the outbox is full" in full[0].json()["error"]
        assert "retry-after" in full[0].headers
        health = client.get("/healthz")
        assert health.status_code == 503
        assert "disk holding the outbox is full" in health.json()["reason"]

        limit(None)  # space again
        assert post(client, "later", padding=big).status_code == 200
        assert client.get("/healthz").status_code == 200
        acked.append("later")
        dead_vendor.up()
        dead_vendor.wait_for(len(acked), timeout=15)
        time.sleep(0.3)
        assert sorted(r.json()["event_id"] for r in dead_vendor.accepted) == sorted(acked)


def test_messages_left_at_shutdown_are_sent_after_the_next_start(
    tmp_path, dead_vendor, outbox_backend
):
    tags = container(dead_vendor.url + "/hook")
    with app_client(tmp_path, tags, **FAST) as client:
        for i in range(3):
            assert post(client, f"e{i}").status_code == 200
    assert pending(tmp_path / "data") == 3
    dead_vendor.up()
    with app_client(tmp_path, tags, **FAST):
        dead_vendor.wait_for(3, timeout=10)
        wait_until(lambda: pending(tmp_path / "data") == 0, timeout=5)
    assert sorted(r.json()["event_id"] for r in dead_vendor.accepted) == ["e0", "e1", "e2"]


# -- the writer process


def message(n: int) -> list[Outgoing]:
    return [Outgoing("dest", {"n": n}, f"id{n}", "http_request", route={"url": "http://x"})]


def stored_ids(tmp_path) -> list[str]:
    conn = sqlite3.connect(database_path(tmp_path))
    try:
        return sorted(row[0] for row in conn.execute("SELECT dedup_id FROM messages"))
    finally:
        conn.close()


async def wait_for_writer(outbox: Outbox, other_than: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        writer = outbox._writer
        if writer is not None and writer.process.pid != other_than and writer.transport:
            return writer.process.pid
        await asyncio.sleep(0.05)
    raise AssertionError("no new outbox writer")


async def test_a_killed_writer_is_replaced_and_what_it_confirmed_stays(tmp_path):
    outbox = Outbox(Settings(data_dir=str(tmp_path)))
    await outbox.start()
    try:
        await asyncio.gather(*(outbox.put(message(n)) for n in range(5)))
        first = outbox._writer.process.pid
        os.kill(first, signal.SIGKILL)
        second = await wait_for_writer(outbox, other_than=first)
        await asyncio.gather(*(outbox.put(message(n)) for n in range(5, 10)))
        assert outbox.is_open and second != first
        assert outbox.pending == 10
    finally:
        await outbox.close()
    assert stored_ids(tmp_path) == sorted(f"id{n}" for n in range(10))


async def test_hits_waiting_on_a_writer_that_dies_get_503_and_later_ones_succeed(tmp_path):
    outbox = Outbox(Settings(data_dir=str(tmp_path)))
    await outbox.start()
    try:
        pid = outbox._writer.process.pid
        os.kill(pid, signal.SIGSTOP)  # the commit never comes back …
        waiting = asyncio.ensure_future(outbox.put(message(1)))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        os.kill(pid, signal.SIGKILL)  # … and then the writer is gone
        with pytest.raises(Unavailable, match="stopped before confirming") as refused:
            await asyncio.wait_for(waiting, 5)
        assert refused.value.headers["Retry-After"] == "1"
        await wait_for_writer(outbox, other_than=pid)
        await outbox.put(message(2))
    finally:
        await outbox.close()
    assert stored_ids(tmp_path) == ["id2"]


async def test_the_writer_ignores_interrupts_sent_to_the_whole_process_group(tmp_path):
    """Ctrl-C in a terminal or a service manager signals every process of the group: the
    writer must keep committing until the server closes it, after its last commit."""
    outbox = Outbox(Settings(data_dir=str(tmp_path)))
    await outbox.start()
    try:
        pid = outbox._writer.process.pid
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
        await asyncio.sleep(0.2)
        await outbox.put(message(1))
        assert outbox._writer.process.pid == pid and outbox._writer.process.poll() is None
    finally:
        await outbox.close()
    assert stored_ids(tmp_path) == ["id1"]
    assert outbox._writer is None  # closed, and the process has exited


async def test_the_writer_process_gets_no_settings_and_so_no_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("TAGSERVER_API_KEYS", SECRET)
    monkeypatch.setenv("TAGSERVER_META_ACCESS_TOKEN", SECRET)
    outbox = Outbox(Settings(data_dir=str(tmp_path)))
    await outbox.start()
    try:
        environ = Path(f"/proc/{outbox._writer.process.pid}/environ").read_bytes()
        assert SECRET.encode() not in environ and b"TAGSERVER_" not in environ
        await outbox.put(message(1))
    finally:
        await outbox.close()


async def test_an_outbox_that_cannot_open_says_why(tmp_path):
    (tmp_path / "outbox.sqlite3").write_bytes(b"this is not a database" * 100)
    outbox = Outbox(Settings(data_dir=str(tmp_path)))
    with pytest.raises(RuntimeError, match="the outbox cannot open: DatabaseError"):
        await outbox.start()


def test_a_writer_that_cannot_restart_makes_healthz_503_until_it_can(
    tmp_path, dead_vendor, monkeypatch
):
    monkeypatch.setattr(outbox_module, "RESTART_AFTER", 0.1)
    monkeypatch.setattr(outbox_module, "RESTART_RETRY", 0.3)
    with app_client(tmp_path, container(dead_vendor.url + "/hook"), **FAST) as client:
        outbox = client.app.state.tagserver.outbox
        assert post(client, "before").status_code == 200
        db = database_path(tmp_path / "data")
        os.replace(db, tmp_path / "kept")
        db.mkdir()  # a new writer cannot open this
        os.kill(outbox._writer.process.pid, signal.SIGKILL)

        health = wait_until(lambda: (r := client.get("/healthz")).status_code == 503 and r)
        assert health.json()["status"] == "unavailable"
        assert "the outbox writer cannot start" in health.json()["reason"]
        refused = post(client, "while-broken")
        assert refused.status_code == 503 and "retry-after" in refused.headers
        assert "the outbox writer cannot start" in refused.json()["error"]

        db.rmdir()
        os.replace(tmp_path / "kept", db)  # the database is back
        wait_until(lambda: client.get("/healthz").status_code == 200)
        assert post(client, "after").status_code == 200
    conn = sqlite3.connect(db)
    assert sorted(r[0] for r in conn.execute("SELECT dedup_id FROM messages")) == [
        "after",
        "before",
    ]


async def test_a_job_that_cannot_reach_the_writer_fails_alone(tmp_path):
    outbox = Outbox(Settings(data_dir=str(tmp_path)))
    await outbox.start()
    try:
        with pytest.raises(Exception, match="pickle"):
            await outbox.run(lambda store, now: None)  # not importable by name
        await outbox.put(message(1))
    finally:
        await outbox.close()
    assert stored_ids(tmp_path) == ["id1"]


def test_a_writer_whose_server_dies_commits_what_it_got_and_exits_quietly(tmp_path):
    """The server sends a write and dies before the answer: the write is still committed,
    and the writer exits with status 0 and nothing on stderr (no traceback in the log)."""
    Store.open(database_path(tmp_path)).close()
    ours, theirs = socket.socketpair()
    with theirs:
        writer = subprocess.Popen(
            [sys.executable, "-m", "tagserver.delivery.outbox_writer", str(theirs.fileno()),
             str(database_path(tmp_path)), "full"],
            pass_fds=[theirs.fileno()], stderr=subprocess.PIPE,
        )  # fmt: skip
    assert Frames().feed(ours.recv(65536))[0][0] == "ready"
    row = ("dest", "http_request", {"url": "http://x"}, '{"n":1}', "id1", "t", 1.0, None, None)
    ours.sendall(request_frame(1, [row], []))
    ours.close()  # dies before the answer
    _, stderr = writer.communicate(timeout=10)
    assert writer.returncode == 0 and stderr == b""
    assert stored_ids(tmp_path) == ["id1"]


def test_a_version_2_database_gets_the_secrets_column_and_keeps_its_messages(tmp_path):
    path = database_path(tmp_path)
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE destinations (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE,"
        " tag_type TEXT NOT NULL, route BLOB NOT NULL, pending INTEGER NOT NULL DEFAULT 0,"
        " updated_at REAL NOT NULL);"
        "INSERT INTO destinations (key, tag_type, route, updated_at)"
        " VALUES ('dest', 'http_request', '{\"url\": \"http://x\"}', 1.0);"
    )
    old.close()
    store = Store.open(path)  # creates the other tables, adds the column: version 3
    store.conn.execute(
        "INSERT INTO messages (destination_id, payload, dedup_id, created_at, next_attempt_at)"
        " VALUES (1, '{}', 'id1', 1.0, 1.0)"
    )
    claimed = store.claim(1, "w", 10, time.time() + 60, time.time())
    assert claimed.ids and claimed.route == {"url": "http://x"} and claimed.secrets == ()
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == 5
    store.close()
