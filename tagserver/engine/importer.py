"""Offline conversions from a file: a POS export, a CRM's closed deals, phone orders.

Each row becomes an event, is checked like an events-API event (`event_checks`), runs through
the same container (triggers, consent, tags) and leaves its messages in the same outbox, so
the running server — or the next one started on this data dir — delivers them. Rows are
streamed in chunks: a million-row file needs no more memory than one chunk.

A row without an `event_id` gets one derived from its content, and every imported event id is
kept in a small ledger beside the outbox (`imports.sqlite3`): re-running the same file, or a
file that overlaps it, sends nothing twice, however long after.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from ..event import Event, RequestContext
from ..plugins import Outgoing
from .event_checks import EventError, check_event
from .runtime import EventResult, Runtime

CHUNK_ROWS = 1000  # rows run and committed together: bounds memory, shares one outbox commit
USER_KEYS = frozenset(
    ("email_address", "phone_number", "external_id", "sha256_email_address", "sha256_phone_number")
)
ADDRESS_KEYS = frozenset(
    ("first_name", "last_name", "street", "city", "region", "postal_code", "country")
    + ("sha256_first_name", "sha256_last_name")
)
JSON_KEYS = frozenset(("items", "user_data", "consent", "custom_data"))
DEFAULT_ACTION_SOURCE = "physical_store"


class ImportFileError(ValueError):
    """The file or the mapping cannot be read at all (not one bad row: those are reported)."""


# -- the mapping file ---------------------------------------------------------------------


@dataclass
class Mapping:
    """How a file's columns become event keys ("" leaves a column out) (`--mapping FILE.json`).

    {"columns": {"Email": "email_address", "Total": "value"},
     "constants": {"event_name": "purchase", "currency": "EUR"},
     "date_formats": {"event_time": "%d.%m.%Y %H:%M"},
     "timezone": "Europe/Berlin"}
    """

    columns: dict[str, str] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)
    date_formats: dict[str, str] = field(default_factory=dict)
    timezone: tzinfo | None = None

    @classmethod
    def load(cls, path: str) -> Mapping:
        try:
            data = orjson.loads(Path(path).read_bytes())
        except OSError as exc:
            raise ImportFileError(f"{path}: cannot read the mapping: {exc.strerror}") from None
        except orjson.JSONDecodeError as exc:
            raise ImportFileError(f"{path}: the mapping is not valid JSON: {exc}") from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: Any, where: str = "mapping") -> Mapping:
        if not isinstance(data, dict):
            raise ImportFileError(
                f"{where}: expected an object with columns, constants, date_formats"
            )
        unknown = sorted(set(data) - {"columns", "constants", "date_formats", "timezone"})
        if unknown:
            raise ImportFileError(
                f"{where}: unknown key {unknown[0]!r} "
                "(known: columns, constants, date_formats, timezone)"
            )
        columns, constants = data.get("columns", {}), data.get("constants", {})
        formats = data.get("date_formats", {})
        # a column mapped to "" is left out of the events (notes, internal fields)
        if not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
            raise ImportFileError(f"{where}: columns must map column names to event keys (strings)")
        if not isinstance(formats, dict) or not all(
            isinstance(v, str) and v for v in formats.values()
        ):
            raise ImportFileError(f"{where}: date_formats must map event keys to strptime formats")
        if not isinstance(constants, dict):
            raise ImportFileError(f"{where}: constants must be an object of event key → value")
        zone = None
        if "timezone" in data:
            try:
                zone = ZoneInfo(str(data["timezone"]))
            except (ZoneInfoNotFoundError, ValueError):
                raise ImportFileError(
                    f"{where}: timezone: unknown time zone {data['timezone']!r} "
                    "(an IANA name such as Europe/Berlin)"
                ) from None
        return cls(columns, constants, formats, zone)


# -- reading rows -------------------------------------------------------------------------


@dataclass
class Row:
    line: int  # the line the row starts on, as an editor shows it
    values: dict[str, Any] | None
    problem: str = ""


class CountingLines:
    """Lines of a binary stream as text, counting the bytes read (for the progress bar)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.bytes_read = 0

    def __iter__(self) -> Iterator[str]:
        for raw in self.stream:
            self.bytes_read += len(raw)
            yield raw.decode("utf-8-sig" if self.bytes_read == len(raw) else "utf-8", "replace")


def file_format(path: str, given: str | None, first: bytes) -> str:
    if given:
        return given
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    return "jsonl" if first.lstrip().startswith(b"{") else "csv"


def read_rows(lines: Iterable[str], fmt: str) -> Iterator[Row]:
    if fmt == "jsonl":
        for number, text in enumerate(lines, 1):
            if not text.strip():
                continue
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                yield Row(number, None, f"not valid JSON: {exc}")
                continue
            if isinstance(value, dict):
                yield Row(number, value)
            else:
                yield Row(number, None, "expected a JSON object per line")
        return
    reader = csv.reader(iter(lines))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise ImportFileError(f"line 1: the CSV header cannot be read: {exc}") from None
    header = [name.strip() for name in header]
    if not any(header):
        raise ImportFileError("line 1: the CSV header is empty")
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Row(start, None, f"the CSV cannot be read here: {exc}")
            continue
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) > len(header):
            yield Row(
                start, None, f"{len(cells)} cells, but the header names {len(header)} columns"
            )
            continue
        yield Row(start, dict(zip(header, cells, strict=False)))


