"""Test helpers: real server processes and in-process apps, loopback only."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from starlette.testclient import TestClient

from tagserver.settings import Settings
from tagserver.web.app import create_app

LOOPBACK = "127.0.0.1"
# Vendors default to their real URLs (the shipped container forwards GA4 hits to Google, Meta
# tags with credentials send to graph.facebook.com): tests point them at a closed loopback port
# instead, so no test ever leaves the machine. A test that checks a vendor passes its fake's URL.
NO_VENDOR = f"http://{LOOPBACK}:9"
NO_GA4 = f"{NO_VENDOR}/g/collect"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def write_container(directory: Path, container: dict[str, Any]) -> Path:
    path = directory / "container.json"
    path.write_text(json.dumps(container, indent=2))
    return path


def minimal_container(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "test",
        "version": "1",
        "clients": [{"name": "events_api", "type": "events_api"}],
        "variables": [],
        "triggers": [{"name": "all", "event": "*"}],
        "tags": [{"name": "log_all", "type": "log", "fire_on": ["all"]}],
    }
    base.update(overrides)
    return base


@contextlib.contextmanager
def app_client(tmp_path: Path, container: dict[str, Any], **settings: Any) -> Iterator[TestClient]:
    """The app in-process (lifespan included), for fast HTTP-level tests."""
    path = write_container(tmp_path, container)
    options = {"container": str(path), "data_dir": str(tmp_path / "data"), "api_keys": "test-key"}
    options["ga4_collect_url"] = NO_GA4
    options["meta_graph_url"] = NO_VENDOR
    for vendor in ("tiktok", "pinterest", "snapchat"):
        options[f"{vendor}_api_url"] = NO_VENDOR
    # the `outbox_backend` fixture puts the PostgreSQL outbox's URL there
    options["outbox_url"] = os.environ.get("TAGSERVER_OUTBOX_URL", "")
    options.update(settings)
    app = create_app(Settings.from_env({}, **options))  # core and plugin settings by name
    with TestClient(app, base_url="http://sgtm.shop.test") as client:
        yield client


class ServerProcess:
    """`tagserver serve` as a real subprocess on a free loopback port."""

    def __init__(
        self,
        tmp_path: Path,
        container: dict[str, Any] | Path,
        env: dict[str, str] | None = None,
        workers: int = 1,
        port: int | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        self.container_path = (
            container if isinstance(container, Path) else write_container(tmp_path, container)
        )
        self.port = port or free_port()
        self.data_dir = data_dir or tmp_path / "data"
        self.workers = workers
        self.log_path = tmp_path / f"server-{self.port}.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TAGSERVER_")},
            "TAGSERVER_API_KEYS": "test-key",
            "TAGSERVER_RELOAD_INTERVAL": "0.2",
            "TAGSERVER_GA4_COLLECT_URL": NO_GA4,
            "TAGSERVER_META_GRAPH_URL": NO_VENDOR,
            "TAGSERVER_TIKTOK_API_URL": NO_VENDOR,
            "TAGSERVER_PINTEREST_API_URL": NO_VENDOR,
            "TAGSERVER_SNAPCHAT_API_URL": NO_VENDOR,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 20.0, ready: tuple[int, ...] = (200,)) -> ServerProcess:
        """Start and wait until /healthz answers one of `ready` (503: started, yet unwell)."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tagserver",
                "serve",
                "--host",
                LOOPBACK,
                "--port",
                str(self.port),
                "--container",
                str(self.container_path),
                "--data-dir",
                str(self.data_dir),
                "--workers",
                str(self.workers),
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code in ready:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not become healthy in {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def kill(self, group: bool = True) -> None:
        """kill -9 the whole process group (server, workers, outbox writers), or only the
        server's main process, as the OOM killer or `kill -9 PID` would."""
        if group:
            self.stop(signal.SIGKILL)
        elif self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def writer_pids(self) -> list[int]:
        """The outbox writer processes working on this server's data dir."""
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"tagserver.delivery.outbox_writer" in argv and str(
                self.data_dir
            ).encode() in b" ".join(argv):
                pids.append(int(proc.name))
        return pids

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.stop()
        if exc_type is not None:  # a failing test shows what the server said (pytest prints it)
            print(f"--- the server's log ({self.log_path.name}), last 60 lines ---")
            print("\n".join(self.logs().splitlines()[-60:]))


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; bounded in time."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class PageServer:
    """The site's own web server on loopback: the same HTML page for every path."""

    def __init__(self, page: str) -> None:
        body = page.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the browser navigated away meanwhile

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> PageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
