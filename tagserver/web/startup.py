"""The start-up log: what this server will do, said before it does it.

One line each for the listen address, the container, the outbox and the preview store, then
one per tag in the tag's own words (`Tag.describe`), so an operator reads in the log whether
Meta events go out for real or run dry, and why, before the first event arrives. The core
never knows a tag type by name: it only resolves what can be known without an event
(literals, `constant` and `env` variables) and hands it to the tag.

Passwords in the outbox and Redis URLs are never shown; tag lines pass through the
container's redactor as a last guard against a tag that would print a secret.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..container.model import CompiledTag, Container
from ..container.refs import REF, compile_value, has_refs
from ..container.variables import FixedScope, NeedsEvent
from ..plugins import StartupParams
from ..redact import Redactor
from ..settings import Settings

log = logging.getLogger("tagserver.startup")

_SECRET_QUERY_KEYS = frozenset({"password", "sslpassword", "passfile", "sslkey"})
_DSN_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.I)


def log_startup(settings: Settings, container: Container) -> None:
    for line in startup_lines(settings, container):
        log.info("%s", line)


def startup_lines(settings: Settings, container: Container) -> list[str]:
    return [
        listen_line(settings),
        f"container {container.name} version {container.version} (hash {container.hash}) "
        f"from {Path(settings.container).resolve()}: {len(container.clients)} clients, "
        f"{len(container.tags)} tags",
        outbox_line(settings),
        preview_line(settings),
        *tag_lines(container),
    ]


def listen_line(settings: Settings) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    workers = max(1, settings.workers)
    return f"listening on http://{host}:{settings.port} ({workers} worker{'s' if workers != 1 else ''})"


def outbox_line(settings: Settings) -> str:
    url = settings.outbox_url.strip()
    if url:
        from ..delivery.outbox_pg import safe_url as without_password

        return f"outbox: PostgreSQL at {without_password(url)} (shared by every instance)"
    from ..delivery.outbox_store import database_path

    path = database_path(Path(settings.data_dir).resolve())
    return f"outbox: SQLite at {path} (this machine only, synchronous={settings.outbox_sync})"


def preview_line(settings: Settings) -> str:
    if settings.redis_url:
        return f"preview store: Redis at {safe_url(settings.redis_url)} (shared by every instance)"
    from ..preview.store import SHARED_MEMORY, default_sqlite_path

    path = default_sqlite_path(settings)
    where = "in shared memory " if path.parent == SHARED_MEMORY else ""
    return f"preview store: SQLite {where}at {path} (this machine only)"


def safe_url(url: str) -> str:
    """`url` without its password (user info or libpq-style query/keyword parameters)."""
    if "://" not in url:  # a libpq keyword/value string: host=db password=...
        return _DSN_PASSWORD.sub(r"\1***", url)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "(unparsable URL)"
    netloc = parts.netloc
    if password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*/"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# -- tags -------------------------------------------------------------------------------------


def tag_lines(container: Container) -> list[str]:
    """One line per tag: `tag meta_capi (meta_capi): DRY RUN — META_PIXEL_ID is empty`."""
    redact = Redactor(container.secrets)
    specs = container.source.get("tags", [])
    lines = []
    for index, tag in enumerate(container.tags):
        spec = specs[index] if index < len(specs) else {}
        if tag.paused:
            mode = "PAUSED (fires on nothing until `paused` is removed)"
        else:
            try:
                mode = tag.instance.describe(startup_params(tag, spec, container))
            except Exception as exc:  # a plugin's bug must not stop the start
                mode = f"(cannot describe itself: {type(exc).__name__}: {exc})"
        lines.append(redact.text(f"tag {tag.name} ({tag.type}): {mode}"))
    return lines


def startup_params(tag: CompiledTag, spec: dict[str, Any], container: Container) -> StartupParams:
    """The tag's params resolved as far as possible before any event."""
    declared = tag.instance.params
    given = dict(spec.get("params") or {})
    raw = {p.name: p.default for p in declared if p.default is not None} | given
    env_names = {
        v["name"]: v["env"]
        for v in container.source.get("variables", [])
        if v.get("type") == "env" and isinstance(v.get("env"), str)
    }
    scope = FixedScope(container.variables)
    values: dict[str, Any] = {}
    per_event: set[str] = set()
    sources: dict[str, str] = {}
    for name, value in raw.items():
        if not has_refs(value):
            values[name] = value
            continue
        whole = REF.fullmatch(value.strip()) if isinstance(value, str) else None
        if whole and whole.group(1) in env_names:
            sources[name] = env_names[whole.group(1)]
        elif isinstance(value, str):
            sources[name] = value
        try:
            values[name] = compile_value(value)(scope)
        except NeedsEvent:
            per_event.add(name)
    return StartupParams(values=values, per_event=frozenset(per_event), sources=sources)
