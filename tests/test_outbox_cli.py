"""`tagserver outbox status | dead-letters | retry | purge`, as an operator runs them, on
both outbox backends (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
from click.testing import CliRunner

from tagserver.cli.main import main
from tagserver.delivery.outbox_backend import Settlement, open_outbox
from tagserver.plugins import Outgoing
from tagserver.settings import Settings

TOKEN = "EAAB-secret-token-123456"


def fill(data_dir, pending: dict[str, int], dead: dict[str, int]) -> None:
    """Store messages as the server would; dead-letter some as the dispatcher would (on the
    outbox the `outbox_backend` fixture chose)."""

    async def run() -> None:
        url = os.environ.get("TAGSERVER_OUTBOX_URL", "")
        outbox = open_outbox(Settings(data_dir=str(data_dir), outbox_url=url))
        await outbox.start()
        for destination in {*pending, *dead}:
            route = {"url": "https://vendor.example/x", "access_token": TOKEN}
            count = pending.get(destination, 0) + dead.get(destination, 0)
            await outbox.put(
                [
                    Outgoing(destination, {"n": i, "to": destination}, f"{destination}-{i}",
                             "http_request", tag_name="hook", route=route, created_at=time.time() - 90)
                    for i in range(count)
                ]
            )  # fmt: skip
        ids = {key: dest_id for dest_id, key, _, _ in await outbox.due()}
        for destination, count in dead.items():
            claim = await outbox.claim(ids[destination], "w", count)
            plan = Settlement(
                dead=[
                    (m.id, True, 400, "Invalid parameter", "100/2804003", "AbCtrace", "refused by the vendor")
                    for m in claim.messages
                ]
            )  # fmt: skip
            await outbox.settle("w", plan)
        await outbox.close()

    asyncio.run(run())


def outbox(*args: str, input: str | None = None, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, ["outbox", *args], input=input, env=env)


@pytest.fixture
def data(tmp_path, outbox_backend):
    fill(tmp_path, pending={"meta:111": 3, "http_request:a.example:1": 2}, dead={"meta:111": 2})
    return str(tmp_path)


def test_status_lists_destinations(data):
    result = outbox("status", "--data-dir", data)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "DESTINATION",
        "PENDING",
        "IN",
        "FLIGHT",
        "OLDEST",
        "NEXT",
        "TRY",
        "DEAD",
    ]
    meta = next(line for line in lines if line.startswith("meta:111"))
    assert meta.split()[1:3] == ["3", "0"] and meta.split()[-1] == "2"
    assert "1m 3" in meta  # oldest: 90 s
    assert lines[-1] == "total: 5 pending, 2 dead letters"
    assert TOKEN not in result.output


def test_status_json_and_env_data_dir(data):
    result = outbox("status", "--json", env={"TAGSERVER_DATA_DIR": data})
    rows = {r["destination"]: r for r in json.loads(result.output)["destinations"]}
    assert rows["meta:111"]["pending"] == 3 and rows["meta:111"]["dead_letters"] == 2
    assert rows["http_request:a.example:1"]["pending"] == 2
    assert rows["meta:111"]["oldest_age_seconds"] >= 89


def test_status_of_an_empty_outbox(tmp_path, outbox_backend):
    fill(tmp_path, {}, {})
    assert "the outbox is empty" in outbox("status", "--data-dir", str(tmp_path)).output


def test_a_missing_outbox_is_an_error(tmp_path):
    result = outbox("status", "--data-dir", str(tmp_path / "nope"))
    assert result.exit_code == 1 and "no outbox at" in result.output
    assert not (tmp_path / "nope").exists()


def test_dead_letters_show_the_vendors_reason(data):
    result = outbox("dead-letters", "--data-dir", data)
    assert result.exit_code == 0
    assert result.output.count("reason:   refused by the vendor") == 2
    assert "vendor:   HTTP 400 code 100/2804003 trace AbCtrace" in result.output
    assert "error:    Invalid parameter" in result.output
    assert "payload" not in result.output
    shown = outbox("dead-letters", "--payload", "--data-dir", data).output
    assert '"to": "meta:111"' in shown and TOKEN not in shown


def test_retry_requeues_dead_letters(data):
    ids = [
        d["id"]
        for d in json.loads(outbox("dead-letters", "--json", "--data-dir", data).output)[
            "dead_letters"
        ]
    ]
    result = outbox("retry", "--id", str(ids[0]), "--data-dir", data)
    assert "requeued 1 dead letter" in result.output
    result = outbox("retry", "--destination", "meta:111", "--data-dir", data)
    assert "requeued 1 dead letter" in result.output
    rows = {
        r["destination"]: r
        for r in json.loads(outbox("status", "--json", "--data-dir", data).output)["destinations"]
    }
    assert rows["meta:111"]["pending"] == 5 and rows["meta:111"]["dead_letters"] == 0
    assert "no dead letters" in outbox("dead-letters", "--data-dir", data).output


def test_purge_needs_a_target_and_a_confirmation(data):
    result = outbox("purge", "--data-dir", data)
    assert result.exit_code == 2 and "--dead-letters, --pending" in result.output
    result = outbox("purge", "--pending", "--data-dir", data, input="n\n")
    assert result.exit_code == 1 and "Aborted" in result.output
    assert "total: 5 pending" in outbox("status", "--data-dir", data).output


def test_purge_by_destination(data):
    result = outbox("purge", "--pending", "--destination", "meta:111", "--yes", "--data-dir", data)
    assert result.exit_code == 0 and "deleted 3 pending messages of meta:111" in result.output
    assert "total: 2 pending, 2 dead letters" in outbox("status", "--data-dir", data).output
    result = outbox("purge", "--dead-letters", "--yes", "--data-dir", data)
    assert "deleted 2 dead letters" in result.output
    assert "total: 2 pending, 0 dead letters" in outbox("status", "--data-dir", data).output
