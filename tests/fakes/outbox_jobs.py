"""Jobs a test runs in the outbox writer process (it imports them by name: keep them here)."""

from __future__ import annotations


def cap_database(store, now, extra_pages: int | None) -> None:
    """A real SQLITE_FULL: cap the database file a few pages above its size (None: lift it)."""
    if extra_pages is None:
        store.conn.execute("PRAGMA max_page_count = 1073741823")
    else:
        count = store.conn.execute("PRAGMA page_count").fetchone()[0]
        store.conn.execute(f"PRAGMA max_page_count = {count + extra_pages}")
