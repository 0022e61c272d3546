"""Container history through a real server: edits, a refused one, diff, rollback, /healthz."""

import json
import os
import subprocess
import sys
import time

import httpx
from support import ServerProcess, minimal_container, wait_until

from tagserver.container_diff import diff, summary
from tagserver.history import ACCEPTED, REFUSED, SQLiteHistory, UnknownRef, resolve

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


def test_resolve_refs(tmp_path):
    history = SQLiteHistory(tmp_path / "h.sqlite")
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
