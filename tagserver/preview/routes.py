"""The /preview pages, their JSON endpoints and the live stream (Server-Sent Events).

Every response carries a strict Content-Security-Policy (scripts from /static only), denies
framing and sniffing and sends no referrer. Everything but the sign-in page needs the
operator's cookie; state changes are POSTs whose cookie is SameSite=Strict and whose Origin,
when sent, must be this server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shlex
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.templating import Jinja2Templates

from ..event import RequestContext
from ..settings import ROOT_PATH_SCOPE_KEY
from .sessions import PreviewSession

if TYPE_CHECKING:
    from ..plugins import Example
    from . import Preview

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STREAM_SECONDS = 60.0  # a stream ends after this; the browser reconnects (and re-authenticates)
POLL_SECONDS = 0.5  # how often a stream looks for other workers' hits
HEARTBEAT_SECONDS = 15.0
MAX_FORM_BYTES = 4096
HIT_LIST_LIMIT = 500

Endpoint = Callable[[Request], Awaitable[Response]]


def root(request: Request) -> str:
    """TAGSERVER_ROOT_PATH, which the app puts in the scope: the prefix every link and
    redirect of the pages starts with."""
    return str(request.scope.get(ROOT_PATH_SCOPE_KEY, ""))


templates = Jinja2Templates(
    directory=str(files("tagserver") / "templates"),
    context_processors=[lambda request: {"root": root(request)}],
)


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body, default=str), status, media_type="application/json")


def error(status: int, reason: str) -> Response:
    return json_response({"error": reason}, status)


@dataclass(frozen=True)
class Server:
    """What the preview pages read from the running server, handed in by the app. The
    container changes on reload, so these are functions, asked at each request."""

    context: Callable[[Request], RequestContext]  # the request as a hit sees it (proxies ...)
    redact: Callable[[Any], Any]  # removes the live container's secrets
    # a request that sends a hit by hand (shown as curl), if a client of the container has one
    example: Callable[[], Example | None]
    # the container in force and the last refused edit, with warnings (as /healthz shows them)
    container: Callable[[], dict[str, Any]] = dict


async def read_form(request: Request) -> dict[str, str]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    return dict(parse_qsl(body.decode("utf-8", "replace")))


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


class Views:
    def __init__(self, preview: Preview, server: Server) -> None:
        self.preview = preview
        self.server = server
        self.context = server.context
        self.sessions = preview.sessions
        self.auth = preview.auth

    # -- guards

    def secured(self, endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def wrapper(request: Request) -> Response:
            response = await endpoint(request)
            response.headers.update(SECURITY_HEADERS)
            return response

        return wrapper

    def operator(self, endpoint: Endpoint, *, page: bool = False) -> Endpoint:
        """Only for a signed-in operator; POSTs must also come from this very origin."""

        async def wrapper(request: Request) -> Response:
            if not await asyncio.to_thread(self.auth.signed_in, request):
                if page:
                    login = f"{root(request)}/preview/login?next={request.url.path}"
                    return RedirectResponse(login, 303)
                return error(401, f"sign in to preview first ({root(request)}/preview/login)")
            if request.method == "POST" and not same_origin(request, self.context):
                return error(403, "cross-site request refused")
            return await endpoint(request)

        return self.secured(wrapper)

    async def session_or_404(self, request: Request) -> PreviewSession | Response:
        sid = request.path_params["sid"]
        session = await asyncio.to_thread(self.sessions.get, sid)
        if session is None:
            return error(404, f"no preview session {sid!r} (it may have been deleted)")
        return session

    # -- sign in / out

    async def login_page(self, request: Request) -> Response:
        token = request.query_params.get("token")
        if token:  # the link printed at start-up
            return await self._attempt(request, token, safe_next(request.query_params.get("next")))
        if await asyncio.to_thread(self.auth.signed_in, request):
            next_url = safe_next(request.query_params.get("next"))
            return RedirectResponse(root(request) + next_url, 303)
        return self._login_form(request, None, 200)

    async def login(self, request: Request) -> Response:
        form = await read_form(request)
        secret = form.get("password", "")
        return await self._attempt(request, secret, safe_next(form.get("next")))

    async def _attempt(self, request: Request, secret: str, next_url: str) -> Response:
        ctx = self.context(request)
        wait = await asyncio.to_thread(self.auth.retry_after, ctx.ip)
        if wait is not None:
            response = self._login_form(
                request, f"Too many failed sign-in attempts. Try again in {wait} seconds.", 429
            )
            response.headers["Retry-After"] = str(wait)
            return response
        if not await asyncio.to_thread(self.auth.check_secret, secret):
            await asyncio.to_thread(self.auth.failed, ctx.ip)
            what = "password" if self.auth.uses_password else "sign-in token"
            return self._login_form(request, f"Wrong {what}.", 401)
        await asyncio.to_thread(self.auth.succeeded, ctx.ip)
        response = RedirectResponse(root(request) + next_url, 303)
        self.auth.sign_in(response, ctx.is_https)
        return response

    def _login_form(self, request: Request, message: str | None, status: int) -> Response:
        return templates.TemplateResponse(
            request,
            "preview_login.html",
            {
                "message": message,
                "uses_password": self.auth.uses_password,
                "next": safe_next(request.query_params.get("next")),
            },
            status_code=status,
        )

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse(f"{root(request)}/preview/login", 303)
        self.auth.sign_out(response, self.context(request).is_https)
        return response

    # -- pages

    async def index(self, request: Request) -> Response:
        sessions = await asyncio.to_thread(self.sessions.all)
        now = time.time()
        return templates.TemplateResponse(
            request,
            "preview_sessions.html",
            {
                "sessions": [
                    {**s.as_dict(), "live": s.live(now), "remaining": s.remaining(now)}
                    for s in sessions
                ],
                "ttl_minutes": self.preview.settings.preview_token_ttl_seconds // 60,
            },
        )

    async def start_session(self, request: Request) -> Response:
        form = await read_form(request)
        session = await asyncio.to_thread(self.sessions.start, form.get("name", ""))
        if wants_json(request):
            return json_response(self.session_json(request, session), 201)
        return RedirectResponse(f"{root(request)}/preview/s/{session.id}", 303)

    async def session_page(self, request: Request) -> Response:
        session = await self.session_or_404(request)
        if isinstance(session, Response):
            return templates.TemplateResponse(
                request, "preview_missing.html", {"sid": request.path_params["sid"]}, 404
            )
        return templates.TemplateResponse(request, "preview_session.html", {"session": session})

    # -- JSON

    def session_json(self, request: Request, session: PreviewSession) -> dict[str, Any]:
        ctx = self.context(request)
        origin = f"{'https' if ctx.is_https else 'http'}://{ctx.host or 'localhost'}"
        prefix = root(request)
        example = self.server.example()
        marked = self.sessions.verify(request.cookies.get("tagserver_preview", "")) == session.id
        now = time.time()
        return {
            **session.as_dict(),
            "live": session.live(now),
            "remaining": session.remaining(now),
            "ttl": self.preview.settings.preview_token_ttl_seconds,
            "param": "tagserver_preview",
            "header": "X-Tagserver-Preview",
            "origin": origin,
            "site_url": origin + (prefix + "/demo" if self.preview.settings.demo else "/"),
            "example_url": origin + prefix + (example.path if example is not None else "/"),
            "curl": curl(origin + prefix, example, session.token),
            "marked": marked,
            "limits": {
                "per_session": self.preview.store.per_session,
                "total": self.preview.store.total,
            },
        }

    async def api_sessions(self, request: Request) -> Response:
        sessions = await asyncio.to_thread(self.sessions.all)
        return json_response({"sessions": [self.session_json(request, s) for s in sessions]})

    async def api_session(self, request: Request) -> Response:
        session = await self.session_or_404(request)
        if isinstance(session, Response):
            return session
        return json_response(self.session_json(request, session))

    async def api_hits(self, request: Request) -> Response:
        session = await self.session_or_404(request)
        if isinstance(session, Response):
            return session
        store = self.preview.store
        cursor = await asyncio.to_thread(store.cursor)  # read first: nothing falls between
        hits = await asyncio.to_thread(store.hits, session.id, HIT_LIST_LIMIT)
        return json_response({"hits": hits, "cursor": cursor})

    async def api_hit(self, request: Request) -> Response:
        session = await self.session_or_404(request)
        if isinstance(session, Response):
            return session
        trace_id = request.path_params["trace_id"]
        trace = await asyncio.to_thread(self.preview.store.hit, session.id, trace_id)
        if trace is None:
            return error(404, "no such hit in this session (dropped by the bound or cleared)")
        # redact once more with the live container's secrets (the store saw only settings')
        return json_response(self.server.redact(trace))

    async def api_container(self, request: Request) -> Response:
        """The container in force and the last refused reload (preview's banner)."""
        return json_response(self.server.container())

    async def api_action(self, request: Request) -> Response:
        sid, action = request.path_params["sid"], request.path_params["action"]
        actions = {
            "renew": self.sessions.renew,
            "stop": self.sessions.stop,
            "clear": lambda s: (self.preview.store.clear(s), self.sessions.get(s))[1],
        }
        if action == "delete":
            await asyncio.to_thread(self.sessions.delete, sid)
            if wants_json(request):
                return json_response({"deleted": sid})
            return RedirectResponse(f"{root(request)}/preview", 303)
        if action in ("mark", "unmark"):
            return await self.mark(request, action == "mark")
        if action not in actions:
            return error(404, f"unknown action {action!r}")
        session = await asyncio.to_thread(actions[action], sid)
        if session is None:
            return error(404, f"no preview session {sid!r}")
        response = json_response(self.session_json(request, session))
        if (
            action == "renew"
            and self.sessions.verify(request.cookies.get("tagserver_preview", "")) == sid
        ):
            self._set_mark(request, response, session)  # keep the browser marked as long
        return response

    async def mark(self, request: Request, on: bool) -> Response:
        """(Un)mark this browser: its hits to this server are previewed while the cookie lives."""
        session = await self.session_or_404(request)
        if isinstance(session, Response):
            return session
        if on and not session.live():
            return error(409, "this session has expired or was stopped: renew it first")
        response = json_response({**self.session_json(request, session), "marked": on})
        if on:
            self._set_mark(request, response, session)
        else:
            secure = self.context(request).is_https
            response.delete_cookie(
                "tagserver_preview", path="/", httponly=True, secure=secure,
                samesite="none" if secure else "lax",
            )  # fmt: skip
        return response

    def _set_mark(self, request: Request, response: Response, session: PreviewSession) -> None:
        # sent by the collector's credentialed requests from the site: SameSite=None needs
        # Secure, so on plain http (local tests) Lax, which same-site requests still carry
        secure = self.context(request).is_https
        response.set_cookie(
            "tagserver_preview",
            session.token,
            max_age=max(1, session.remaining()),
            path="/",
            httponly=True,
            secure=secure,
            samesite="none" if secure else "lax",
        )

    async def stream(self, request: Request) -> Response:
        session = await self.session_or_404(request)
        if isinstance(session, Response):
            return session
        raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
        after = int(raw) if raw.isdigit() else 0
        if after > await asyncio.to_thread(self.preview.store.cursor):
            after = 0  # the store was emptied (restart, Redis flush): resend, the page de-dups
        return StreamingResponse(
            self._events(session, after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def _events(self, session: PreviewSession, after: int) -> AsyncIterator[bytes]:
        preview, store = self.preview, self.preview.store
        yield b"retry: 1000\n\n"
        started = last_beat = last_state = time.monotonic()
        state = (session.expires, session.stopped)
        while not preview.stopping and time.monotonic() - started < STREAM_SECONDS:
            changed = preview.changed()
            try:
                entries = await asyncio.to_thread(store.changes, session.id, after)
            except Exception:
                entries = []
            for entry in entries:
                after = max(after, entry["seq"])
                yield sse(entry["kind"], entry, entry["seq"])
            now = time.monotonic()
            if now - last_state > 2:  # renewed, stopped or deleted in another tab or worker
                last_state = now
                current = await asyncio.to_thread(self.sessions.get, session.id)
                if current is None:
                    yield sse("gone", {"id": session.id})
                    return
                if (current.expires, current.stopped) != state:
                    state = (current.expires, current.stopped)
                    yield sse("session", {"expires": current.expires, "stopped": current.stopped,
                                          "live": current.live(), "token": current.token})  # fmt: skip
            if now - last_beat > HEARTBEAT_SECONDS:
                last_beat = now
                yield b": keep-alive\n\n"
            if len(entries) < 200:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), POLL_SECONDS)


def sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return head.encode() + b"data: " + orjson.dumps(data, default=str) + b"\n\n"


def same_origin(request: Request, context: Callable[[Request], RequestContext]) -> bool:
    """A POST must come from a preview page itself (the SameSite=Strict cookie is the first
    guard; this is the second). Browsers say so in Sec-Fetch-Site; with our no-referrer
    policy their Origin is "null", so Origin is only compared when it is a real one."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return True  # not a browser, or one that only says "null": the cookie guards
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return netloc == context(request).host


def safe_next(value: str | None) -> str:
    """Only a path inside /preview: never an open redirect."""
    if value and value.startswith("/preview") and "//" not in value and "\\" not in value:
        return value
    return "/preview"


def curl(origin: str, example: Example | None, token: str) -> str:
    """A curl command that sends a hit marked for the session: the client's example, else a
    bare request to the site's root (unclaimed, yet recorded)."""
    preview = shlex.quote(f"X-Tagserver-Preview: {token}")
    if example is None:
        return f"curl {shlex.quote(origin + '/')} \\\n  -H {preview}"
    lines = [f"curl -X {example.method} {shlex.quote(origin + example.path)}"]
    lines += [f"  -H {shlex.quote(f'{name}: {value}')}" for name, value in example.headers]
    lines.append(f"  -H {preview}")
    if example.body:
        lines.append(f"  -d {shlex.quote(example.body)}")
    return " \\\n".join(lines)


def preview_routes(preview: Preview, server: Server) -> list[BaseRoute]:
    v = Views(preview, server)
    op = v.operator
    return [
        Route("/preview", op(v.index, page=True), methods=["GET"]),
        Route("/preview/", op(v.index, page=True), methods=["GET"]),
        Route("/preview/login", v.secured(v.login_page), methods=["GET"]),
        Route("/preview/login", v.secured(v.login), methods=["POST"]),
        Route("/preview/logout", op(v.logout), methods=["POST"]),
        Route("/preview/sessions", op(v.start_session), methods=["POST"]),
        Route("/preview/s/{sid}", op(v.session_page, page=True), methods=["GET"]),
        Route("/preview/s/{sid}/{action}", op(v.api_action), methods=["POST"]),
        Route("/preview/api/sessions", op(v.api_sessions), methods=["GET"]),
        Route("/preview/api/container", op(v.api_container), methods=["GET"]),
        Route("/preview/api/s/{sid}", op(v.api_session), methods=["GET"]),
        Route("/preview/api/s/{sid}/hits", op(v.api_hits), methods=["GET"]),
        Route("/preview/api/s/{sid}/hits/{trace_id}", op(v.api_hit), methods=["GET"]),
        Route("/preview/api/s/{sid}/stream", op(v.stream), methods=["GET"]),
        Route("/preview/{rest:path}", v.secured(not_found), methods=["GET", "POST"]),
    ]


async def not_found(request: Request) -> Response:
    return error(404, f"no preview page {request.url.path}")


__all__ = ["preview_routes"]
