"""`tagserver settings`: every setting, grouped by who declares it (the core or a plugin),
with its effective value and where that value came from.

The same rows, with defaults instead of effective values, make the README's settings tables
(`--markdown`); tests/test_docs.py keeps them in step with the code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import click

from ..plugins import Registry, load_registry
from ..settings import Setting, Settings, SettingsError, core_settings, shown_default

CORE = "core"


def groups(registry: Registry) -> dict[str, list[Setting[Any]]]:
    """Settings by who declares them: the core first, then each plugin by name."""
    out: dict[str, list[Setting[Any]]] = {CORE: core_settings()}
    for plugin in sorted(registry.settings, key=lambda p: p.split(" ", 1)[::-1]):
        out[plugin] = list(registry.settings[plugin])
    return out


def settings_table(registry: Registry | None = None) -> list[tuple[str, str, str]]:
    """(variable, default, help) rows of every setting, core and plugins'."""
    declared = groups(registry or load_registry())
    return [(s.env, shown_default(s), s.help) for group in declared.values() for s in group]


@dataclass(frozen=True)
class Effective:
    setting: Setting[Any]
    value: str  # as shown: secrets only "set" / "not set"
    source: str  # "flag", "environment" or "default"


def effective(
    settings: Settings,
    registry: Registry,
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
) -> dict[str, list[Effective]]:
    """Every setting's value as a server started with these flags and environment uses it."""
    out: dict[str, list[Effective]] = {}
    for group, declared in groups(registry).items():
        rows = out[group] = []
        for setting in declared:
            value = getattr(settings, setting.name) if group == CORE else settings.get(setting)
            if flags.get(setting.name) is not None:
                source = "flag"
            elif setting.env in environ:
                source = "environment"
            else:
                source = "default"
            rows.append(Effective(setting, _shown(setting, value), source))
    return out


def _shown(setting: Setting[Any], value: Any) -> str:
    if setting.secret:
        return "set" if value else "not set"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if value != "" else "(empty)"


def heading(group: str) -> str:
    """ "client events_api" → "`events_api` client"; the core stays "core"."""
    if group == CORE:
        return "Core"
    kind, _, name = group.partition(" ")
    return f"`{name}` {kind}"


def markdown(registry: Registry) -> str:
    lines: list[str] = []
    for group, declared in groups(registry).items():
        if group != CORE:
            lines += ["", f"#### {heading(group)}", ""]
        lines += ["| variable | default | meaning |", "|---|---|---|"]
        for s in declared:
            default = shown_default(s)
            lines.append(f"| `{s.env}` | {f'`{default}`' if default else '—'} | {s.help} |")
    return "\n".join(lines)


def show(flags: Mapping[str, Any], as_markdown: bool) -> None:
    """The body of `tagserver settings` (its options are the `serve` flags, in cli.py)."""
    registry = load_registry()
    for error in registry.errors:
        click.echo(f"warning: {error}", err=True)
    if as_markdown:
        click.echo(markdown(registry))
        return
    try:
        settings = Settings.from_env(**flags)
        settings.declare(registry.declared_settings())
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    table = effective(settings, registry, flags, os.environ)
    width = max(len(row.value) for rows in table.values() for row in rows)
    width = min(width, 48)
    for group, rows in table.items():
        click.echo(f"[{group}]")
        for row in rows:
            origin = row.source
            if row.source != "default" and not row.setting.secret:
                origin += f", default {shown_default(row.setting) or '(empty)'}"
            click.echo(f"  {row.setting.env:<40} {row.value:<{width}}  {origin}")
