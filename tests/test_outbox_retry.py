"""`tagserver outbox retry` sends dead letters where their tags send now.

The usual story: Meta's access token expired, every event was dead-lettered with code 190;
the operator sets the new token and retries. The events must go with the new token, and the
CLI must say where they go; `--keep-route` sends them the old way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fakes.graph import FakeGraph
from support import app_client, wait_until, write_container

from tagserver.cli.main import main

PIXEL = "1122334455"
OLD = "EAAoldEXPIREDtoken0000"
NEW = "EAAnewFRESHtoken1111"
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
AUTH = {"Authorization": "Bearer test-key"}
DEFAULT_CONTAINER = Path(__file__).resolve().parent.parent / "container.json"
FAST = {"retry_base_seconds": 0.05, "retry_cap_seconds": 0.2}

pytestmark = pytest.mark.usefixtures("outbox_backend")  # SQLite and PostgreSQL


def api_event(event_id: str) -> dict[str, Any]:
    return {
        "event_name": "purchase",
        "event_id": event_id,
        "page_location": "https://www.shop.test/checkout/thanks",
        "user_agent": UA,
        "ip_override": "203.0.113.7",
        "value": 10,
        "currency": "EUR",
        "user_data": {"email_address": "jane@example.com"},
    }


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, ["outbox", *args])


def dead_letters(data_dir: Path) -> list[dict[str, Any]]:
    result = cli("dead-letters", "--json", "--data-dir", str(data_dir))
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["dead_letters"]


def tokens_used(graph: FakeGraph) -> list[str]:
    return [r.query.get("access_token", "") for r in list(graph.requests)]


@pytest.fixture
def expired(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Two events dead-lettered because the token in the environment has expired."""
    monkeypatch.setenv("META_PIXEL_ID", PIXEL)
    monkeypatch.setenv("META_ACCESS_TOKEN", OLD)
    container = json.loads(DEFAULT_CONTAINER.read_text())
    with FakeGraph(token=NEW, pixel_ids={PIXEL}) as graph:
        with app_client(tmp_path, container, meta_graph_url=graph.url, **FAST) as client:
            for event_id in ("order-1", "order-2"):
                r = client.post("/api/events", json=api_event(event_id), headers=AUTH)
                assert r.status_code == 200, r.text
            letters = wait_until(lambda: len(dead_letters(tmp_path / "data")) == 2 and dead_letters(tmp_path / "data"), timeout=15)  # fmt: skip
        assert {d["code"].split("/")[0] for d in letters} == {"190"}
        assert set(tokens_used(graph)) == {OLD}
        graph.requests.clear()
        yield graph, container


def test_retry_after_fixing_the_token_delivers_with_the_new_token(tmp_path, expired, monkeypatch):
    graph, container = expired
    monkeypatch.setenv("META_ACCESS_TOKEN", NEW)  # the operator fixes the environment
    path = write_container(tmp_path, container)
    result = cli("retry", "--data-dir", str(tmp_path / "data"), "--container", str(path))
    assert result.exit_code == 0, result.output
    assert "requeued 2 dead letters" in result.output
    assert "meta_capi: 2 → meta:1122334455:" in result.output
    assert "where meta_capi sends now; was meta:1122334455:" in result.output
    assert OLD not in result.output and NEW not in result.output

    with app_client(tmp_path, container, meta_graph_url=graph.url, **FAST):  # restarted
        wait_until(lambda: any(r.accepted for r in list(graph.requests)), timeout=15)
    assert set(tokens_used(graph)) == {NEW}
    received = sorted(e["event_id"] for r in graph.requests if r.accepted for e in r.events)
    assert received == ["order-1", "order-2"]
    assert dead_letters(tmp_path / "data") == []


def test_keep_route_retries_with_the_stored_token(tmp_path, expired, monkeypatch):
    graph, container = expired
    monkeypatch.setenv("META_ACCESS_TOKEN", NEW)
    path = write_container(tmp_path, container)
    result = cli(
        "retry", "--keep-route", "--data-dir", str(tmp_path / "data"), "--container", str(path)
    )
    assert result.exit_code == 0, result.output
    assert "(the stored route, --keep-route)" in result.output
    with app_client(tmp_path, container, meta_graph_url=graph.url, **FAST):
        wait_until(lambda: len(dead_letters(tmp_path / "data")) == 2, timeout=15)
    assert set(tokens_used(graph)) == {OLD}


def test_a_tag_that_now_runs_dry_keeps_the_stored_route_and_says_why(tmp_path, expired, monkeypatch):  # fmt: skip
    graph, container = expired
    monkeypatch.setenv("META_ACCESS_TOKEN", "")
    path = write_container(tmp_path, container)
    result = cli("retry", "--data-dir", str(tmp_path / "data"), "--container", str(path))
    assert result.exit_code == 0, result.output
    assert "meta_capi: 2 → meta:1122334455:" in result.output
    assert "the stored route: the tag cannot say" in result.output


def test_retry_with_a_broken_container_refuses_and_points_at_keep_route(tmp_path, expired):
    path = tmp_path / "broken.json"
    path.write_text('{"tags": [')
    result = cli("retry", "--data-dir", str(tmp_path / "data"), "--container", str(path))
    assert result.exit_code != 0
    assert "--keep-route" in result.output
    assert len(dead_letters(tmp_path / "data")) == 2  # nothing moved
