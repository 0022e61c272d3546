"""The ASGI application. Read top to bottom to follow a hit.

request ─▶ built-in route? (/healthz, /metrics, /preview, /collector.js ...)
        └▶ handle_hit: first client that claims it ─▶ read body (bounded)
           ─▶ RequestContext ─▶ client.handle(request, Hit) ─▶ runtime per event
           ─▶ outbox commit ─▶ response (+ cookies set by the client)
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request, cookie_parser
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import logs, metrics
from ..container.history import History
from ..container.history_backend import open_history
from ..container.model import ContainerError, load_file
from ..container.status import ContainerStatus
from ..delivery.alerts import Alerts
from ..delivery.dispatch import FAILURES_BEFORE_PAUSE, Dispatcher
from ..delivery.outbox_backend import OutboxBackend, open_outbox
from ..engine.event_ids import ReuseDetector, detector
from ..engine.hit import Hit, HitTrace, new_trace_id
from ..engine.runtime import Runtime
from ..errors import BadRequest, HitError, PayloadTooLarge
from ..event import RequestContext
from ..plugins import Example, Registry, load_registry
from ..preview import Preview
from ..preview.routes import Server, preview_routes
from ..redact import Redactor
from ..settings import ROOT_PATH_SCOPE_KEY, Settings
from .exposition import metrics_endpoint
from .reload import ContainerWatcher, remember, signature
from .status import Running, StatusBoard

log = logging.getLogger("tagserver")


@dataclass
class State:
    settings: Settings
    registry: Registry
    runtime: Runtime
    outbox: OutboxBackend
    preview: Preview
    dispatcher: Dispatcher | None = None
    background: list[asyncio.Task[Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    status: ContainerStatus = field(default_factory=ContainerStatus)
    history: History | None = None
    alerts: Alerts | None = None
    board: StatusBoard | None = None
    reuse: ReuseDetector | None = None  # event ids seen by this worker (event_ids.py)

    @property
    def redact(self) -> Redactor:
        return self.runtime.redact

    def container_status(self) -> dict[str, Any]:
        """The container in force and the last refused reload (/healthz, preview)."""
        return self.status.describe(self.runtime.container, self.redact)

    def container_report(self) -> dict[str, Any]:
        """`container_status()` and, while the file on disk was refused, a warning saying so."""
        return {
            "container": self.container_status(),
            "warnings": self.status.warnings(self.runtime.container),
        }

    def lanes(self) -> list[dict[str, Any]]:
        """This worker's delivery lanes: paused or not, and the last failure each saw."""
        if self.dispatcher is None:
            return []
        return [
            {
                "destination": lane.key,
                "tag_type": lane.tag_type,
                "failing": lane.failures >= FAILURES_BEFORE_PAUSE,
                "last_error": lane.last_error,
                "tags": sorted(lane.tags),
            }
            for lane in list(self.dispatcher.lanes.values())
        ]


def state_of(request: Request) -> State:
    state: State = request.app.state.tagserver
    return state


# -- the hit path ------------------------------------------------------------------------------


class HitRequest(Request):
    """A hit's request: its body is read by `read_body` (bounded, straight from `receive`), and
    `await request.body()` (or `.json()`, `.stream()`) in a client returns those same bytes."""

    received: bytes | None = None

    async def body(self) -> bytes:
        if self.received is not None:
            return self.received
        return await super().body()

    async def stream(self) -> AsyncGenerator[bytes, None]:
        if self.received is not None:
            yield self.received
            yield b""
            return
        async for chunk in super().stream():
            yield chunk


