"""The start-up log says what will happen, read from a real `tagserver serve`'s stderr.

One line per tag in the tag's own words (LIVE with the pixel, or DRY RUN naming the empty
variable), the outbox and where it is, the preview store (its password never shown) and the
listen address.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import LOOPBACK, ServerProcess, free_port, minimal_container, wait_until

from tagserver.container.model import load
from tagserver.plugins import Tag, load_registry
from tagserver.settings import Settings
from tagserver.web.startup import safe_url, tag_lines

TOKEN = "EAAB-very-secret-access-token-123"
PIXEL = "1234567890123456"


def meta_container(**tag_params: object) -> dict[str, object]:
    """Like the shipped container.json: the Meta tag's credentials come from the environment."""
    return minimal_container(
        variables=[
            {"name": "pixel", "type": "env", "env": "META_PIXEL_ID", "default": ""},
            {
                "name": "token",
                "type": "env",
                "env": "META_ACCESS_TOKEN",
                "default": "",
                "secret": True,
            },
            {"name": "page", "type": "event_data", "key": "page_location"},
        ],  # fmt: skip
        tags=[
            {"name": "log_all", "type": "log", "fire_on": ["all"]},
            {
                "name": "meta",
                "type": "meta_capi",
                "fire_on": ["all"],
                "params": {"pixel_id": "{{pixel}}", "access_token": "{{token}}", **tag_params},
            },
            {
                "name": "hook",
                "type": "http_request",
                "fire_on": ["all"],
                "params": {"url": "https://user:pw@hooks.example/in?key=k3y-in-query"},
            },
            {"name": "quiet", "type": "log", "fire_on": ["all"], "paused": True},
        ],  # fmt: skip
    )


def startup_lines(server: ServerProcess) -> list[str]:
    return [
        line.split("tagserver.startup: ", 1)[1]
        for line in server.logs().splitlines()
        if "tagserver.startup: " in line
    ]


def test_dry_run_names_the_empty_variables(tmp_path):
    env = {"META_PIXEL_ID": "", "META_ACCESS_TOKEN": ""}
    with ServerProcess(tmp_path, meta_container(), env=env) as server:
        lines = startup_lines(server)
    assert f"listening on http://{LOOPBACK}:{server.port} (1 worker)" in lines
    outbox = (tmp_path / "data" / "outbox.sqlite3").resolve()
    assert f"outbox: SQLite at {outbox} (this machine only, synchronous=full)" in lines
    assert any(line.startswith("preview store: SQLite") for line in lines)
    assert "tag log_all (log): writes each event it fires on to the log (level info)" in lines
    assert (
        "tag meta (meta_capi): DRY RUN — META_PIXEL_ID and META_ACCESS_TOKEN are empty "
        "(events are checked, not sent)"
    ) in lines
    # no user info, query or fragment of a webhook URL: they may hold a key
    assert "tag hook (http_request): LIVE → POST https://hooks.example/in" in lines
    assert any(line.startswith("tag quiet (log): PAUSED") for line in lines)
    assert "k3y-in-query" not in server.logs() and "user:pw" not in server.logs()


def test_live_meta_tag_shows_the_pixel_and_never_the_token(tmp_path):
    env = {"META_PIXEL_ID": PIXEL, "META_ACCESS_TOKEN": TOKEN}
    container = meta_container(test_event_code="TEST4242")
    with ServerProcess(tmp_path, container, env=env) as server:
        lines = startup_lines(server)
    assert (
        "tag meta (meta_capi): LIVE → pixel 1234… (Graph API v25.0), test event code TEST4242 "
        "(Events Manager → Test events)"
    ) in lines
    assert TOKEN not in server.logs()
    assert PIXEL not in "\n".join(lines)


def test_only_the_token_missing_and_a_pixel_per_event(tmp_path):
    env = {"META_PIXEL_ID": PIXEL, "META_ACCESS_TOKEN": ""}
    (tmp_path / "a").mkdir()
    with ServerProcess(tmp_path / "a", meta_container(), env=env) as server:
        assert (
            "tag meta (meta_capi): DRY RUN — META_ACCESS_TOKEN is empty "
            "(events are checked, not sent)"
        ) in startup_lines(server)

    (tmp_path / "b").mkdir()
    per_event = meta_container()
    per_event["tags"][1]["params"]["pixel_id"] = "{{event.pixel}}"
    with ServerProcess(tmp_path / "b", per_event, env={"META_ACCESS_TOKEN": TOKEN}) as server:
        assert (
            "tag meta (meta_capi): LIVE for events that resolve pixel_id from {{event.pixel}}; "
            "DRY RUN for the others"
        ) in startup_lines(server)


