"""The container image, as far as this machine can check it without pulling a base image.

The Dockerfile is parsed and its final stage's promises are checked (non-root user, the data
dir as a volume, port 8080 on every interface, every setting a real one). Then the exact
command the image runs (ENTRYPOINT + CMD) is started with the environment the image sets —
only the paths and the port moved to a temporary directory and a free loopback port — and
the image's own HEALTHCHECK command is run against it. SIGTERM, as `docker stop` sends it to
PID 1 only, must let an in-flight send to a slow vendor finish and exit 0.
"""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from dockerfile import IMAGE
from fakes.vendor import Answer, FakeVendor, webhook_tag
from support import LOOPBACK, free_port, minimal_container, wait_until, write_container

from tagserver.cli.settings import settings_table
from tagserver.settings import PREFIX

ROOT = Path(__file__).resolve().parent.parent
AUTH = {"Authorization": "Bearer test-key"}


SETTINGS = {name for name, _, _ in settings_table()}


def test_the_image_promises_what_the_docs_say():
    env = IMAGE.env()
    assert env["TAGSERVER_HOST"] == "0.0.0.0" and env["TAGSERVER_PORT"] == "8080"
    assert IMAGE.last("EXPOSE") == "8080"
    assert json.loads(IMAGE.last("VOLUME")) == [env["TAGSERVER_DATA_DIR"]]
    user = IMAGE.last("USER").split(":")[0]
    assert user not in ("root", "0") and user.isdigit()  # numeric: runAsNonRoot can check it
    assert IMAGE.exec_form("ENTRYPOINT") + IMAGE.exec_form("CMD") == ["tagserver", "serve"]
    assert IMAGE.exec_form("HEALTHCHECK") == ["python", "-m", "tagserver.healthcheck"]
    assert IMAGE.last("STOPSIGNAL") == "SIGTERM"
    unknown = {n for n in env if n.startswith(PREFIX)} - SETTINGS
    assert not unknown, f"the image sets settings that do not exist: {unknown}"
    # docker stop's default SIGKILL comes 10 s after SIGTERM: the drain must fit in it
    assert float(env["TAGSERVER_SHUTDOWN_GRACE_SECONDS"]) < 10
    assert IMAGE.all("FROM")[-1].startswith("python:") and "slim" in IMAGE.all("FROM")[-1]


def test_dockerignore_keeps_local_state_out_and_what_the_build_copies_in():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(
            fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in patterns
        )

    for private in (".venv", ".git", "data", "data/outbox.sqlite3", ".env", "notes"):
        assert ignored(private), private
    copied = []
    for stage_args in final_stage_copies():
        copied += stage_args
    assert copied and not [path for path in copied if ignored(path)]


def final_stage_copies() -> list[list[str]]:
    """The sources of every COPY from the build context (all stages)."""
    out = []
    text = (ROOT / "Dockerfile").read_text()
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            out.append(parts[1:-1])
    return out


# -- the image's command, run here ------------------------------------------------------------


def image_env(tmp_path: Path, container: dict[str, object], port: int) -> dict[str, str]:
    """The image's environment with only paths and the port made local (loopback)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    env.update(IMAGE.env())
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env["TAGSERVER_HOST"] = LOOPBACK
    env["TAGSERVER_PORT"] = str(port)
    env["TAGSERVER_DATA_DIR"] = str(tmp_path / "data")
    env["TAGSERVER_CONTAINER"] = str(write_container(tmp_path, container))
    env["TAGSERVER_API_KEYS"] = "test-key"  # the operator's own settings, as with `-e`
    env["TAGSERVER_RETRY_BASE_SECONDS"] = "0.05"
    return env


def run_image(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    command = IMAGE.exec_form("ENTRYPOINT") + IMAGE.exec_form("CMD")
    with open(log, "wb") as out:
        return subprocess.Popen(
            command, env=env, cwd=Path(env["TAGSERVER_DATA_DIR"]).parent, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        IMAGE.exec_form("HEALTHCHECK"), env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.slow
def test_the_image_command_serves_passes_its_healthcheck_and_drains_on_sigterm(tmp_path):
    port = free_port()
    with FakeVendor() as vendor:
        vendor.respond(lambda r: Answer(delay=1.5))  # a slow vendor: the send is in flight
        container = minimal_container(tags=[webhook_tag(vendor.url + "/hook")])
        env = image_env(tmp_path, container, port)
        assert healthcheck(env).returncode == 1  # nothing listens yet
        proc = run_image(env, tmp_path / "server.log")
        try:
            url = f"http://{LOOPBACK}:{port}"
            wait_until(lambda: _healthy(url), timeout=20)
            checked = healthcheck(env)
            assert checked.returncode == 0 and checked.stdout.strip() == "200 ok"

            r = httpx.post(url + "/api/events", json={"event_name": "purchase",
                                                      "event_id": "in-flight"}, headers=AUTH)  # fmt: skip
            assert r.status_code == 200
            wait_until(lambda: vendor.received, timeout=10)  # the send has started
            stopping = time.monotonic()
            proc.send_signal(signal.SIGTERM)  # to PID 1 only, as `docker stop` does
            code = proc.wait(timeout=30)
            took = time.monotonic() - stopping
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        logs = (tmp_path / "server.log").read_text()
        assert code == 0, logs
        assert took < float(env["TAGSERVER_SHUTDOWN_GRACE_SECONDS"]), logs
        assert [r.json()["event_id"] for r in vendor.accepted] == ["in-flight"]
        assert "released" not in logs  # delivered within the grace, nothing left behind
        assert "Traceback" not in logs
        failed = healthcheck(env)
        assert failed.returncode == 1 and "no answer from" in failed.stderr

    status = subprocess.run(
        [sys.executable, "-m", "tagserver", "outbox", "status", "--json"], env=env,
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)["destinations"]
    assert sum(row["pending"] + row["dead_letters"] for row in rows) == 0, rows


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
