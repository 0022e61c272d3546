"""`tagserver serve` next to a running one, and `tagserver preview link`: real processes."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from support import ServerProcess, minimal_container, wait_until

pytestmark = pytest.mark.slow


def start_up_token(server: ServerProcess) -> str:
    lines = wait_until(
        lambda: [ln for ln in server.logs().splitlines() if "/preview/login?token=" in ln]
    )
    return lines[-1].split("?token=")[1].split()[0].rstrip(";")


def signs_in(server: ServerProcess, token: str) -> bool:
    r = httpx.get(f"{server.url}/preview/login?token={token}", timeout=10)
    return r.status_code == 303 and "tagserver_preview_auth" in r.headers.get("set-cookie", "")


def tagserver(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tagserver", *args],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_second_serve_that_cannot_listen_leaves_the_running_servers_link_working(tmp_path):
    with ServerProcess(tmp_path, minimal_container()) as server:
        token = start_up_token(server)
        assert signs_in(server, token)

        second = tagserver(
            server, "serve", "--host", "127.0.0.1", "--port", str(server.port),
            "--container", str(server.container_path), "--data-dir", str(server.data_dir),
        )  # fmt: skip
        assert second.returncode == 1
        assert f"cannot listen on 127.0.0.1:{server.port}: Address already in use" in second.stderr
        assert "tagserver preview link" in second.stderr  # how to get a link for the running one
        assert "/preview/login?token=" not in second.stderr  # no new token was made

        assert signs_in(server, token)  # the running server's link still works
        assert httpx.get(server.url + "/healthz").status_code == 200


def test_preview_link_prints_a_fresh_link_for_the_running_server(tmp_path):
    with ServerProcess(tmp_path, minimal_container()) as server:
        old = start_up_token(server)
        result = tagserver(server, "preview", "link", "--data-dir", str(server.data_dir))
        assert result.returncode == 0, result.stderr
        link = result.stdout.strip()
        assert link.startswith(f"{server.url}/preview/login?token=")
        token = link.split("?token=")[1]
        assert token != old
        assert signs_in(server, token)
        assert not signs_in(server, old)  # a fresh link replaces the one printed at start-up
    stopped = tagserver(server, "preview", "link", "--data-dir", str(server.data_dir))
    assert stopped.returncode == 1
    assert "no tagserver is running on the data dir" in stopped.stderr


def test_preview_link_with_a_password_says_to_use_it(tmp_path):
    env = {"TAGSERVER_PREVIEW_PASSWORD": "correct horse battery"}
    with ServerProcess(tmp_path, minimal_container(), env=env) as server:
        result = tagserver(server, "preview", "link", "--data-dir", str(server.data_dir))
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == (
            f"{server.url}/preview  (sign in with TAGSERVER_PREVIEW_PASSWORD)"
        )
