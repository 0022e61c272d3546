"""The `tagserver` command: serve, validate, schema, settings (and outbox tools)."""

from __future__ import annotations

import inspect
import json
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING

import click

from . import serving
from .container import ContainerError, load_file
from .outbox_cli import outbox
from .plugins import load_registry
from .settings import PREFIX, Settings, SettingsError, settings_table

if TYPE_CHECKING:
    import uvicorn


def _settings(**overrides: object) -> Settings:
    try:
        return Settings.from_env(**overrides)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
@click.version_option(package_name="tagserver")
def main() -> None:
    """tagserver: a self-hosted, first-party server-side tagging server."""


@main.command()
@click.option("--host", help="Address to listen on.  [env: TAGSERVER_HOST]")
@click.option("--port", type=int, help="Port.  [env: TAGSERVER_PORT]")
@click.option(
    "--container",
    "container",
    type=click.Path(),
    help="container.json path.  [env: TAGSERVER_CONTAINER]",
)
@click.option(
    "--data-dir", type=click.Path(), help="Outbox and state directory.  [env: TAGSERVER_DATA_DIR]"
)
@click.option("--workers", type=int, help="Worker processes.  [env: TAGSERVER_WORKERS]")
@click.option("--access-log/--no-access-log", default=None, help="Per-request access log.")
def serve(**flags: object) -> None:
    """Run the server (uvicorn with uvloop and httptools)."""
    import uvicorn

    # Flags become environment variables so that every worker process sees the same settings.
    for name, value in flags.items():
        if value is not None:
            os.environ[PREFIX + name.upper()] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
    settings = _settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    registry = load_registry()
    try:
        load_file(settings.container, registry, settings)  # fail here, loudly, before forking
    except ContainerError as exc:
        head, *lines = exc.report(settings.container)
        click.echo(f"{head}; not starting:", err=True)
        for line in lines:
            click.echo(f"  {line}", err=True)
        sys.exit(1)
    # Bind first: a server that cannot listen must not touch what a running one relies on
    # (the preview sign-in token, the metrics directory).
    try:
        sock = serving.bind(settings)
    except serving.AddressInUse as exc:
        hint = ""
        if serving.running(settings) is not None:
            hint = (
                " (a tagserver is running on this data dir: `tagserver preview link` prints a"
                " sign-in link for it)"
            )
        raise click.ClickException(f"{exc.strerror}{hint}") from None
    settings.signing_key()  # create the shared key once, before workers race for it
    if settings.workers > 1:
        from .exposition import prepare_multiprocess

        prepare_multiprocess(settings)  # /metrics then sums every worker's counters
    _before_serve(settings)
    config = uvicorn.Config(
        "tagserver.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers if settings.workers > 1 else None,
        loop="uvloop",
        http="httptools",
        access_log=settings.access_log,
        log_level=settings.log_level,
        proxy_headers=False,  # tagserver applies its own trusted-proxy rules
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
    )
    logging.getLogger("tagserver").info("listening on %s", serving.base_url(settings))
    serving.record(settings)
    try:
        started = _run(config, sock)
    finally:
        serving.forget(settings)
    if not started:
        sys.exit(1)


def _run(config: uvicorn.Config, sock: socket.socket) -> bool:
    """What `uvicorn.run` does, on the socket bound beforehand; False if the server failed."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    server = uvicorn.Server(config)
    try:
        if config.workers > 1:
            if "target" in inspect.signature(Multiprocess).parameters:  # uvicorn < 0.36
                Multiprocess(config, target=server.run, sockets=[sock]).run()  # type: ignore[call-arg]
            else:
                Multiprocess(config, sockets=[sock]).run()
            return True
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    return server.started


def _before_serve(settings: Settings) -> None:
    """Start-up work that must run once in the parent process, before workers fork."""
    from .preview import announce

    announce(settings)  # the preview sign-in link with its one-time token


@main.command()
@click.argument("path", required=False, type=click.Path())
def validate(path: str | None) -> None:
    """Check a container file; print every problem with its JSON path."""
    settings = _settings()
    path = path or settings.container
    registry = load_registry()
    for error in registry.errors:
        click.echo(f"warning: {error}", err=True)
    try:
        container = load_file(path, registry, settings)
    except ContainerError as exc:
        head, *lines = exc.report(path)
        click.echo(head)
        for line in lines:
            click.echo(f"  {line}")
        sys.exit(1)
    click.echo(
        f"{path}: valid — container {container.name!r} version {container.version!r}, "
        f"{len(container.clients)} clients, {len(container.variables)} variables, "
        f"{len(container.triggers)} triggers, {len(container.tags)} tags"
    )


@main.command()
def schema() -> None:
    """Print the JSON Schema of container.json (every installed client and tag included)."""
    from .schema import container_schema

    click.echo(json.dumps(container_schema(load_registry()), indent=2))


@main.command(name="settings")
@click.option("--markdown", is_flag=True, help="Print a Markdown table (as in the README).")
def show_settings(markdown: bool) -> None:
    """List every TAGSERVER_* setting with its default."""
    rows = settings_table()
    if markdown:
        click.echo("| variable | default | meaning |\n|---|---|---|")
        for name, default, help_text in rows:
            click.echo(f"| `{name}` | {f'`{default}`' if default else '—'} | {help_text} |")
        return
    for name, default, help_text in rows:
        click.echo(f"{name:<38} {default or '(empty)':<28} {help_text}")


@main.group()
def preview() -> None:
    """Preview mode: sign-in links."""


@preview.command()
@click.option(
    "--data-dir", type=click.Path(), help="The server's data directory.  [env: TAGSERVER_DATA_DIR]"
)
def link(data_dir: str | None) -> None:
    """Print a fresh sign-in link for the server running on this data dir.

    The link printed at start-up (or by an earlier `preview link`) stops working."""
    from .preview.auth import new_login_token

    settings = _settings(data_dir=data_dir)
    note = serving.running(settings)
    if note is None:
        raise click.ClickException(
            f"no tagserver is running on the data dir {settings.data_path} "
            "(start one with `tagserver serve`: it prints a sign-in link)"
        )
    if note["password"]:
        click.echo(f"{note['url']}/preview  (sign in with TAGSERVER_PREVIEW_PASSWORD)")
        return
    token = new_login_token(settings)
    click.echo(f"{note['url']}/preview/login?token={token}")
    click.echo(
        f"  (behind your proxy: https://<your tagging domain>/preview/login?token={token})",
        err=True,
    )


main.add_command(outbox)
