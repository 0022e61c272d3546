"""A real PostgreSQL for the tests: Debian's binaries, a cluster in a temporary directory,
listening on a free loopback port (no system service).

PostgreSQL refuses to run as root; CI runs as root, so there the cluster belongs to the
`postgres` user (created by Debian's package), or to `nobody`, and every command runs through
`runuser`. Password authentication (scram) is on, so tests can check the password never shows.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from support import LOOPBACK, free_port

BIN = Path(os.environ.get("TAGSERVER_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
USER = "tagserver"
PASSWORD = "pg-Secret-4417-do-not-log"


def available() -> bool:
    return (BIN / "initdb").exists()


class PostgresServer:
    """One cluster: `start`, `stop` (as an outage would), `start` again; `url(db)`."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tagserver-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.log = self.root / "postgres.log"
        self.owner = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                with contextlib.suppress(KeyError):
                    self.owner = pwd.getpwnam(name)
                    break
            os.chown(self.root, self.owner.pw_uid, self.owner.pw_gid)

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(a) for a in argv]
        if self.owner is not None:
            command = ["runuser", "-u", self.owner.pw_name, "--", *command]
        return subprocess.run(
            command, check=check, capture_output=True, text=True, timeout=120, cwd=self.root
        )

    def init(self) -> PostgresServer:
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.owner is not None:
            os.chown(pwfile, self.owner.pw_uid, self.owner.pw_gid)
        self._run(
            BIN / "initdb", "-D", self.data, "-U", USER, f"--pwfile={pwfile}",
            "--auth=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C",
        )  # fmt: skip
        pwfile.unlink()
        return self

    def start(self) -> PostgresServer:
        options = (
            f"-h {LOOPBACK} -p {self.port} -k {self.root} -c max_connections=200"
            " -c shared_buffers=64MB -c log_min_messages=warning"
        )
        self._run(BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60", "start")  # fmt: skip
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run(BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop", check=False)  # fmt: skip

    def running(self) -> bool:
        return self._run(BIN / "pg_ctl", "-D", self.data, "status", check=False).returncode == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@{LOOPBACK}:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        subprocess.run(
            [BIN / "createdb", "-h", LOOPBACK, "-p", str(self.port), "-U", USER, name],
            check=True, capture_output=True, env=env, timeout=60,
        )  # fmt: skip
        return self.url(name)

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer().init()
    try:
        server.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if server._run(BIN / "pg_isready", "-h", LOOPBACK, "-p", str(server.port), check=False).returncode == 0:  # fmt: skip
                break
            time.sleep(0.1)
        yield server
    finally:
        server.close()
