"""Hot reload: a changed container is swapped in; an invalid one is refused and the old one stays."""

import json
import os
import time

import httpx
from starlette.testclient import TestClient
from support import NO_GA4, NO_VENDOR, ServerProcess, minimal_container, wait_until, write_container

from tagserver.settings import Settings
from tagserver.web.app import create_app

AUTH = {"Authorization": "Bearer test-key"}


def fired(server):
    response = httpx.post(server.url + "/api/events", json={"event_name": "e"}, headers=AUTH)
    return response.json()["results"][0]["tags_fired"]


def rewrite(path, data):
    path.write_text(json.dumps(data))
    stamp = time.time() + 1  # make sure the mtime changes even on coarse filesystems
    os.utime(path, (stamp, stamp))


def test_hot_reload_swaps_valid_and_refuses_invalid(tmp_path):
    first = minimal_container(version="1")
    with ServerProcess(tmp_path, first) as server:
        assert fired(server) == ["log_all"]

        second = minimal_container(version="2")
        second["tags"] = [{"name": "renamed", "type": "log", "fire_on": ["all"]}]
        rewrite(server.container_path, second)
        wait_until(lambda: httpx.get(server.url + "/healthz").json()["container"]["version"] == "2")
        assert fired(server) == ["renamed"]

        broken = minimal_container(version="3")
        broken["tags"] = [{"name": "x", "type": "log", "fire_on": ["missing_trigger"]}]
        rewrite(server.container_path, broken)
        wait_until(lambda: "keeping the running one" in server.logs())
        assert 'tags[0] "x": fire_on[0]: no trigger named "missing_trigger"' in server.logs()
        assert httpx.get(server.url + "/healthz").json()["container"]["version"] == "2"
        assert fired(server) == ["renamed"]

        server.container_path.write_text("{ not json")
        wait_until(lambda: "invalid JSON at line 1" in server.logs())
        assert fired(server) == ["renamed"]


def test_serve_refuses_to_start_with_invalid_container(tmp_path):
    broken = minimal_container()
    broken["tags"][0]["type"] = "lgo"
    server = ServerProcess(tmp_path, broken)
    try:
        server.start(timeout=10)
    except RuntimeError as exc:
        assert 'unknown tag type "lgo"' in str(exc)
    else:
        server.stop()
        raise AssertionError("server started with an invalid container")


def test_a_change_made_while_the_server_starts_is_not_missed(tmp_path):
    """Between reading the container and starting its watcher a worker does much else (the
    outbox, the dispatcher); a change made meanwhile must be picked up like any other."""
    path = write_container(tmp_path, minimal_container(version="1"))
    settings = Settings.from_env(
        {}, container=str(path), data_dir=str(tmp_path / "data"), api_keys="test-key",
        reload_interval=0.1, ga4_collect_url=NO_GA4, meta_graph_url=NO_VENDOR,
    )  # fmt: skip
    app = create_app(settings)  # version 1 read, the server not started yet
    rewrite(path, minimal_container(version="2"))
    with TestClient(app, base_url="http://sgtm.shop.test") as client:
        version = wait_until(
            lambda: (v := client.get("/healthz").json()["container"]["version"]) == "2" and v,
            timeout=10,
        )
    assert version == "2"
