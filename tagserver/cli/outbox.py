"""`tagserver outbox …`: look at and repair the outbox, with or without the server running.

    tagserver outbox status                     pending per destination, oldest age, dead letters
    tagserver outbox dead-letters               what could not be delivered, and why
    tagserver outbox retry [--destination D]    send dead letters again, where their tags
                                                send now (--keep-route: the old way)
    tagserver outbox purge --dead-letters|--pending [--destination D] --yes

They work on the outbox the server uses: the SQLite file in the data dir (WAL mode), or the
PostgreSQL outbox of TAGSERVER_OUTBOX_URL / --outbox-url. Both are safe while servers run: a
running dispatcher picks requeued messages up within a second. Routes (tokens, webhook URLs)
and the URL's password are never printed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from ..delivery.outbox_backend import OutboxAdmin, open_admin
from ..settings import Settings, SettingsError
from . import options
from .options import json_option

if TYPE_CHECKING:
    from ..container.model import Container

# --data-dir and --outbox-url: the same settings the server reads
where = options.where(
    "The server's PostgreSQL outbox, if it has one (else the SQLite one in --data-dir).  "
    "[env: TAGSERVER_OUTBOX_URL]"
)


def open_outbox(data_dir: str, outbox_url: str) -> OutboxAdmin:
    try:
        settings = Settings(data_dir=data_dir, outbox_url=outbox_url)
        return open_admin(settings)
    except (LookupError, SettingsError) as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # unreachable PostgreSQL: its reason, never the URL's password
        raise click.ClickException(f"cannot open the outbox: {exc}") from None


def using(admin: OutboxAdmin, work: Callable[[OutboxAdmin], Any]) -> Any:
    try:
        return work(admin)
    finally:
        admin.close()


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds // 60 % 60:02d}m"
    return f"{seconds // 86400}d {seconds // 3600 % 24:02d}h"


def when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@click.group()
def outbox() -> None:
    """Inspect and repair the delivery outbox (pending messages and dead letters)."""


@outbox.command()
@where
@json_option
def status(data_dir: str, outbox_url: str, as_json: bool) -> None:
    """Pending messages per destination, the oldest one's age, dead letters."""
    admin = open_outbox(data_dir, outbox_url)
    rows = using(admin, lambda a: a.stats(time.time(), in_flight=True))
    if as_json:
        click.echo(json.dumps({"destinations": rows}, indent=2))
        return
    if not rows:
        click.echo("the outbox is empty: nothing pending, no dead letters")
        return
    width = max(len("DESTINATION"), *(len(r["destination"]) for r in rows))
    click.echo(
        f"{'DESTINATION':<{width}}  {'PENDING':>8}  {'IN FLIGHT':>9}  {'OLDEST':>8}  "
        f"{'NEXT TRY':>8}  {'DEAD':>6}"
    )
    for r in rows:
        next_try = r["next_attempt_in_seconds"]
        click.echo(
            f"{r['destination']:<{width}}  {r['pending']:>8}  {r.get('in_flight', 0):>9}  "
            f"{age(r['oldest_age_seconds']):>8}  "
            f"{('now' if next_try == 0 else age(next_try)) if next_try is not None else '-':>8}  "
            f"{r['dead_letters']:>6}"
        )
    pending = sum(r["pending"] for r in rows)
    dead = sum(r["dead_letters"] for r in rows)
    click.echo(f"total: {pending} pending, {dead} dead letter{'' if dead == 1 else 's'}")