async def handle_hit(request: Request, state: State | None = None) -> Response:
    if not isinstance(request, HitRequest):  # through the router (HitsFirst makes one)
        request = HitRequest(request.scope, request.receive)
    state = state or state_of(request)
    started = time.perf_counter()
    runtime = state.runtime  # one container for the whole hit, even if a reload lands meanwhile
    for client in runtime.container.clients:
        if client.claim(request):
            break
    else:
        client = None
    headers = header_dict(request.scope)
    session = state.preview.session_for(request, headers)
    if client is None:
        response: Response = JSONResponse(
            {"error": f"no client claims {request.method} {request.url.path}"}, 404
        )
        metrics.count(metrics.HITS, "none", "404")
        if session:
            _record_unclaimed(state, request, session, response)
        return response

    trace = None
    try:
        body = await read_body(request, state.settings.max_body_bytes, headers)
        ctx = request_context(request, state.settings, body, headers)
        ctx.client_name = client.name
        ctx.is_visitor = client.request_is_visitor
        if session:
            trace = HitTrace(
                new_trace_id(), session, time.time(), _request_snapshot(ctx, state), client.name
            )
            trace.container = runtime.container.describe()
        hit = Hit(
            request=ctx,
            client_name=client.name,
            runtime=runtime,
            outbox=state.outbox,
            trace=trace,
            reuse=state.reuse,
        )
        response = await client.handle(request, hit)
    except HitError as exc:
        response = JSONResponse({"error": exc.reason}, exc.status, headers=exc.headers)
        if trace is not None:
            trace.error = exc.reason
    except Exception as exc:  # a bug in a client: log it, never show a traceback
        log.exception("client %r failed on %s %s", client.name, request.method, request.url.path)
        response = JSONResponse({"error": "internal error while handling the hit"}, 500)
        if trace is not None:
            trace.error = state.redact.text(f"{type(exc).__name__}: {exc}")

    metrics.count(metrics.HITS, client.name, str(response.status_code))
    metrics.observe(metrics.HIT_LATENCY, time.perf_counter() - started)
    if trace is not None:
        trace.status = response.status_code
        trace.response = response_snapshot(response)
        trace.duration_ms = (time.perf_counter() - started) * 1000
        state.preview.record_hit(trace.as_dict())
    return response


def header_dict(scope: Scope) -> dict[str, str]:
    """The request headers by lower-case name (the last one of a repeated header wins)."""
    names = _header_names
    headers = {}
    for raw, value in scope["headers"]:
        name = names.get(raw)
        if name is None:
            if len(names) > 1000:  # names made up by a client: stay bounded
                names.clear()
            name = names[raw] = raw.decode("latin-1").lower()
        headers[name] = header_text(value)
    return headers


def header_text(value: bytes) -> str:
    """A header value as text: UTF-8 (what browsers and most clients send), else Latin-1
    (HTTP's historical charset), so no byte sequence is ever refused."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


# raw header name → its lower-case text: hits repeat the same few names, and decoding and
# lowering each one costs more than a dict lookup
_header_names: dict[bytes, str] = {}


async def read_body(request: HitRequest, limit: int, headers: dict[str, str]) -> bytes:
    """The request body, refusing more than `limit` bytes without reading them all."""
    declared = headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit} bytes")
    chunks, size, more = [], 0, True
    while more:  # straight from ASGI `receive`: Request.stream() is an async generator per hit
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    request.received = body  # so a client may still call `await request.body()`
    return body


def request_context(
    request: Request,
    settings: Settings,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> RequestContext:
    """The hit's request, read straight from the ASGI scope: no URL or query objects unless
    the request has a query string or cookies (most hits to the events API have neither)."""
    scope = request.scope
    if headers is None:
        headers = header_dict(scope)
    query_string = scope.get("query_string", b"").decode("latin-1")
    scheme = scope.get("scheme", "http")
    url = f"{scheme}://{headers.get('host', '')}{scope.get(ROOT_PATH_SCOPE_KEY, '')}{scope['path']}"
    client = scope.get("client")
    return RequestContext.from_scope(
        method=scope["method"],
        url=f"{url}?{query_string}" if query_string else url,
        path=scope["path"],
        query=dict(parse_qsl(query_string, keep_blank_values=True)) if query_string else {},
        headers=headers,
        cookies=cookie_parser(headers["cookie"]) if "cookie" in headers else {},
        peer_ip=client[0] if client else "",
        scheme=scheme,
        settings=settings,
        body=body,
    )


def _request_snapshot(ctx: RequestContext, state: State) -> dict[str, Any]:
    body = ctx.body.decode("utf-8", "replace")
    if len(body) > 65536:
        body = body[:65536] + "… (truncated)"
    snapshot: dict[str, Any] = state.redact(
        {
            "method": ctx.method,
            "url": ctx.url,
            "ip": ctx.ip,
            "headers": ctx.headers,
            "cookies": {
                k: v for k, v in ctx.cookies.items() if not k.startswith("tagserver_preview")
            },
            "body": body,
        }
    )
    return snapshot


def response_snapshot(response: Response) -> dict[str, Any]:
    """What preview shows of the answer sent back to the hit: status, headers, and for each
    cookie set its name and attributes, never its value."""
    headers: dict[str, str] = {}
    cookies: list[dict[str, str]] = []
    for raw_name, raw_value in response.raw_headers:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name == "set-cookie":
            cookies.append(cookie_summary(value))
        else:
            headers[name] = value
    return {"status": response.status_code, "headers": headers, "cookies": cookies}


def cookie_summary(set_cookie: str) -> dict[str, str]:
    """A `Set-Cookie` header without the cookie's value: {"name", "attributes"}."""
    first, _, rest = set_cookie.partition(";")
    attributes = "; ".join(part.strip() for part in rest.split(";") if part.strip())
    return {"name": first.split("=", 1)[0].strip(), "attributes": attributes}