# -- a row to an event --------------------------------------------------------------------


def row_event(values: dict[str, Any], mapping: Mapping) -> Event:
    """The raw event of one row (checked afterwards with `check_event`)."""
    event: Event = {}
    for column, cell in values.items():
        key = mapping.columns.get(column, column)
        if not key:
            continue
        if isinstance(cell, str):
            cell = cell.strip()
            if not cell:
                continue
            if key in mapping.date_formats:
                cell = _parse_date(key, cell, mapping.date_formats[key], mapping.timezone)
            elif key in JSON_KEYS:
                try:
                    cell = orjson.loads(cell)
                except orjson.JSONDecodeError:
                    raise EventError(f"{key}: {cell[:40]!r} is not valid JSON") from None
        elif cell is None:
            continue
        _place(event, key, cell)
    for key, value in mapping.constants.items():
        if _get(event, key) is None:
            _place(event, key, value)
    return event


def _parse_date(key: str, text: str, fmt: str, zone: tzinfo | None) -> int:
    try:
        parsed = datetime.strptime(text, fmt)
    except ValueError:
        raise EventError(f"{key}: {text[:40]!r} does not match the date format {fmt!r}") from None
    if parsed.tzinfo is None and zone is not None:
        parsed = parsed.replace(tzinfo=zone)
    elif parsed.tzinfo is None:
        from datetime import UTC

        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def _place(event: Event, key: str, value: Any) -> None:
    """Put a value where events keep it: user data and address keys go under `user_data`."""
    if key in USER_KEYS:
        parts = ["user_data", key]
    elif key in ADDRESS_KEYS:
        parts = ["user_data", "address", key]
    else:
        parts = key.split(".")
    target = event
    for part in parts[:-1]:
        child = target.get(part)
        if not isinstance(child, dict):
            child = target[part] = {}
        target = child
    target[parts[-1]] = value


def _get(event: Event, key: str) -> Any:
    if key in USER_KEYS:
        return (event.get("user_data") or {}).get(key)
    if key in ADDRESS_KEYS:
        return ((event.get("user_data") or {}).get("address") or {}).get(key)
    return event.get(key)


