"""The README's two commands, run as written on Debian's own Python: no `python` on the PATH,
and `pip install` refused outside a virtual environment (externally-managed-environment)."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from support import LOOPBACK, free_port

ROOT = Path(__file__).resolve().parent.parent
DEBIAN_PATH = "/usr/bin:/bin"
SYSTEM_PYTHON = Path("/usr/bin/python3")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not SYSTEM_PYTHON.exists()
        or not list(Path("/usr/lib").glob("python3*/EXTERNALLY-MANAGED")),
        reason="needs a Debian-like system Python (externally managed) in /usr/bin",
    ),
]


def readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.split("\n")[1] for block in quick_start.split("```sh")[1:]]


def checkout(tmp_path: Path) -> Path:
    """A copy of the repository as a fresh clone has it (no virtual environment, no data)."""
    skip = shutil.ignore_patterns(
        ".git", ".venv", "data", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache",
        "build", "notes", "results",
    )  # fmt: skip
    return Path(shutil.copytree(ROOT, tmp_path / "tagserver", ignore=skip))


def debian_env(port: int) -> dict[str, str]:
    """Only Debian's own programs on the PATH; pip keeps its configuration (index, cache)."""
    kept = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("PIP_") or k.lower() in ("home", "http_proxy", "https_proxy", "no_proxy")
    }
    return {**kept, "PATH": DEBIAN_PATH, "LANG": "C.UTF-8", "TAGSERVER_PORT": str(port)}


def test_the_quick_start_works_as_written_on_debians_python(tmp_path):
    serve, test = readme_commands()
    repo = checkout(tmp_path)
    port = free_port()
    env = debian_env(port)
    assert shutil.which("python", path=DEBIAN_PATH) is None  # as on a stock Debian 12

    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        ["bash", "-c", serve], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 400  # the install comes first
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"http://{LOOPBACK}:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        assert httpx.get(f"http://{LOOPBACK}:{port}/demo").status_code == 200
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
        log.close()
    key = repo / "data" / "secret_key"  # `serve` made data/ with the secret key, private
    assert key.read_text().strip() and stat.S_IMODE(key.stat().st_mode) == 0o600

    # the test command, on the same machine: it makes .venv ready and runs pytest (asked only
    # for its version here: this test is itself part of the suite)
    result = subprocess.run(
        ["bash", "-c", f"{test} --version"], cwd=repo, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "pytest" in result.stdout + result.stderr
