"""Options that several `tagserver` command groups share, so they read and behave alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    envvar="TAGSERVER_DATA_DIR",
    default="data",
    show_default=True,
    help="The server's data directory.  [env: TAGSERVER_DATA_DIR]",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def where(outbox_url_help: str) -> Decorator:
    """--data-dir and --outbox-url (help: what the URL means to this group): where the
    servers keep what the command reads, from the same settings the server reads."""
    url_option = click.option(
        "--outbox-url",
        envvar="TAGSERVER_OUTBOX_URL",
        default="",
        show_default=False,
        help=outbox_url_help,
    )

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        return data_dir_option(url_option(function))

    return decorate