def content_event_id(event: Event) -> str:
    """The same row gives the same id, in this run and the next."""
    digest = hashlib.sha256(orjson.dumps(event, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"import-{digest[:32]}"


# -- the ledger of imported event ids ----------------------------------------------------


class Ledger:
    """Event ids already imported into this data dir (`imports.sqlite3`)."""

    def __init__(self, data_dir: str) -> None:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(Path(data_dir) / "imports.sqlite3", timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS imported "
            "(event_id TEXT PRIMARY KEY, source TEXT, line INTEGER, imported_at REAL)"
        )

    def known(self, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = self.db.execute(
                f"SELECT event_id FROM imported WHERE event_id IN ({marks})", part
            )
            found.update(r[0] for r in rows)
        return found

    def add(self, entries: list[tuple[str, str, int]]) -> None:
        now = time.time()
        with self.db:
            self.db.executemany(
                "INSERT OR IGNORE INTO imported VALUES (?, ?, ?, ?)",
                [(event_id, source, line, now) for event_id, source, line in entries],
            )

    def close(self) -> None:
        self.db.close()


# -- running rows through the container --------------------------------------------------


@dataclass
class RowReport:
    """What happened to one row: the outcome and, for the user, why."""

    line: int
    outcome: str  # queued | dry_run | duplicate | invalid | refused | not_sent
    reason: str = ""
    event_id: str = ""
    tags: list[str] = field(default_factory=list)
    payloads: list[tuple[str, Any]] = field(default_factory=list)  # (tag, payload), dry run only


@dataclass
class Summary:
    rows: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    messages: int = 0

    def line(self) -> str:
        order = ("queued", "dry_run", "duplicate", "not_sent", "refused", "invalid")
        parts = [f"{self.outcomes[o]} {o.replace('_', ' ')}" for o in order if self.outcomes[o]]
        noun = "row" if self.rows == 1 else "rows"
        return f"{self.rows} {noun}: " + (", ".join(parts) or "nothing to do")


Store = Callable[[list[Outgoing]], Awaitable[Any]]  # commit messages to the outbox


class Importer:
    """Runs rows through one container; `store` commits a chunk's messages (None: dry run)."""

    def __init__(
        self,
        runtime: Runtime,
        mapping: Mapping,
        source: str,
        ledger: Ledger | None,
        store: Store | None,
        action_source: str = DEFAULT_ACTION_SOURCE,
    ) -> None:
        self.runtime = runtime
        self.mapping = mapping
        self.source = source
        self.ledger = ledger
        self.store = store
        self.action_source = action_source
        self.request = RequestContext.empty("IMPORT", f"file:{source}")
        self.summary = Summary()
        self.in_flight: tuple[asyncio.Future[Any], list[tuple[str, str, int]]] | None = None

    async def run(self, rows: Iterable[Row], report: Callable[[RowReport], None]) -> Summary:
        chunk: list[Row] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= CHUNK_ROWS:
                await self.chunk(chunk, report)
                chunk = []
        if chunk:
            await self.chunk(chunk, report)
        await self.committed()
        return self.summary

    async def commit(self, outgoing: list[Outgoing], imported: list[tuple[str, str, int]]) -> None:
        """Start committing a chunk's messages while the next chunk runs; one at a time."""
        await self.committed()
        if self.store is not None and outgoing:
            self.in_flight = (asyncio.ensure_future(self.store(outgoing)), imported)

    async def committed(self) -> None:
        """Wait for the chunk in flight, then record its event ids as imported."""
        if self.in_flight is None:
            return
        task, imported = self.in_flight
        self.in_flight = None
        await task
        if self.ledger is not None and imported:
            self.ledger.add(imported)

    async def chunk(self, rows: list[Row], report: Callable[[RowReport], None]) -> None:
        now = time.time()
        prepared: list[tuple[Row, Event]] = []
        reports: list[RowReport] = []
        for row in rows:
            if row.values is None:
                reports.append(RowReport(row.line, "invalid", row.problem))
                continue
            try:
                raw = row_event(row.values, self.mapping)
                raw.setdefault("action_source", self.action_source)
                if "event_time" not in raw:
                    raise EventError("event_time: required (when the sale or lead happened)")
                event = check_event(raw, now)
            except EventError as exc:
                reports.append(RowReport(row.line, "invalid", str(exc)))
                continue
            if not event.get("event_id"):
                event["event_id"] = content_event_id(raw)
            prepared.append((row, event))

        ids = [event["event_id"] for _, event in prepared]
        known = self.ledger.known(ids) if self.ledger is not None else set()
        outgoing: list[Outgoing] = []
        imported: list[tuple[str, str, int]] = []
        seen: set[str] = set()
        for row, event in prepared:
            event_id = event["event_id"]
            if event_id in known or event_id in seen:
                reports.append(RowReport(row.line, "duplicate", "already imported", event_id))
                continue
            seen.add(event_id)
            result = self.runtime.run_event(event, self.request, "import")
            entry = self.outcome(row.line, event_id, result)
            reports.append(entry)
            if result.outgoing:
                outgoing.extend(result.outgoing)
                imported.append((event_id, self.source, row.line))
        await self.commit(outgoing, imported)
        self.summary.messages += len(outgoing)
        for entry in sorted(reports, key=lambda r: r.line):
            self.summary.rows += 1
            self.summary.outcomes[entry.outcome] += 1
            report(entry)

    def outcome(self, line: int, event_id: str, result: EventResult) -> RowReport:
        fired = [t for t in result.tags if t.outgoing]
        if fired:
            outcome = "queued" if self.store is not None else "dry_run"
            payloads = (
                []
                if self.store is not None
                else [(t.tag, m.payload) for t in fired for m in t.outgoing]
            )
            refused = [f"{t.tag}: {t.reason}" for t in result.tags if t.status == "rejected"]
            return RowReport(
                line, outcome, "; ".join(refused), event_id, [t.tag for t in fired], payloads
            )
        rejected = [
            f"{t.tag}: {t.reason}" for t in result.tags if t.status in ("rejected", "error")
        ]
        if rejected:
            return RowReport(line, "refused", "; ".join(rejected), event_id)
        dry = [(t.tag, run["payload"]) for t in result.tags if t.dry_run for run in t.dry_run]
        if dry:
            reason = "; ".join(f"{tag}: dry run, no credentials" for tag, _ in dry)
            return RowReport(
                line,
                "not_sent",
                reason,
                event_id,
                [t for t, _ in dry],
                dry if self.store is None else [],
            )
        why = "; ".join(f"{t.tag}: {t.reason}" for t in result.tags if t.status != "fired")
        return RowReport(line, "not_sent", why or "no tag fired", event_id)


def open_input(path: str, stdin: IO[bytes]) -> tuple[IO[bytes], int | None]:
    """The file (or standard input for `-`) and its size when known."""
    if path == "-":
        return stdin, None
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise ImportFileError(f"{path}: {exc.strerror}") from None
    return stream, Path(path).stat().st_size


def peek(stream: IO[bytes]) -> tuple[bytes, IO[bytes]]:
    """The first bytes of a stream without losing them (standard input cannot seek)."""
    if stream.seekable():
        first = stream.read(512)
        stream.seek(0)
        return first, stream
    buffered = io.BufferedReader(stream)  # type: ignore[type-var]  # typeshed wants a RawIOBase; any readable binary stream works
    return buffered.peek(512)[:512], buffered
