"""Benchmark: `tagserver events import` of a large CSV with the default container.

    python bench/bench_import.py                    # 1,000,000 rows
    python bench/bench_import.py --rows 100000 --dry-run

Generates a CSV of purchases with full customer data (email, phone, name, city, postal code,
country), then imports it into a fresh data dir as a user would: the shipped container.json,
the Meta tag live (pixel and token set, so every row becomes a stored Meta message; no server
runs, so nothing is delivered), the log tag writing its line per row to a file. Prints rows/s
(wall clock, the import command from start to exit), rows per CPU second (the import and
its outbox writer process: what a quiet machine would reach on one core), and the peak memory (RSS) of the import
process and of its outbox writer process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WRAPPER = """
import resource, sys
from tagserver.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print("PEAK_SELF", me.ru_maxrss, file=sys.stderr)
print("PEAK_CHILDREN", kids.ru_maxrss, file=sys.stderr)
cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
print("CPU_MS", int(cpu * 1000), file=sys.stderr)
"""


def write_csv(path: Path, rows: int) -> None:
    stamp = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    with path.open("w") as f:
        f.write(
            "event_name,event_time,value,currency,transaction_id,email_address,phone_number,"
            "first_name,last_name,city,postal_code,country\n"
        )
        for i in range(rows):
            f.write(
                f"purchase,{stamp},{i % 500}.90,EUR,R-{i},Buyer.{i}@Example.com,+49 30 {i:07d},"
                f"Erika,Mustermann,Berlin,{10000 + i % 9000},DE\n"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dry-run", action="store_true", help="Run the container, store nothing.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "rows.csv"
        started = time.perf_counter()
        write_csv(csv, args.rows)
        print(
            f"wrote {args.rows:,} rows ({csv.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAGSERVER_")}
        env.update(
            META_PIXEL_ID="1122334455",
            META_ACCESS_TOKEN="EAAbenchTOKEN0123456789",
            TAGSERVER_META_GRAPH_URL="http://127.0.0.1:9",
            TAGSERVER_DATA_DIR=str(Path(tmp) / "data"),
            TAGSERVER_CONTAINER=str(ROOT / "container.json"),
            PYTHONPATH=str(ROOT),
        )
        command = ["events", "import", str(csv), "--quiet"] + (
            ["--dry-run"] if args.dry_run else []
        )
        log = open(Path(tmp) / "import.log", "w")  # noqa: SIM115 - the log tag's lines
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", WRAPPER, *command], stdout=subprocess.PIPE, stderr=log,
            text=True, env=env, cwd=tmp,
        )  # fmt: skip
        elapsed = time.perf_counter() - started
        log.close()
        tail = (Path(tmp) / "import.log").read_text().splitlines()
        peaks = {
            line.split()[0]: int(line.split()[1])
            for line in tail
            if line.startswith(("PEAK", "CPU_MS"))
        }
        print(done.stdout.strip().splitlines()[-1])
        cpu = peaks.get("CPU_MS", 0) / 1000
        print(
            f"{args.rows / elapsed:,.0f} rows/s ({elapsed:.1f} s wall); "
            f"{args.rows / cpu:,.0f} rows per CPU second ({cpu * 1e6 / args.rows:.0f} µs/row, "
            "import and writer processes); peak RSS: import "
            f"{peaks.get('PEAK_SELF', 0) / 1024:.0f} MiB, outbox writer "
            f"{peaks.get('PEAK_CHILDREN', 0) / 1024:.0f} MiB"
        )


if __name__ == "__main__":
    main()
