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
