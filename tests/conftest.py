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