def test_a_reload_says_what_the_tags_do_now(tmp_path):
    with ServerProcess(tmp_path, meta_container(), env={"META_PIXEL_ID": PIXEL}) as server:
        changed = meta_container()
        changed["version"] = "2"
        changed["tags"][1]["params"]["access_token"] = TOKEN  # a literal token this time
        server.container_path.write_text(json.dumps(changed))
        wait_until(lambda: "container reloaded" in server.logs())
        wait_until(lambda: "tag meta (meta_capi): LIVE → pixel 1234…" in server.logs())
        assert TOKEN not in server.logs()


@pytest.fixture
def redis_with_password(tmp_path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path), "--requirepass", "r3dis-pa55word"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((LOOPBACK, port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://:r3dis-pa55word@{LOOPBACK}:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def test_redis_preview_store_is_shown_without_its_password(tmp_path, redis_with_password):
    env = {"TAGSERVER_REDIS_URL": redis_with_password}
    with ServerProcess(tmp_path, minimal_container(), env=env) as server:
        lines = startup_lines(server)
        assert httpx.get(server.url + "/healthz").status_code == 200
    port = redis_with_password.rsplit(":", 1)[1].split("/")[0]
    shown = f"preview store: Redis at redis://:***@{LOOPBACK}:{port}/0 (shared by every instance)"
    assert shown in lines
    assert "r3dis-pa55word" not in server.logs()


def test_postgresql_outbox_is_shown_without_its_password(tmp_path, postgres):
    url = postgres.create_database()
    password = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    with ServerProcess(tmp_path, minimal_container(), env={"TAGSERVER_OUTBOX_URL": url}) as server:
        lines = startup_lines(server)
    shown = url.replace(f":{password}@", "@")
    assert f"outbox: PostgreSQL at {shown} (shared by every instance)" in lines
    assert password not in server.logs()


def test_urls_lose_their_passwords():
    assert (
        safe_url("postgresql://tagserver:s3cret@db:5432/tagserver?sslmode=require")
        == "postgresql://tagserver:***@db:5432/tagserver?sslmode=require"
    )
    assert safe_url("postgresql://db/tagserver?user=t&password=s3cret") == (
        "postgresql://db/tagserver?user=t&password=***"
    )
    assert safe_url("host=db dbname=tagserver password=s3cret") == (
        "host=db dbname=tagserver password=***"
    )
    assert safe_url("redis://redis:6379/0") == "redis://redis:6379/0"
    assert safe_url("rediss://default:p%40ss@cache.example:6380") == (
        "rediss://default:***@cache.example:6380"
    )


class ThirdPartyTag(Tag):
    """A plugin whose `describe` has a bug, and one that keeps the API's default."""

    type_name = "third_party"

    def describe(self, params):
        raise KeyError("oops")


class PlainTag(Tag):
    type_name = "plain"


def test_a_tag_that_cannot_describe_itself_does_not_stop_the_start():
    registry = load_registry()
    registry.tags.update(third_party=ThirdPartyTag, plain=PlainTag)
    spec = minimal_container()
    spec["tags"] = [
        {"name": "buggy", "type": "third_party", "fire_on": ["all"]},
        {"name": "default", "type": "plain", "fire_on": ["all"]},
    ]
    container = load(spec, registry, Settings())
    assert tag_lines(container) == [
        "tag buggy (third_party): (cannot describe itself: KeyError: 'oops')",
        "tag default (plain): runs in the server, sends nothing",
    ]


def test_the_shipped_containers_vendor_tags_say_dry_run_or_live(tmp_path):
    """Each conversions tag of the default container names what it lacks, or where it sends."""
    shipped = Path(__file__).resolve().parent.parent / "container.json"
    env = {"TIKTOK_PIXEL_CODE": "C1234567890ABCDEFGHI", "TIKTOK_ACCESS_TOKEN": "tt-s3cret-token"}
    with ServerProcess(tmp_path, shipped, env=env) as server:
        lines = startup_lines(server)
    for tag, names in (
        ("pinterest_capi", "PINTEREST_AD_ACCOUNT_ID and PINTEREST_ACCESS_TOKEN"),
        ("snapchat_capi", "SNAPCHAT_PIXEL_ID and SNAPCHAT_ACCESS_TOKEN"),
    ):
        assert (
            f"tag {tag} ({tag}): DRY RUN — {names} are empty (events are checked, not sent)"
            in lines
        )
    [tiktok] = [line for line in lines if line.startswith("tag tiktok_events ")]
    assert tiktok.startswith(
        "tag tiktok_events (tiktok_events): LIVE → tiktok:C1234567890ABCDEFGHI:"
    )
    assert "tt-s3cret-token" not in server.logs()
