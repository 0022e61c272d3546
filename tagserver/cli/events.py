"""`tagserver events import FILE`: offline conversions from a CSV or JSON Lines file.

    tagserver events import sales.csv                      every row through the container
    tagserver events import crm.csv --mapping crm.json     columns named the CRM's way
    tagserver events import - --format jsonl < rows.jsonl  from standard input
    tagserver events import sales.csv --dry-run            show what would be sent, change nothing

Works against the data dir of a running server (the outbox is shared: the server delivers
what the import stores within a second) or of a stopped one (delivered when it starts).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click
import orjson

from ..container.model import ContainerError, load_file
from ..engine.importer import (
    DEFAULT_ACTION_SOURCE,
    CountingLines,
    Importer,
    ImportFileError,
    Ledger,
    Mapping,
    RowReport,
    file_format,
    open_input,
    peek,
    read_rows,
)
from ..engine.runtime import Runtime
from ..plugins import load_registry
from ..settings import Settings, SettingsError


@click.group()
def events() -> None:
    """Send events from outside a hit: files of offline conversions."""


@events.command(name="import")
@click.argument("file", type=click.Path(allow_dash=True))
@click.option(
    "--mapping",
    "mapping_file",
    type=click.Path(dir_okay=False),
    help="JSON file: columns → event keys, constants, date formats.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl"]),
    help="File format (default: from the name or the first line).",
)
@click.option(
    "--action-source",
    default=DEFAULT_ACTION_SOURCE,
    show_default=True,
    help="`action_source` of rows that give none.",
)
@click.option(
    "--dry-run", is_flag=True, help="Run the container and show what would be sent; store nothing."
)
@click.option(
    "--container",
    type=click.Path(dir_okay=False),
    help="container.json path.  [env: TAGSERVER_CONTAINER]",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="The server's data directory.  [env: TAGSERVER_DATA_DIR]",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only problems and the summary.")
def import_events(
    file: str,
    mapping_file: str | None,
    fmt: str | None,
    action_source: str,
    dry_run: bool,
    container: str | None,
    data_dir: str | None,
    quiet: bool,
) -> None:
    """Import offline conversions (CSV or JSON Lines; `-` for standard input).

    Each row is checked like an events-API event and runs through the container; a reason is
    printed for every row that is not sent, with its line number. Exit status 1 when a row
    was invalid or refused by a tag.
    """
    overrides = {k: v for k, v in (("container", container), ("data_dir", data_dir)) if v}
    try:
        settings = Settings.from_env(None, **overrides)
        mapping = Mapping.load(mapping_file) if mapping_file else Mapping()
        stream, size = open_input(file, sys.stdin.buffer)
    except (SettingsError, ImportFileError) as exc:
        raise click.ClickException(str(exc)) from None
    registry = load_registry()
    try:
        loaded = load_file(settings.container, registry, settings)
        runtime = Runtime(loaded, settings, show_dry_runs=dry_run)  # a dry run shows payloads
    except ContainerError as exc:
        problems = "\n".join(f"  {p}" for p in exc.problems)
        raise click.ClickException(f"{settings.container} is invalid:\n{problems}") from None
    first, stream = peek(stream)
    lines = CountingLines(stream)
    rows = read_rows(lines, file_format(file, fmt, first))
    try:
        summary = asyncio.run(
            _run(settings, runtime, mapping, file, rows, lines, size, dry_run, action_source, quiet)
        )
    except ImportFileError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        stream.close()
    click.echo(("dry run — nothing stored. " if dry_run else "") + summary.line())
    if summary.outcomes["invalid"] or summary.outcomes["refused"]:
        sys.exit(1)


async def _run(
    settings: Settings,
    runtime: Runtime,
    mapping: Mapping,
    source: str,
    rows: Any,
    lines: CountingLines,
    size: int | None,
    dry_run: bool,
    action_source: str,
    quiet: bool,
) -> Any:
    from ..delivery.outbox_backend import open_outbox

    outbox = None if dry_run else open_outbox(settings)
    ledger = Ledger(settings.data_dir)
    bar = _progress(size) if sys.stderr.isatty() and not quiet else None
    try:
        if outbox is not None:
            await outbox.start()
        importer = Importer(
            runtime, mapping, source, ledger, outbox.put if outbox else None, action_source
        )

        def report(entry: RowReport) -> None:
            if bar is not None:
                bar.update(lines.bytes_read - bar.pos)
            _print(entry, quiet)

        return await importer.run(rows, report)
    finally:
        if bar is not None:
            bar.render_finish()
        ledger.close()
        if outbox is not None:
            await outbox.close()


def _progress(size: int | None) -> Any:
    # Any: click keeps its ProgressBar type in a private module, exported to no one
    bar: Any = click.progressbar(
        length=size, label="importing", file=sys.stderr, show_pos=size is None
    )
    bar.__enter__()
    return bar


def _print(entry: RowReport, quiet: bool) -> None:
    if entry.outcome in ("invalid", "refused"):
        click.echo(f"line {entry.line}: {entry.outcome}: {entry.reason}")
    elif quiet:
        return
    elif entry.outcome == "duplicate":
        click.echo(f"line {entry.line}: duplicate: {entry.event_id} was imported before")
    elif entry.outcome == "not_sent":
        click.echo(f"line {entry.line}: not sent: {entry.reason}")
    else:
        tags = ", ".join(entry.tags)
        note = f" (also: {entry.reason})" if entry.reason else ""
        click.echo(f"line {entry.line}: {entry.outcome.replace('_', ' ')} → {tags}{note}")
    for tag, payload in entry.payloads:
        click.echo(f"  {tag}: {orjson.dumps(payload).decode()}")


__all__ = ["events"]