def _record_unclaimed(state: State, request: Request, session: str, response: Response) -> None:
    ctx = request_context(request, state.settings)
    trace = HitTrace(new_trace_id(), session, time.time(), _request_snapshot(ctx, state), None)
    trace.status, trace.error = response.status_code, "no client claimed this request"
    trace.response = response_snapshot(response)
    state.preview.record_hit(trace.as_dict())


# -- built-in endpoints ------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    """200 while hits can be stored; 503 with the reason when they cannot (load balancers
    then send them elsewhere)."""
    state = state_of(request)
    report = state.container_report()
    container, warnings = report["container"], report["warnings"]
    problem = state.outbox.problem
    if problem is None:
        body, status = {"status": "ok", "container": container}, 200
    else:
        body, status = {"status": "unavailable", "reason": problem, "container": container}, 503
    if warnings:  # still 200: the running container serves, but the edit did not land
        body["warnings"] = warnings
    return Response(orjson.dumps(body), status, media_type="application/json")


def builtin_routes(state: State) -> list[BaseRoute]:
    """The server's own routes, each handed what it reads from the running server."""
    from importlib.resources import files

    from . import pages

    settings = state.settings

    def example() -> Example | None:
        examples = (client.example() for client in state.runtime.container.clients)
        return next((e for e in examples if e is not None), None)

    board = state.board
    assert board is not None  # made by create_app
    server = Server(
        context=lambda request: request_context(request, settings),
        redact=lambda value: state.runtime.redact(value),
        example=example,
        container=state.container_report,
        status=board.figures,
        retry=board.retry,
    )
    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *preview_routes(state.preview, server),
        *pages.routes(settings, lambda: state.runtime.container),  # /collector.js, /demo
        Mount(
            "/static", NoSniffStaticFiles(directory=str(files("tagserver.static"))), name="static"
        ),
    ]
    return routes


class NoSniffStaticFiles(StaticFiles):
    """Static files that browsers must take for their declared type, never sniff (errors too)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            response = PlainTextResponse(str(exc.detail), exc.status_code, headers=exc.headers)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


HIT_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def first_segments(routes: list[BaseRoute]) -> frozenset[str] | None:
    """The first path segments the built-in routes use; None if one starts with a parameter."""
    segments = set()
    for route in routes:
        first = str(getattr(route, "path", "{")).lstrip("/").split("/", 1)[0]
        if "{" in first:
            return None
        segments.add(first)
    return frozenset(segments)


class HitsFirst:
    """ASGI middleware: a request whose first path segment no built-in route uses is a hit,
    handed straight to `handle_hit`.

    Starlette's middleware (server and exception errors), router and endpoint wrappers cost
    about as much as a whole bare Starlette request; hits are the hot path and need none of
    them (`handle_hit` turns every error into a response itself; anything else that escapes
    becomes uvicorn's plain 500, as ServerErrorMiddleware's would). Other requests
    (`/healthz`, `/preview/...`) take the normal route, where the catch-all still sends
    unknown paths to `handle_hit`.
    """

    def __init__(self, app: ASGIApp, builtin_segments: frozenset[str] | None, state: State) -> None:
        self.app = app
        self.builtin = builtin_segments
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.builtin is not None:
            first = scope["path"][1:].split("/", 1)[0]
            if first not in self.builtin:
                response = await handle_hit(HitRequest(scope, receive), self.state)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RootPath:
    """ASGI middleware for TAGSERVER_ROOT_PATH: a request under the prefix (`/tag/collect`) is
    served as its path without it (`/collect`), so the site's reverse proxy may forward the
    prefix or strip it. The prefix goes in every request's scope (`ROOT_PATH_SCOPE_KEY`), for
    the URLs the server writes (links, redirects, the hit's public URL)."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix
        self.raw_prefix = prefix.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, ROOT_PATH_SCOPE_KEY: self.prefix}
            path: str = scope["path"]
            if path == self.prefix or path.startswith(self.prefix + "/"):
                scope["path"] = path[len(self.prefix) :] or "/"
                raw = scope.get("raw_path")
                if raw and raw.startswith(self.raw_prefix):
                    scope["raw_path"] = raw[len(self.raw_prefix) :] or b"/"
        await self.app(scope, receive, send)


