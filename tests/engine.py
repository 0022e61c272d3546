"""Run events straight through the engine: compile a container dict with the installed
registry, then `Runtime.run_event`. No app, no outbox, no writer process: for tests of
triggers, operators, variables and tag decisions (the HTTP path has its own tests)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from tagserver.container.model import Container, load
from tagserver.engine.runtime import EventResult, Runtime
from tagserver.event import RequestContext
from tagserver.plugins import Registry, load_registry
from tagserver.settings import Settings
from tagserver.toolkit.events import check_event

HOST = "sgtm.shop.test"
_REGISTRY: Registry | None = None


def registry() -> Registry:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = load_registry()
    return _REGISTRY


def compile_container(
    data: dict[str, Any], settings: Settings | None = None, reg: Registry | None = None
) -> Container:
    return load(data, reg or registry(), settings or Settings())


def request_context(
    *,
    path: str = "/api/events",
    headers: dict[str, str] | None = None,
    cookies: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    peer_ip: str = "198.51.100.4",
    settings: Settings | None = None,
) -> RequestContext:
    """The request a hit would have come with (names of headers in any case)."""
    query = query or {}
    url = f"https://{HOST}{path}" + (f"?{urlencode(query)}" if query else "")
    return RequestContext.from_scope(
        method="POST",
        url=url,
        path=path,
        query=query,
        headers={"host": HOST, **{k.lower(): v for k, v in (headers or {}).items()}},
        cookies=cookies or {},
        peer_ip=peer_ip,
        scheme="https",
        settings=settings or Settings(),
    )


def run_event(
    container: dict[str, Any] | Container,
    event: dict[str, Any],
    *,
    client_name: str = "api",
    trace: bool = False,
    trace_id: str | None = None,
    settings: Settings | None = None,
    runtime: Runtime | None = None,
    **request: Any,
) -> EventResult:
    """One event, checked as the events API checks it, run through the container."""
    settings = settings or Settings()
    if runtime is None:
        compiled = container if isinstance(container, Container) else compile_container(container)
        runtime = Runtime(compiled, settings)
    context = request_context(settings=settings, **request)
    checked = check_event(event, context.received_at)
    return runtime.run_event(
        checked, context, client_name, trace=trace or trace_id is not None, trace_id=trace_id
    )


def summary(container: dict[str, Any] | Container, event: dict[str, Any], **kw: Any) -> Any:
    """What the events API would answer for this one event (`tags_fired`, `tags_not_fired`)."""
    return run_event(container, event, **kw).summary(0)
