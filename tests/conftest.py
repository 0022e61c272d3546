import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _no_tagserver_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build their settings explicitly; the developer's shell must not leak in."""
    import os

    for key in list(os.environ):
        if key.startswith("TAGSERVER_"):
            monkeypatch.delenv(key)


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--host-resolver-rules=MAP *.shop.test 127.0.0.1",  # www.shop.test and sgtm.shop.test
]


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium driven by Playwright (no browser download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL cluster (Debian's binaries) for the whole session."""
    from pg import BIN, available, postgres_server

    if not available():
        pytest.fail(f"PostgreSQL is not installed ({BIN}/initdb): run scripts/test.sh")
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def outbox_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Run the test on each outbox backend: settings to add ({} for SQLite). The URL is also
    in TAGSERVER_OUTBOX_URL, where `app_client` and `tagserver outbox …` find it."""
    if request.param == "sqlite":
        return {}
    url = request.getfixturevalue("postgres").create_database()
    monkeypatch.setenv("TAGSERVER_OUTBOX_URL", url)
    return {"outbox_url": url}
