"""The `tagserver` command: serve, validate, schema, settings (and outbox tools)."""

from __future__ import annotations

import inspect
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .. import logs, serving
from ..container.model import Container, ContainerError, load_file
from ..plugins import Registry, load_registry
from ..settings import PREFIX, Settings, SettingsError
from .container import container
from .events import events
from .outbox import outbox

F = TypeVar("F", bound=Callable[..., Any])

if TYPE_CHECKING:
    import uvicorn


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings.from_env(**overrides)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
@click.version_option(package_name="tagserver")
def main() -> None:
    """tagserver: a self-hosted, first-party server-side tagging server."""


def _declared(settings: Settings, registry: Registry) -> Settings:
    """`settings` knowing the installed plugins' settings; a bad value stops the command."""
    try:
        settings.declare(registry.declared_settings())
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    return settings


def _help(text: str, name: str) -> str:
    """A flag's help with its variable and default (flags themselves default to None: unset,
    so the environment applies)."""
    value = next(f.default for f in fields(Settings) if f.name == name)
    shown = str(value).lower() if isinstance(value, bool) else str(value)
    return f"{text}  [env: {PREFIX}{name.upper()}; default: {shown}]"


def server_flags(command: F) -> F:
    """The flags of `serve`, also taken by `settings` to show what `serve` would use."""
    for option in reversed(
        [
            click.option(
                "--host",
                help=_help("Address to listen on.", "host"),
            ),
            click.option(
                "--port",
                type=int,
                help=_help("Port.", "port"),
            ),
            click.option(
                "--container",
                "container",
                type=click.Path(),
                help=_help("container.json path.", "container"),
            ),
            click.option(
                "--data-dir",
                type=click.Path(),
                help=_help("Outbox and state directory.", "data_dir"),
            ),
            click.option(
                "--workers",
                type=int,
                help=_help("Worker processes.", "workers"),
            ),
            click.option(
                "--access-log/--no-access-log",
                default=None,
                help=_help("Per-request access log.", "access_log"),
            ),
        ]
    ):
        command = option(command)
    return command


@main.command()
@server_flags
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
    logs.configure(settings.log_level)
    registry = load_registry()
    _declared(settings, registry)
    try:
        loaded = load_file(settings.container, registry, settings)  # fail here, before forking
    except ContainerError as exc:
        head, *lines = exc.report(settings.container)
        click.echo(f"{head}; not starting:", err=True)
        for line in lines:
            click.echo(f"  {line}", err=True)
        _remember_refusal(settings, exc)
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
        from ..web.exposition import prepare_multiprocess

        prepare_multiprocess(settings)  # /metrics then sums every worker's counters
    _before_serve(settings, loaded)
    signal.signal(signal.SIGTERM, _stopped)
    config = uvicorn.Config(
        "tagserver.web.app:create_app",
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
        timeout_keep_alive=max(1, round(settings.keep_alive_seconds)),
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
                Multiprocess(config, target=server.run, sockets=[sock]).run()  # type: ignore[call-arg]  # uvicorn < 0.36 took a target
            else:
                Multiprocess(config, sockets=[sock]).run()
            return True
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    return server.started


def _stopped(signum: int, frame: object) -> None:
    """SIGTERM after uvicorn's graceful shutdown (it raises the signal it handled again, with
    this handler back in place): a stop asked for and done is a success, exit status 0, not a
    death by signal (143) that Docker, systemd and Kubernetes would report as a failure."""
    raise SystemExit(0)


def _remember_refusal(settings: Settings, exc: ContainerError) -> None:
    """A container refused at start is kept in the history too (when it can be read)."""
    from pathlib import Path

    from ..container.history_backend import open_history
    from ..web.reload import remember_refusal

    try:
        raw = Path(settings.container).read_bytes()
        history = open_history(
            settings.data_dir, settings.outbox_url, settings.outbox_timeout_seconds
        )
    except Exception:
        return
    try:
        remember_refusal(history, raw, settings.container, exc.problems)
    finally:
        history.close()


def _before_serve(settings: Settings, loaded: Container) -> None:
    """Start-up work that must run once in the parent process, before workers fork."""
    from ..preview import announce
    from ..web.startup import log_startup

    log_startup(settings, loaded)  # what will happen: listen address, outbox, each tag
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
    _declared(settings, registry)
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
        f"{len(container.triggers)} triggers, {len(container.tags)} tags, "
        f"{len(container.source.get('transformations', []))} transformations"
    )


@main.command()
def schema() -> None:
    """Print the JSON Schema of container.json (every installed client and tag included)."""
    from ..container.schema import container_schema

    click.echo(json.dumps(container_schema(load_registry()), indent=2))


@main.command(name="settings")
@server_flags
@click.option("--markdown", is_flag=True, help="Print the README's tables (defaults) in Markdown.")
def show_settings(markdown: bool, **flags: Any) -> None:
    """Every TAGSERVER_* setting by who declares it (the core, each plugin), with the value
    `serve` would use given these flags and the environment, and where it comes from.
    Secrets show only as set / not set."""
    from .settings import show

    show(flags, markdown)


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
    from ..preview.auth import new_login_token

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
main.add_command(events)
main.add_command(container)