@outbox.command(name="dead-letters")
@where
@click.option("--destination", help="Only this destination (as `status` shows it).")
@click.option("--limit", type=int, default=100, show_default=True, help="Most rows shown.")
@click.option("--payload", "show_payload", is_flag=True, help="Also print each message.")
@json_option
def dead_letters(
    data_dir: str,
    outbox_url: str,
    destination: str | None,
    limit: int,
    show_payload: bool,
    as_json: bool,
) -> None:
    """Messages that will not be delivered, with the vendor's reason."""
    admin = open_outbox(data_dir, outbox_url)
    rows = using(admin, lambda a: a.dead_letters(destination, limit))
    if not show_payload and not as_json:
        for row in rows:
            row.pop("payload")
    if as_json:
        click.echo(json.dumps({"dead_letters": rows}, indent=2, default=str))
        return
    if not rows:
        click.echo("no dead letters")
        return
    for row in rows:
        vendor = " ".join(
            part
            for part in (
                f"HTTP {row['status']}" if row["status"] else "",
                f"code {row['code']}" if row["code"] else "",
                f"trace {row['trace']}" if row["trace"] else "",
            )
            if part
        )
        click.echo(
            f"#{row['id']} {row['destination']}  tag {row['tag'] or '-'}  id {row['dedup_id']}"
        )
        click.echo(f"    reason:   {row['reason']}")
        if vendor:
            click.echo(f"    vendor:   {vendor}")
        if row["error"]:
            click.echo(f"    error:    {row['error']}")
        click.echo(
            f"    attempts: {row['attempts']}, first {when(row['first_attempt_at'])}, "
            f"last {when(row['last_attempt_at'])}; created {when(row['created_at'])}"
        )
        if show_payload:
            click.echo(f"    payload:  {json.dumps(row['payload'], default=str)}")
    if len(rows) == limit:
        click.echo(f"(first {limit} shown; --limit to see more)")


@outbox.command()
@where
@click.option("--destination", help="Only this destination's dead letters.")
@click.option("--id", "ids", type=int, multiple=True, help="Only this dead letter (repeatable).")
@click.option(
    "--container",
    "container_path",
    envvar="TAGSERVER_CONTAINER",
    default="container.json",
    show_default=True,
    help="The container whose tags say where messages go now.  [env: TAGSERVER_CONTAINER]",
)
@click.option(
    "--keep-route",
    is_flag=True,
    help="Send through the route stored with each message (its old token or URL) instead of "
    "the one its tag resolves to now.",
)
def retry(
    data_dir: str,
    outbox_url: str,
    destination: str | None,
    ids: tuple[int, ...],
    container_path: str,
    keep_route: bool,
) -> None:
    """Put dead letters back in the outbox, attempts reset (after fixing the cause).

    Each tag's dead letters go where the tag sends now, with the current container and
    environment (a fixed token or URL takes effect); --keep-route sends them the old way.
    """
    from ..engine.retry import retry_dead_letters

    container = None if keep_route else _current_container(container_path)
    admin = open_outbox(data_dir, outbox_url)
    done = using(
        admin,
        lambda a: retry_dead_letters(
            a, destination, ids, time.time(), container, container_name=container_path
        ),
    )
    click.echo(f"requeued {done.count} dead letter{'s' if done.count != 1 else ''}")
    for line, repeats in done.lines:
        click.echo(f"  {line}")
        if repeats:
            click.echo(f"    {repeats}")
    if done.expired:
        click.echo(
            f"warning: {done.expired} of them are past their deadline (the vendor would refuse "
            "them) and will be dead-lettered again",
            err=True,
        )


def _current_container(container_path: str) -> Container:
    """The container whose tags say where messages go now (with the current environment)."""
    from ..container.model import ContainerError, load_file
    from ..plugins import load_registry

    try:
        settings = Settings.from_env(container=container_path)
        return load_file(container_path, load_registry(), settings)
    except (ContainerError, SettingsError) as exc:
        raise click.ClickException(
            f"cannot tell where messages go now: {exc}\n"
            "fix the container (tagserver validate) or retry with --keep-route"
        ) from None


@outbox.command()
@where
@click.option("--dead-letters", "dead", is_flag=True, help="Delete dead letters.")
@click.option("--pending", is_flag=True, help="Delete pending messages (they are never sent).")
@click.option("--destination", help="Only this destination.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(
    data_dir: str, outbox_url: str, dead: bool, pending: bool, destination: str | None, yes: bool
) -> None:
    """Delete dead letters and/or pending messages for good."""
    if not dead and not pending:
        raise click.UsageError("say what to purge: --dead-letters, --pending or both")
    what = " and ".join(
        w for w, on in (("pending messages", pending), ("dead letters", dead)) if on
    )
    scope = f" of {destination}" if destination else ""
    if not yes:
        click.confirm(f"Delete all {what}{scope}? This cannot be undone", abort=True)
    admin = open_outbox(data_dir, outbox_url)
    count = using(admin, lambda a: a.purge(pending=pending, dead=dead, destination=destination))
    click.echo(f"deleted {count} {what}{scope}")
