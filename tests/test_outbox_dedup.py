"""One message per destination and dedup id: a resent event is stored and sent once.

Meta deduplicates server events on event name + id within 48 hours; the outbox keeps the same
promise, whether the repeat comes while the first copy waits (Meta down), after it was
delivered, or from another source (the collector and the events API).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fakes.graph import FakeGraph
from support import app_client, wait_until

from tagserver.cli.main import main

PIXEL = "1122334455"
TOKEN = "EAAdedupTOKEN0123456789"
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
AUTH = {"Authorization": "Bearer test-key"}
DEFAULT_CONTAINER = Path(__file__).resolve().parent.parent / "container.json"
FAST = {"retry_base_seconds": 0.05, "retry_cap_seconds": 0.2}
both_backends = pytest.mark.usefixtures("outbox_backend")  # SQLite and PostgreSQL


@pytest.fixture
def graph(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("META_PIXEL_ID", PIXEL)
    monkeypatch.setenv("META_ACCESS_TOKEN", TOKEN)
    with FakeGraph(token=TOKEN, pixel_ids={PIXEL}) as fake:
        yield fake


def default_container() -> dict[str, Any]:
    return json.loads(DEFAULT_CONTAINER.read_text())


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


def collector_hit(event_id: str) -> str:
    return json.dumps({
        "pid": f"page-{event_id}-0001",
        "consent": {"ad_storage": "granted"},
        "user": {"email": "jane@example.com"},
        "events": [{
            "name": "purchase", "id": event_id,
            "params": {"value": 10, "currency": "EUR"},
            "page": {"page_location": "https://www.shop.test/checkout/thanks"},
        }],
    })  # fmt: skip


def outbox_pending(data_dir: Path) -> int:
    result = CliRunner().invoke(main, ["outbox", "status", "--json", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    return sum(d["pending"] for d in json.loads(result.output)["destinations"])


def meta_events(graph: FakeGraph, event_id: str) -> list[dict[str, Any]]:
    return [e for r in list(graph.requests) for e in r.events if e.get("event_id") == event_id]


@both_backends
def test_three_identical_posts_while_meta_is_down_are_stored_and_sent_once(tmp_path, graph):
    graph.mode = "outage"
    settings = {"meta_graph_url": graph.url, **FAST}
    with app_client(tmp_path, default_container(), **settings) as client:
        answers = [client.post("/api/events", json=api_event("order-1"), headers=AUTH) for _ in range(3)]  # fmt: skip
        assert [a.status_code for a in answers] == [200, 200, 200]
        results = [a.json()["results"][0] for a in answers]
        assert [r["duplicate"] for r in results] == [False, True, True]
        assert results[1]["duplicate_tags"] == ["meta_capi"]
        assert "meta_capi" in results[1]["tags_fired"]
        assert outbox_pending(tmp_path / "data") == 1

        wait_until(lambda: graph.requests, timeout=10)  # Meta was tried, and failed
        graph.mode = "ok"
        wait_until(lambda: any(r.accepted for r in list(graph.requests)), timeout=15)
        accepted = [r for r in list(graph.requests) if r.accepted]
        assert [len(r.events) for r in accepted] == [1]
        wait_until(lambda: outbox_pending(tmp_path / "data") == 0, timeout=10)

        # resent after delivery, within Meta's window: not stored, not sent again
        again = client.post("/api/events", json=api_event("order-1"), headers=AUTH)
        assert again.json()["results"][0]["duplicate"] is True
        assert outbox_pending(tmp_path / "data") == 0
        # another event id is a new message
        other = client.post("/api/events", json=api_event("order-2"), headers=AUTH)
        assert other.json()["results"][0]["duplicate"] is False
        wait_until(lambda: meta_events(graph, "order-2"), timeout=10)
        time.sleep(0.3)
    # every try (the failed ones during the outage, then the delivery) carried the event once
    tries = [r for r in graph.requests if meta_events_in(r, "order-1")]
    assert all(len(r.events) == 1 for r in tries)
    assert len([r for r in tries if r.accepted]) == 1


def meta_events_in(request: Any, event_id: str) -> bool:
    return any(e.get("event_id") == event_id for e in request.events)


@both_backends
def test_the_same_event_from_the_collector_and_the_events_api_is_sent_once(tmp_path, graph):
    graph.mode = "outage"
    settings = {"meta_graph_url": graph.url, **FAST}
    with app_client(tmp_path, default_container(), **settings) as client:
        browser = client.post(
            "/collect",
            content=collector_hit("order-9"),
            headers={
                "content-type": "text/plain",
                "origin": "https://www.shop.test",
                "user-agent": UA,
            },  # fmt: skip
        )
        assert browser.status_code == 200, browser.text
        backend = client.post("/api/events", json=api_event("order-9"), headers=AUTH)
        assert backend.json()["results"][0]["duplicate"] is True
        assert outbox_pending(tmp_path / "data") == 1
        graph.mode = "ok"
        wait_until(lambda: any(r.accepted for r in list(graph.requests)), timeout=15)
        wait_until(lambda: outbox_pending(tmp_path / "data") == 0, timeout=10)
    accepted = [r for r in graph.requests if r.accepted]
    assert [[e["event_id"] for e in r.events] for r in accepted] == [["order-9"]]


@both_backends
def test_a_repeat_within_one_request_is_stored_once(tmp_path, graph):
    graph.mode = "outage"
    with app_client(tmp_path, default_container(), meta_graph_url=graph.url, **FAST) as client:
        answer = client.post(
            "/api/events", json={"events": [api_event("order-5")] * 2}, headers=AUTH
        )
        assert [r["duplicate"] for r in answer.json()["results"]] == [False, True]
        assert outbox_pending(tmp_path / "data") == 1


def test_an_older_sqlite_outbox_with_repeats_is_migrated_keeping_the_first(tmp_path):
    import sqlite3

    from tagserver.delivery.outbox_store import Store, database_path

    path = database_path(tmp_path)
    Store.open(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        "DROP INDEX messages_dedup; PRAGMA user_version = 2;"
        "INSERT INTO destinations (key, tag_type, route, updated_at) VALUES ('d', 't', '{}', 0);"
        "INSERT INTO messages (destination_id, payload, dedup_id, created_at, next_attempt_at)"
        " VALUES (1, '1', 'a', 0, 0), (1, '2', 'a', 0, 0), (1, '3', 'b', 0, 0);"
    )
    conn.close()
    Store.open(path).close()
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT dedup_id, payload FROM messages ORDER BY id").fetchall()
    assert rows == [("a", "1"), ("b", "3")]
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 5  # 3: dedup, 4: secrets, 5: counts
    assert conn.execute("SELECT pending FROM destinations").fetchone()[0] == 2
