"""The `log` tag's lines: the visitor's IP address is masked unless the tag says otherwise."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import ServerProcess, app_client, minimal_container, wait_until
from tagserver.tags.log import mask_ip

from tagserver.container.model import ContainerError

AUTH = {"Authorization": "Bearer test-key"}
DEFAULT_CONTAINER = Path(__file__).resolve().parent.parent / "container.json"


def log_lines(tmp_path, caplog, container: dict[str, Any], *events: dict[str, Any]) -> list[dict]:
    caplog.set_level(logging.INFO, logger="tagserver.tag.log")
    with app_client(tmp_path, container) as client:
        for event in events:
            r = client.post("/api/events", json=event, headers=AUTH)
            assert r.status_code == 200, r.text
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "tagserver.tag.log"]


def log_container(**params: Any) -> dict[str, Any]:
    fields = {"ip": "{{client_ip}}", "path": "{{request_path}}"}
    return minimal_container(
        tags=[{"name": "log_all", "type": "log", "fire_on": ["all"],
               "params": {"fields": fields, **params}}]
    )  # fmt: skip


V4 = {"event_name": "purchase", "ip_override": "203.0.113.77"}
V6 = {"event_name": "purchase", "ip_override": "2001:db8:85a3:1234:5678:8a2e:370:7334"}


def test_the_default_container_masks_the_visitors_ip(tmp_path, caplog):
    container = json.loads(DEFAULT_CONTAINER.read_text())
    [v4, v6] = log_lines(tmp_path, caplog, container, V4, V6)
    assert v4["event"]["ip_override"] == "203.0.113.0"
    assert v6["event"]["ip_override"] == "2001:db8:85a3::"
    text = json.dumps([v4, v6])
    assert "203.0.113.77" not in text and "8a2e" not in text


def test_fields_showing_the_ip_are_masked_too(tmp_path, caplog):
    [line] = log_lines(tmp_path, caplog, log_container(), V4)
    assert line["fields"] == {"ip": "203.0.113.0", "path": "/api/events"}
    assert "203.0.113.77" not in json.dumps(line)


def test_full_and_omit(tmp_path, caplog):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    [full] = log_lines(tmp_path / "a", caplog, log_container(ip_addresses="full"), V4)
    assert full["event"]["ip_override"] == "203.0.113.77" and full["fields"]["ip"] == "203.0.113.77"
    caplog.clear()
    [omit] = log_lines(tmp_path / "b", caplog, log_container(ip_addresses="omit"), V6)
    assert "ip_override" not in omit["event"] and omit["fields"]["ip"] is None


def test_an_unknown_mode_is_a_validation_problem(tmp_path):
    with (
        pytest.raises(ContainerError, match="ip_addresses"),
        app_client(tmp_path, log_container(ip_addresses="hashed")),
    ):
        pass


@pytest.mark.parametrize(
    ("ip", "masked"),
    [
        ("198.51.100.9", "198.51.100.0"),
        ("10.0.0.255", "10.0.0.0"),
        ("2001:db8::1", "2001:db8::"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1::"),  # 48 bits kept
        ("::ffff:198.51.100.9", "198.51.100.0"),
        ("not an ip", "[personal data]"),
    ],
)
def test_mask_ip(ip, masked):
    assert mask_ip(ip) == masked


def test_a_server_writes_every_line_in_order_and_all_of_them_before_it_exits(tmp_path):
    """The lines are written by a thread while the server runs: none is lost or reordered,
    the last ones included when it stops right after the hits."""
    container = minimal_container()
    count = 300
    with ServerProcess(tmp_path, container, {"TAGSERVER_LOG_LEVEL": "info"}) as server:
        with httpx.Client(base_url=server.url, headers=AUTH) as client:
            for batch in range(0, count, 50):
                events = [{"event_name": "purchase", "event_id": f"order-{n}"}
                          for n in range(batch, batch + 50)]  # fmt: skip
                assert client.post("/api/events", json={"events": events}).status_code == 200
        # written while serving: the first line shows up before the server stops
        wait_until(lambda: '"event_id":"order-0"' in server.logs())
    ids = [
        json.loads(line.split("tagserver.tag.log: ", 1)[1])["event_id"]
        for line in server.logs().splitlines()
        if " INFO tagserver.tag.log: " in line
    ]
    assert ids == [f"order-{n}" for n in range(count)]
    assert "Finished server process" in server.logs()  # uvicorn's last words, after ours
