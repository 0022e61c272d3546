"""Container history through a real server: edits, a refused one, diff, rollback, /healthz."""

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from support import LOOPBACK, ServerProcess, free_port, minimal_container, wait_until

from tagserver.container.diff import diff, summary
from tagserver.container.history import ACCEPTED, REFUSED, HistoryUnavailable, UnknownRef, resolve
from tagserver.container.history_backend import open_history
from tagserver.container.history_pg import PgHistory

AUTH = {"Authorization": "Bearer test-key"}


def fired(server, name):
    r = httpx.post(server.url + "/api/events", json={"event_name": name}, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()["results"][0]["tags_fired"]


def rewrite(path, data):
    path.write_text(json.dumps(data, indent=2))
    stamp = time.time() + 1  # the mtime changes even on coarse filesystems
    os.utime(path, (stamp, stamp))


def cli(server, *args, ok=True):
    env = {**server.env, "TAGSERVER_DATA_DIR": str(server.data_dir),
           "TAGSERVER_CONTAINER": str(server.container_path)}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "tagserver", "container", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if ok:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def health(server):
    r = httpx.get(server.url + "/healthz")
    assert r.status_code == 200
    return r.json()


def shop(version, buy_event):
    return minimal_container(
        version=version,
        triggers=[{"name": "all", "event": "*"}, {"name": "buy", "event": buy_event}],
        tags=[{"name": "log_all", "type": "log", "fire_on": ["all"]},
              {"name": "buyer", "type": "log", "fire_on": ["buy"]}],
    )  # fmt: skip


def test_three_edits_history_diff_rollback_and_healthz(tmp_path):
    with ServerProcess(tmp_path, shop("1", "purchase")) as server:
        assert fired(server, "refund") == ["log_all"]
        first = health(server)["container"]
        assert first["version"] == "1" and first["last_refused"] is None and first["loaded_at"]

        # edit 1: the buy trigger now listens to refunds too
        rewrite(server.container_path, shop("2", ["purchase", "refund"]))
        wait_until(lambda: health(server)["container"]["version"] == "2")
        assert fired(server, "refund") == ["log_all", "buyer"]

        # edit 2: refused (a tag names a trigger that does not exist)
        broken = shop("3", "purchase")
        broken["tags"][1]["fire_on"] = ["bye"]
        rewrite(server.container_path, broken)
        body = wait_until(lambda: (b := health(server))["container"]["last_refused"] and b)
        assert body["status"] == "ok" and body["container"]["version"] == "2"
        refused = body["container"]["last_refused"]
        assert refused["pending"] is True
        assert any('no trigger named "bye"' in p for p in refused["problems"])
        assert (
            "refused" in body["warnings"][0] and "still running version '2'" in body["warnings"][0]
        )
        assert fired(server, "refund") == ["log_all", "buyer"]  # the running one stays

        # edit 3: valid again, a third tag
        third = shop("4", ["purchase", "refund"])
        third["tags"].append({"name": "audit", "type": "log", "fire_on": ["all"]})
        rewrite(server.container_path, third)
        body = wait_until(lambda: (b := health(server))["container"]["version"] == "4" and b)
        assert "warnings" not in body and body["container"]["last_refused"]["pending"] is False

        listing = cli(server, "history").stdout.splitlines()
        rows = [line.split() for line in listing[1:]]
        assert [(r[0], r[3], r[4]) for r in rows] == [
            ("4", "accepted", "4"), ("3", "REFUSED", "3"), ("2", "accepted", "2"),
            ("1", "accepted", "1"),
        ]  # fmt: skip
        assert 'no trigger named "bye"' in listing[2]

        changes = cli(server, "diff", "1", "2").stdout
        assert "version: '1' → '2'" in changes
        assert "trigger 'buy' changed (event)" in changes
        assert "tag" not in changes.replace("trigger", "")  # only the trigger changed
        assert "tag 'audit' added" in cli(server, "diff", "-1").stdout  # previous → newest
        shown = cli(server, "show", "3")
        assert json.loads(shown.stdout)["version"] == "3" and '"bye"' in shown.stderr

        # roll back to the first version: the old behaviour is back within the reload interval
        out = cli(server, "rollback", "1").stdout
        assert "wrote #1 (version 1" in out
        wait_until(lambda: health(server)["container"]["version"] == "1", timeout=5)
        assert fired(server, "refund") == ["log_all"]
        assert "container reloaded: test version 1" in server.logs()
        assert "tags -audit" in server.logs()  # the log line summarises the diff

        newest = cli(server, "history").stdout.splitlines()[1]
        assert newest.split()[4] == "1" and "(same as #1)" in newest
        refused_rollback = cli(server, "rollback", "3", ok=False)
        assert refused_rollback.returncode != 0 and "was refused" in refused_rollback.stderr
        assert cli(server, "show", "nope", ok=False).returncode != 0

        metrics = httpx.get(server.url + "/metrics").text
        assert 'tagserver_container_reloads_total{result="refused"} 1.0' in metrics
        assert 'tagserver_container_reloads_total{result="applied"} 3.0' in metrics


def test_workers_record_each_change_once(tmp_path):
    with ServerProcess(tmp_path, shop("1", "purchase"), workers=2) as server:
        rewrite(server.container_path, shop("2", "refund"))
        wait_until(lambda: all(health(server)["container"]["version"] == "2" for _ in range(4)))
        time.sleep(1)  # both workers have seen the change
        rows = cli(server, "history", "--json").stdout
        assert [(e["version"], e["status"]) for e in json.loads(rows)] == [
            ("2", "accepted"), ("1", "accepted")
        ]  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def history_store(request, tmp_path):
    """The history on each backend, as `open_history` picks it."""
    url = request.getfixturevalue("postgres").create_database() if request.param != "sqlite" else ""
    history = open_history(tmp_path / "data", url)
    yield history
    history.close()


def test_resolve_refs(history_store):
    history = history_store
    for version in ("1", "2"):
        history.record(ACCEPTED, json.dumps({"version": version}).encode(), "c.json", "t", version)
    history.record(REFUSED, b"{", "c.json", problems=["invalid JSON"])
    entries = history.entries()
    assert resolve(entries, "-0").version == "2" and resolve(entries, "-1").version == "1"
    assert resolve(entries, "#3").status == REFUSED
    assert resolve(entries, entries[1].hash[:6]).version == "2"
    for bad in ("-2", "9", "#9"):
        try:
            resolve(entries, bad)
        except UnknownRef as exc:
            assert bad in str(exc)
        else:
            raise AssertionError(bad)
    # the same verdict on the same file is kept once
    assert history.record(REFUSED, b"{", "c.json") is None


def test_diff_names_sections_and_fields():
    old = shop("1", "purchase")
    new = shop("2", "purchase")
    new["tags"][1]["params"] = {"level": "warning"}
    new["tags"].reverse()
    new["transformations"] = [{"name": "x", "type": "exclude", "keys": ["value"]}]
    changes = [str(c) for c in diff(old, new)]
    assert "tag 'buyer' changed (params)" in changes
    assert "tags reordered: buyer, log_all" in changes
    assert "transformation 'x' added" in changes
    assert summary(diff(old, new)).startswith("container version '1'→'2'; tags ~buyer(params)")


def test_only_the_newest_thousand_are_kept(history_store):
    history_store.keep = 5
    for i in range(8):
        history_store.record(
            ACCEPTED, json.dumps({"version": str(i)}).encode(), "c.json", "t", str(i)
        )
    entries = history_store.entries()
    assert [e.version for e in entries] == ["7", "6", "5", "4", "3"]
    assert history_store.get(entries[0].id).version == "7" and history_store.get(1) is None


# -- PostgreSQL: one history for every instance ---------------------------------------------


def pg_cli(url, data_dir, container, *args, ok=True, via_env=False):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGSERVER_")}
    env["TAGSERVER_CONTAINER"] = str(container)
    option = [] if via_env else ["--outbox-url", url]
    if via_env:
        env["TAGSERVER_OUTBOX_URL"] = url
    done = subprocess.run(
        [sys.executable, "-m", "tagserver", "container", *args, "--data-dir", str(data_dir),
         *option],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if ok:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_instances_sharing_postgresql_share_one_history(tmp_path, postgres):
    url = postgres.create_database()
    env = {"TAGSERVER_OUTBOX_URL": url}
    path = tmp_path / "container.json"
    path.write_text(json.dumps(shop("1", "purchase"), indent=2))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with ServerProcess(tmp_path / "a", path, env=env, data_dir=tmp_path / "a" / "data") as a, \
            ServerProcess(tmp_path / "b", path, env=env, data_dir=tmp_path / "b" / "data") as b:  # fmt: skip
        rewrite(path, shop("2", ["purchase", "refund"]))
        for server in (a, b):
            wait_until(lambda s=server: health(s)["container"]["version"] == "2")
        time.sleep(0.5)  # both have recorded what they would record
        # a third data dir, on no server: the history is in the database
        elsewhere = tmp_path / "elsewhere"
        rows = json.loads(pg_cli(url, elsewhere, path, "history", "--json").stdout)
        assert [(e["version"], e["status"]) for e in rows] == [
            ("2", "accepted"), ("1", "accepted")
        ]  # fmt: skip
        assert not (elsewhere / "history.sqlite").exists()
        assert not (tmp_path / "a" / "data" / "history.sqlite").exists()
        listing = pg_cli(url, elsewhere, path, "history", via_env=True).stdout
        assert postgres.url().split("@")[0].split(":")[-1] not in listing  # no password
        assert (
            "trigger 'buy' changed (event)" in pg_cli(url, elsewhere, path, "diff", "1", "2").stdout
        )

        out = pg_cli(url, elsewhere, path, "rollback", "1").stdout
        assert "wrote #1 (version 1" in out
        for server in (a, b):
            wait_until(lambda s=server: health(s)["container"]["version"] == "1", timeout=5)
            assert fired(server, "refund") == ["log_all"]
        time.sleep(0.5)
        rows = json.loads(pg_cli(url, elsewhere, path, "history", "--json").stdout)
        assert [(e["version"], e["status"]) for e in rows] == [
            ("1", "accepted"), ("2", "accepted"), ("1", "accepted")
        ]  # fmt: skip
        for server in (a, b):
            assert "container history not written" not in server.logs()


def test_an_unreachable_postgresql_history_says_so_without_the_password(tmp_path, caplog):
    password = "hist-Secret-9931"
    url = f"postgresql://tagserver:{password}@{LOOPBACK}:{free_port()}/nowhere"
    history = PgHistory(url, timeout=1)
    try:
        with pytest.raises(HistoryUnavailable) as caught:
            history.record(ACCEPTED, b"{}", "c.json")
    finally:
        history.close()
    assert "cannot reach the container history" in str(caught.value)
    assert password not in str(caught.value) and LOOPBACK in str(caught.value)
    done = pg_cli(url, tmp_path, tmp_path / "c.json", "history", ok=False)
    assert done.returncode == 1
    assert "cannot reach the container history in PostgreSQL" in done.stderr
    assert password not in done.stdout + done.stderr and "Traceback" not in done.stderr


def test_reloads_and_hits_go_on_when_the_postgresql_history_is_down(tmp_path):
    """The history is a record: with PostgreSQL unreachable an edit is still applied and hits
    answered; the log says the history was not written, without the password."""
    password = "hist-Secret-9931"
    url = f"postgresql://tagserver:{password}@{LOOPBACK}:{free_port()}/nowhere"
    env = {"TAGSERVER_OUTBOX_URL": url, "TAGSERVER_OUTBOX_TIMEOUT_SECONDS": "1"}
    server = ServerProcess(tmp_path, shop("1", "purchase"), env=env)
    server.start(ready=(503,))  # the outbox is down too: /healthz says so
    try:
        assert fired(server, "refund") == ["log_all"]  # log tags send nothing to the outbox
        rewrite(server.container_path, shop("2", ["purchase", "refund"]))
        version = lambda: httpx.get(server.url + "/healthz").json()["container"]["version"]  # noqa: E731
        wait_until(lambda: version() == "2")
        assert fired(server, "refund") == ["log_all", "buyer"]
        logs = wait_until(lambda: "container history not written" in (t := server.logs()) and t)
        assert "cannot reach the container history in PostgreSQL" in logs
        assert password not in logs
    finally:
        server.stop()
