"""Which container history a server or a `tagserver container …` command uses: the one
every instance shares in PostgreSQL when the outbox is there, else the data dir's SQLite."""

from __future__ import annotations

from pathlib import Path

from .history import History
from .history import open_history as open_sqlite_history
from .history_pg import PgHistory


def open_history(data_dir: str | Path, outbox_url: str = "", timeout: float = 5.0) -> History:
    """The history of the server with this data dir and outbox URL (nothing is connected
    yet: an unreachable PostgreSQL shows at the first call, as `HistoryUnavailable`)."""
    if outbox_url.strip():
        return PgHistory(outbox_url, timeout)
    return open_sqlite_history(data_dir)
