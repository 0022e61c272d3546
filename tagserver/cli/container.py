"""`tagserver container …`: the history of the container, what changed, and the way back.

    tagserver container history            newest first; refused ones marked, with why
    tagserver container show REF           the container file as it was (stdout)
    tagserver container diff A [B]         what changed from A to B (default: the newest)
    tagserver container rollback REF       write REF back to the container file, atomically

REF is `-N` (N accepted containers back: `-1` the one before the newest), `#ID` (the number
`history` shows), a `version`, or a hash prefix. The history is kept in the data dir by the
running server (every worker shares it), or, with the outbox on PostgreSQL
(TAGSERVER_OUTBOX_URL / --outbox-url), in that database, shared by every instance; these
commands work while servers run; a rollback is picked up like any edit, within
TAGSERVER_RELOAD_INTERVAL.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from ..container.diff import diff
from ..container.history import (
    FILENAME,
    Entry,
    History,
    HistoryUnavailable,
    UnknownRef,
    content_hash,
    resolve,
)
from ..container.history_backend import open_history
from ..container.model import ContainerError, load, parse_json
from ..container.problems import plural
from ..container.status import iso
from . import options
from .options import json_option

REFS = {"ignore_unknown_options": True}  # so that `-1` is a REF, not an option
# --data-dir and --outbox-url: where the servers keep the history
where = options.where(
    "The PostgreSQL outbox's URL, if the servers have one: the history every instance "
    "shares is there (else in --data-dir).  [env: TAGSERVER_OUTBOX_URL]"
)


@contextmanager
def opened(data_dir: str, outbox_url: str = "") -> Iterator[History]:
    if not outbox_url.strip() and not (Path(data_dir) / FILENAME).exists():
        raise click.ClickException(
            f"no container history in {data_dir} (is --data-dir / TAGSERVER_DATA_DIR the "
            "server's? The server starts it at its first start)"
        )
    history = open_history(data_dir, outbox_url)
    try:
        yield history
    except HistoryUnavailable as exc:  # says where, without the password
        raise click.ClickException(str(exc)) from None
    finally:
        history.close()


def pick(entries: list[Entry], ref: str) -> Entry:
    try:
        return resolve(entries, ref)
    except UnknownRef as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def container() -> None:
    """Container history: list, show, diff and roll back versions."""


@container.command()
@where
@json_option
@click.option("--limit", type=int, default=30, show_default=True, help="Entries to list.")
def history(data_dir: str, outbox_url: str, as_json: bool, limit: int) -> None:
    """List accepted and refused containers, newest first."""
    with opened(data_dir, outbox_url) as store:
        entries = store.entries(limit)
        older: dict[str, int] = {}  # hash → the first entry that had it
        for e in reversed(store.entries()):
            if e.accepted:
                older.setdefault(e.hash, e.id)
    if as_json:
        click.echo(json.dumps([e.as_dict() for e in entries], indent=2))
        return
    if not entries:
        click.echo("the history is empty")
        return
    click.echo(f"{'#':>4}  {'when (UTC)':<20}  {'status':<8}  {'version':<10}  {'hash':<12}  name")
    for e in entries:
        when = iso(e.at).replace("T", " ").rstrip("Z")
        status = e.status if e.accepted else "REFUSED"
        note = ""
        if e.accepted and older.get(e.hash, e.id) < e.id:
            note = f"  (same as #{older[e.hash]})"
        elif not e.accepted:
            count = len(e.problems)
            first = e.problems[0] if e.problems else ""
            note = f"  {count} problem{'s' if count != 1 else ''}: {first}"
        click.echo(
            f"{e.id:>4}  {when:<20}  {status:<8}  {e.version or '-':<10}  {e.hash:<12}  "
            f"{e.name or '-'}{note}"
        )


@container.command(context_settings=REFS)
@click.argument("ref")
@where
@json_option
def show(ref: str, data_dir: str, outbox_url: str, as_json: bool) -> None:
    """Print the container REF names (the file as it was; problems too if refused)."""
    with opened(data_dir, outbox_url) as store:
        entry = pick(store.entries(), ref)
    if as_json:
        click.echo(json.dumps({**entry.as_dict(), "container": entry.data()}, indent=2))
        return
    if not entry.accepted:
        click.echo(f"#{entry.id} was refused ({plural(len(entry.problems), 'problem')}):", err=True)
        for problem in entry.problems:
            click.echo(f"  {problem}", err=True)
    click.echo(entry.raw.decode("utf-8", "replace").rstrip("\n"))


@container.command(name="diff", context_settings=REFS)
@click.argument("a")
@click.argument("b", required=False, default="-0")
@where
@json_option
@click.option("--text", is_flag=True, help="A line-by-line diff of the files instead.")
def diff_command(a: str, b: str, data_dir: str, outbox_url: str, as_json: bool, text: bool) -> None:
    """What changed from A to B (B defaults to the newest accepted container)."""
    with opened(data_dir, outbox_url) as store:
        entries = store.entries()
    old, new = pick(entries, a), pick(entries, b)
    if text:
        lines = difflib.unified_diff(
            old.raw.decode("utf-8", "replace").splitlines(),
            new.raw.decode("utf-8", "replace").splitlines(),
            f"#{old.id} {old.version}",
            f"#{new.id} {new.version}",
            lineterm="",
        )
        for line in lines:
            click.echo(line)
        return
    changes = diff(old.data(), new.data())
    if as_json:
        click.echo(json.dumps([c.as_dict() for c in changes], indent=2))
        return
    click.echo(f"#{old.id} (version {old.version or '-'}, {old.hash}) → "
               f"#{new.id} (version {new.version or '-'}, {new.hash})")  # fmt: skip
    if not changes:
        click.echo("  no changes")
    for change in changes:
        click.echo(f"  {change}")


@container.command(context_settings=REFS)
@click.argument("ref")
@where
@click.option(
    "--container",
    "path",
    type=click.Path(dir_okay=False),
    envvar="TAGSERVER_CONTAINER",
    default="container.json",
    show_default=True,
    help="The container file the server watches.  [env: TAGSERVER_CONTAINER]",
)
def rollback(ref: str, data_dir: str, outbox_url: str, path: str) -> None:
    """Write the container REF names back to the container file (atomically)."""
    with opened(data_dir, outbox_url) as store:
        entry = pick(store.entries(), ref)
    if not entry.accepted:
        raise click.ClickException(
            f"#{entry.id} was refused by the server; roll back to an accepted container"
        )
    _check_still_valid(entry)
    target = Path(os.path.realpath(path))
    try:
        current = target.read_bytes()
    except OSError:
        current = b""
    if content_hash(current) == entry.hash:
        click.echo(f"{path} already holds version {entry.version or '-'} ({entry.hash})")
        return
    write_atomically(target, entry.raw)
    click.echo(
        f"wrote #{entry.id} (version {entry.version or '-'}, hash {entry.hash}) to {path}; "
        "a running server loads it within its reload interval"
    )


def _check_still_valid(entry: Entry) -> None:
    """The plugins installed now must still accept it, or the server would refuse it."""
    from ..plugins import load_registry
    from ..settings import Settings, SettingsError

    registry = load_registry()
    try:
        settings = Settings.from_env()
        settings.declare(registry.declared_settings())
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        load(parse_json(entry.raw), registry, settings, raw=entry.raw)
    except ContainerError as exc:
        head, *lines = exc.report()
        click.echo(f"#{entry.id} is not valid any more ({head}):", err=True)
        for line in lines:
            click.echo(f"  {line}", err=True)
        sys.exit(1)


def write_atomically(target: Path, data: bytes) -> None:
    """Replace `target` in one step: a reader sees the old file or the new one, never half."""
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