class TagServer(Starlette):
    """Starlette with `HitsFirst` outside its middleware stack, so hits skip all of it."""

    def __init__(
        self, *args: Any, builtin_segments: frozenset[str] | None, state: State, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.hits_first = (builtin_segments, state)

    def build_middleware_stack(self) -> ASGIApp:
        app: ASGIApp = HitsFirst(super().build_middleware_stack(), *self.hits_first)
        prefix = self.hits_first[1].settings.root_path
        return RootPath(app, prefix) if prefix else app


# -- lifecycle ---------------------------------------------------------------------------------


def quiet_gc() -> tuple[int, int, int]:
    """Fewer, shorter collector pauses on the hit path (bench_hits: p99 ~40 → ~17 ms, +15 %/s).

    What exists once started (modules, container, plugins) is frozen out of the collector's
    sight, and young objects are collected less often: hits make little cyclic garbage.
    Returns the previous thresholds, restored with `gc.unfreeze()` at shutdown.
    """
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    return thresholds


def _open_history(settings: Settings) -> History | None:
    try:
        return open_history(settings.data_dir, settings.outbox_url, settings.outbox_timeout_seconds)
    except Exception as exc:  # a record, not a reason to refuse to serve
        log.warning("container history unavailable: %s: %s", type(exc).__name__, exc)
        return None


def create_app(settings: Settings | None = None) -> Starlette:
    """Build the app; the container is loaded now so a broken one fails the start loudly."""
    settings = settings or Settings.from_env()
    logs.configure(settings.log_level)
    registry = load_registry()
    for error in registry.errors:
        log.error("plugin not loaded: %s", error)
    settings.declare(registry.declared_settings())  # raises SettingsError on a bad value
    loaded_as = signature(settings.container)  # before reading: a change from now on counts
    container = load_file(settings.container, registry, settings)
    history = _open_history(settings)
    remember(history, container, settings.container)
    preview = Preview(settings)
    alerts = Alerts(settings)
    state = State(
        settings=settings,
        registry=registry,
        runtime=Runtime(container, settings),
        outbox=open_outbox(settings),
        preview=preview,
        history=history,
        alerts=alerts,
        reuse=detector(settings.event_id_reuse_window_seconds, settings.event_id_reuse_max_ids),
    )
    state.board = StatusBoard(
        settings,
        Running(
            container=lambda: state.runtime.container,
            report=state.container_report,
            problem=lambda: state.outbox.problem,
            lanes=state.lanes,
        ),
    )
    board = state.board

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.outbox.start()
        alerts.start()
        dispatcher = state.dispatcher = Dispatcher(
            state.outbox, registry, settings, preview=preview,
            redact=lambda: state.runtime.redact, alerts=alerts,
        )  # fmt: skip
        await dispatcher.start()  # resumes whatever the outbox holds
        await preview.start()
        await board.start()
        watcher = ContainerWatcher(
            settings, registry, state, history,
            on_refused=lambda digest, path, problems: alerts.reload_refused(
                digest, path, [state.redact.text(p) for p in problems]
            ),
            seen=loaded_as,
        )  # fmt: skip
        state.background.append(asyncio.create_task(watcher.run(), name="container-watcher"))
        log.info(
            "tagserver ready: container %s (version %s, hash %s), %d clients, %d tags",
            container.name, container.version, container.hash, len(container.clients), len(container.tags),
        )  # fmt: skip
        thresholds = quiet_gc()
        logs.write_in_background()  # every hit's log lines (the log tag's) off the event loop
        try:
            yield
        finally:
            await dispatcher.close()  # in-flight sends get the grace period
            await board.close()
            await alerts.close()
            for task in state.background:
                task.cancel()
            await asyncio.gather(*state.background, return_exceptions=True)
            await preview.close()
            await state.outbox.close()
            if history is not None:
                history.close()
            metrics.flush()
            gc.unfreeze()
            gc.set_threshold(*thresholds)
            logs.write_directly()  # every line queued is written before the process goes on

    routes = builtin_routes(state)
    app = TagServer(
        routes=[*routes, Route("/{path:path}", handle_hit, methods=HIT_METHODS)],
        lifespan=lifespan,
        builtin_segments=first_segments(routes),
        state=state,
    )
    app.state.tagserver = state
    return app


__all__ = ["create_app", "ContainerError", "State"]
