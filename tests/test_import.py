"""`tagserver events import`: offline conversions from a file, end to end.

The shipped container.json with Meta credentials, the Graph API stood in for by the fake on
loopback; the import runs as a real command against the data dir of a running server (the
outbox is shared) or of a stopped one. Asserted: what Meta receives, and what the user reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fakes.graph import FakeGraph
from support import ServerProcess, wait_until

from tagserver.engine.importer import Mapping, read_rows, row_event

PIXEL = "1122334455"
TOKEN = "EAAE2EsecretTOKENvalue0123456789"
DEFAULT_CONTAINER = Path(__file__).resolve().parent.parent / "container.json"

pytestmark = pytest.mark.slow


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def iso(days_ago: float = 0, fmt: str = "%Y-%m-%dT%H:%M:%S") -> str:
    return (datetime.now(UTC) - timedelta(days=days_ago)).strftime(fmt)


@pytest.fixture(scope="module")
def graph():
    with FakeGraph(token=TOKEN, pixel_ids={PIXEL}) as fake:
        yield fake


def env_for(graph: FakeGraph) -> dict[str, str]:
    return {
        "META_PIXEL_ID": PIXEL,
        "META_ACCESS_TOKEN": TOKEN,
        "TAGSERVER_META_GRAPH_URL": graph.url,
        "TAGSERVER_RETRY_BASE_SECONDS": "0.1",
        "TAGSERVER_RETRY_CAP_SECONDS": "0.5",
    }


@pytest.fixture(scope="module")
def server(graph, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("import")
    with ServerProcess(tmp, DEFAULT_CONTAINER, env=env_for(graph)) as process:
        yield process
    logs = process.logs()
    assert TOKEN not in logs


def run_import(
    data_dir: Path,
    graph: FakeGraph,
    *args: str,
    stdin: bytes | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGSERVER_")}
    env.update(env_for(graph))
    env.update(extra_env or {})
    env.update({"TAGSERVER_DATA_DIR": str(data_dir), "TAGSERVER_CONTAINER": str(DEFAULT_CONTAINER)})
    return subprocess.run(
        [sys.executable, "-m", "tagserver", "events", "import", *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def received(graph: FakeGraph, prefix: str) -> list[dict[str, Any]]:
    return [e for e in graph.accepted_events() if str(e.get("event_id", "")).startswith(prefix)]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_csv_of_good_bad_and_too_old_rows(server, graph, tmp_path):
    csv = write(
        tmp_path / "pos.csv",
        "event_id,event_name,event_time,value,currency,email_address,phone_number,first_name,city,country\n"
        f"pos-1,purchase,{iso(1)},42.50,EUR, Jane.Doe@Example.com ,+44 20 7946 0958,Jane,London,GB\n"
        f"pos-2,purchase,{iso(2)},ten,EUR,a@example.com,,,,\n"
        f"pos-3,purchase,{iso(70)},5,EUR,old@example.com,,,,\n"
        "pos-4,purchase,,5,EUR,no-time@example.com,,,,\n"
        f'pos-5,purchase,{iso(3)},"1,5",EUR,b@example.com,,,,\n',
    )
    result = run_import(server.data_dir, graph, str(csv))
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "line 2: queued → log_all, meta_capi" in out or "line 2: queued → meta_capi" in out
    assert "line 3: invalid: value: 'ten' is not a number" in out
    assert "line 4: refused: meta_capi: not sent: event_time" in out
    assert "Meta refuses physical_store events older than 62 days" in out
    assert "line 5: invalid: event_time: required" in out
    assert "line 6: invalid: value: '1,5' is not a number" in out
    assert "5 rows: 1 queued, 1 refused, 3 invalid" in out
    assert "jane.doe@example.com" not in (out + result.stderr).lower()

    [event] = wait_until(lambda: received(graph, "pos-1"), timeout=10)
    assert event["action_source"] == "physical_store"
    assert event["custom_data"]["value"] == 42.5
    assert event["user_data"]["em"] == [sha("jane.doe@example.com")]
    assert event["user_data"]["ph"] == [sha("442079460958")]
    assert event["user_data"]["fn"] == [sha("jane")]
    assert "client_ip_address" not in event["user_data"]  # an import has no visitor's address
    assert received(graph, "pos-3") == []


def test_a_mapping_file_names_columns_the_crms_way(server, graph, tmp_path):
    sold = datetime.now(UTC) - timedelta(days=2)
    mapping = write(
        tmp_path / "crm.json",
        json.dumps(
            {
                "columns": {
                    "Deal ID": "event_id",
                    "Closed": "event_time",
                    "Amount": "value",
                    "E-Mail": "email_address",
                    "Notes": "",
                },
                "constants": {"event_name": "purchase", "currency": "EUR"},
                "date_formats": {"event_time": "%d.%m.%Y %H:%M"},
                "timezone": "Europe/Berlin",
            }
        ),  # fmt: skip
    )
    csv = write(
        tmp_path / "crm.csv",
        "Deal ID,Closed,Amount,E-Mail,Notes\n"
        f'crm-1,{sold.astimezone().strftime("%d.%m.%Y %H:%M")},990,crm@example.com,"multi\nline"\n'
        "crm-2,not a date,10,x@example.com,\n",
    )
    result = run_import(server.data_dir, graph, str(csv), "--mapping", str(mapping))
    out = result.stdout
    assert "line 4: invalid: event_time: 'not a date' does not match the date format" in out, out
    [event] = wait_until(lambda: received(graph, "crm-1"), timeout=10)
    berlin = datetime.strptime(
        sold.astimezone().strftime("%d.%m.%Y %H:%M"), "%d.%m.%Y %H:%M"
    ).replace(tzinfo=__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert event["event_time"] == int(berlin.timestamp())
    assert event["custom_data"] == {"value": 990.0, "currency": "EUR"} | {
        k: v for k, v in event["custom_data"].items() if k not in ("value", "currency")
    }
    assert event["user_data"]["em"] == [sha("crm@example.com")]


def test_rerunning_the_same_file_sends_nothing_twice(server, graph, tmp_path):
    csv = write(
        tmp_path / "again.csv",
        "event_name,event_time,value,currency,email_address\n"  # no event_id: derived from the row
        f"purchase,{iso(1)},11,EUR,again-1@example.com\n"
        f"purchase,{iso(1)},12,EUR,again-2@example.com\n",
    )
    first = run_import(server.data_dir, graph, str(csv))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "2 rows: 2 queued" in first.stdout
    wait_until(lambda: len(received(graph, "import-")) >= 2, timeout=10)
    sent = len(received(graph, "import-"))

    second = run_import(server.data_dir, graph, str(csv))
    assert second.returncode == 0
    assert "2 rows: 2 duplicate" in second.stdout
    assert "was imported before" in second.stdout
    time.sleep(1.5)  # the server's dispatcher looks for new rows every second
    assert len(received(graph, "import-")) == sent


def test_a_dry_run_shows_the_payload_and_stores_nothing(server, graph, tmp_path):
    csv = write(
        tmp_path / "dry.csv",
        f"event_id,event_name,event_time,value,currency,email_address\ndry-1,purchase,{iso(1)},7,EUR,Dry@Example.com\n",
    )
    result = run_import(server.data_dir, graph, str(csv), "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dry run — nothing stored. 1 row: 1 dry run" in result.stdout
    assert sha("dry@example.com") in result.stdout  # the exact payload, hashed
    assert "dry@example.com" not in result.stdout.lower()
    assert TOKEN not in result.stdout
    time.sleep(1.5)
    assert received(graph, "dry-") == []
    again = run_import(server.data_dir, graph, str(csv))  # a dry run left no ledger entry
    assert "1 row: 1 queued" in again.stdout


def test_json_lines_from_standard_input_into_a_stopped_servers_data_dir(graph, tmp_path):
    lines = [
        {"event_id": "jl-1", "event_name": "purchase", "event_time": iso(1), "value": 3,
         "currency": "EUR", "email_address": "jl@example.com", "items": [{"item_id": "A", "quantity": 2}]},
        "not json",
        [1, 2],
    ]  # fmt: skip
    text = "\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n"
    data_dir = tmp_path / "data"
    result = run_import(data_dir, graph, "-", "--format", "jsonl", stdin=text.encode())
    assert "line 2: invalid: not valid JSON" in result.stdout
    assert "line 3: invalid: expected a JSON object per line" in result.stdout
    assert "3 rows: 1 queued, 2 invalid" in result.stdout
    assert received(graph, "jl-") == []  # no server runs on this data dir yet

    with ServerProcess(tmp_path, DEFAULT_CONTAINER, env=env_for(graph), data_dir=data_dir):
        [event] = wait_until(lambda: received(graph, "jl-1"), timeout=10)
    assert event["custom_data"]["contents"] == [{"id": "A", "quantity": 2}]


def test_a_file_that_cannot_be_read_is_a_clear_error(graph, tmp_path):
    result = run_import(tmp_path / "data", graph, str(tmp_path / "missing.csv"))
    assert result.returncode == 1
    assert "missing.csv: No such file or directory" in result.stderr
    bad_mapping = write(tmp_path / "m.json", '{"columns": {"a": 1}}')
    csv = write(tmp_path / "x.csv", "a\n1\n")
    result = run_import(tmp_path / "data", graph, str(csv), "--mapping", str(bad_mapping))
    assert "columns must map column names to event keys" in result.stderr
    assert "Traceback" not in result.stderr


def test_memory_stays_bounded_on_a_large_file(graph, tmp_path):
    """Peak memory of an import of N rows hardly grows with N: rows are streamed in chunks."""

    def peak_rss_kib(rows: int) -> int:
        path = tmp_path / f"big-{rows}.csv"
        with path.open("w") as f:
            f.write("event_name,event_time,value,currency,email_address,city\n")
            stamp = iso(1)
            for i in range(rows):
                f.write(f"purchase,{stamp},{i % 97}.5,EUR,buyer{i}@example.com,Berlin\n")
        script = (
            "import resource, sys\n"
            "from tagserver.cli.main import main\n"
            "try:\n"
            "    main(['events', 'import', sys.argv[1], '--dry-run', '--quiet'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAGSERVER_")}
        env.update(env_for(graph))
        env.update(
            {
                "TAGSERVER_DATA_DIR": str(tmp_path / "data"),
                "TAGSERVER_CONTAINER": str(DEFAULT_CONTAINER),
            }
        )
        done = subprocess.run(
            [sys.executable, "-c", script, str(path)], capture_output=True, text=True, env=env, timeout=300
        )  # fmt: skip
        assert f"{rows} rows: {rows} dry run" in done.stdout, (
            done.stdout[-500:] + done.stderr[-2000:]
        )
        return int(done.stdout.rsplit("PEAK", 1)[1])

    small, large = peak_rss_kib(2_000), peak_rss_kib(40_000)
    assert large - small < 16 * 1024, f"peak RSS grew {(large - small) // 1024} MiB for 38,000 rows"


# -- reading rows (no server needed) --------------------------------------------------------


def test_csv_rows_report_the_line_they_start_on():
    text = 'a,b\n1,"two\nlines"\n\n3,4\n5,6,7\n'
    rows = list(read_rows(iter(text.splitlines(keepends=True)), "csv"))
    assert [(r.line, r.values, r.problem) for r in rows] == [
        (2, {"a": "1", "b": "two\nlines"}, ""),
        (5, {"a": "3", "b": "4"}, ""),
        (6, None, "3 cells, but the header names 2 columns"),
    ]


def test_columns_land_where_events_keep_them():
    mapping = Mapping.from_dict({"columns": {"Mail": "email_address", "Zip": "postal_code"},
                                 "constants": {"currency": "EUR", "country": "DE"}})  # fmt: skip
    event = row_event({"Mail": "a@b.de", "Zip": " 10115 ", "value": "3", "custom_data.store": "7",
                       "items": '[{"item_id": "x"}]', "empty": ""}, mapping)  # fmt: skip
    assert event == {
        "user_data": {
            "email_address": "a@b.de",
            "address": {"postal_code": "10115", "country": "DE"},
        },
        "value": "3",
        "custom_data": {"store": "7"},
        "items": [{"item_id": "x"}],
        "currency": "EUR",
    }


def test_an_import_into_a_shared_postgresql_outbox_is_delivered_by_the_server(
    graph, postgres, tmp_path
):
    url = postgres.create_database()
    env = {**env_for(graph), "TAGSERVER_OUTBOX_URL": url}
    csv = write(
        tmp_path / "pg.csv",
        f"event_id,event_name,event_time,value,currency,email_address\npg-1,purchase,{iso(1)},9,EUR,pg@example.com\n",
    )
    with ServerProcess(tmp_path, DEFAULT_CONTAINER, env=env):
        result = run_import(
            tmp_path / "other-data", graph, str(csv), extra_env={"TAGSERVER_OUTBOX_URL": url}
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "1 row: 1 queued" in result.stdout
        [event] = wait_until(lambda: received(graph, "pg-1"), timeout=10)
    assert event["user_data"]["em"] == [sha("pg@example.com")]
    assert "pg-Secret-4417" not in result.stdout + result.stderr  # the password is never printed
