"""What the server serves to sites' browsers besides hits: `collector.js` and the `/demo` shop.

`collector.js` is served at `/collector.js` and, when `TAGSERVER_COLLECTOR_PATH` is set, at that
path too (a name ad blockers do not know). The file is read once, its full-line comments and
indentation are dropped, and a gzipped copy is kept, so every request is a memory copy with an
ETag (304 on revalidation) and a short public cache lifetime so updates reach browsers quickly.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from ..settings import Settings

if TYPE_CHECKING:
    from jinja2 import Environment

    from ..container.model import Container

SCRIPT_CACHE_SECONDS = 3600
_COMMENT_LINE = re.compile(r"^\s*//.*\n", re.MULTILINE)
_INDENT = re.compile(r"^[ \t]+", re.MULTILINE)


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    etag: str
    media_type: str


def compact_js(source: str) -> str:
    """Drop full-line `//` comments and indentation: safe for our own script, halves its size."""
    return _INDENT.sub("", _COMMENT_LINE.sub("", source))


ROOT_PLACEHOLDER = "var root = '';"


@lru_cache(maxsize=4)
def collector_script(root_path: str = "") -> Asset:
    """The script, with the server's root path written in (its hits go to `<root>/collect`)."""
    source = (files("tagserver.static") / "collector.js").read_text("utf-8")
    if source.count(ROOT_PLACEHOLDER) != 1:
        raise RuntimeError(f"collector.js must contain {ROOT_PLACEHOLDER!r} exactly once")
    source = source.replace(ROOT_PLACEHOLDER, f"var root = {json.dumps(root_path)};")
    body = compact_js(source).encode("utf-8")
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    return Asset(body, gzip.compress(body, 9, mtime=0), etag, "text/javascript; charset=utf-8")


def serve(asset: Asset, request: Request) -> Response:
    headers = {
        "ETag": asset.etag,
        "Cache-Control": f"public, max-age={SCRIPT_CACHE_SECONDS}",
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
    }
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    body = asset.body
    if "gzip" in request.headers.get("accept-encoding", "").lower():
        body, headers["Content-Encoding"] = asset.gzipped, "gzip"
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(body))
        return Response(b"", headers=headers, media_type=asset.media_type)
    return Response(body, headers=headers, media_type=asset.media_type)


def collector_endpoint(root_path: str) -> Callable[[Request], Awaitable[Response]]:
    """`collector.js` as served under `root_path` (TAGSERVER_ROOT_PATH)."""

    async def collector_js(request: Request) -> Response:
        return serve(collector_script(root_path), request)

    return collector_js


@lru_cache(maxsize=1)
def _templates() -> Environment:
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(
        loader=PackageLoader("tagserver", "templates"), autoescape=select_autoescape(["html"])
    )


def demo_page(
    container: Callable[[], Container], root_path: str = ""
) -> Callable[[Request], Awaitable[Response]]:
    """The demo shop, posting to the live container's first client that takes the script's
    hits (the container changes on reload: asked at each request), under the root path."""

    async def demo(request: Request) -> Response:
        current = container()
        endpoints = (client.script_endpoint() for client in current.clients)
        collect_path = next((path for path in endpoints if path), None)
        html = (
            _templates()
            .get_template("demo.html")
            .render(collect_path=collect_path, container=current.name, root=root_path)
        )
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    return demo


def routes(settings: Settings, container: Callable[[], Container]) -> list[BaseRoute]:
    """The routes for `builtin_routes`: the script (one or two paths) and the demo page."""
    collector_js = collector_endpoint(settings.root_path)
    out: list[BaseRoute] = [Route("/collector.js", collector_js, methods=["GET", "HEAD"])]
    extra = settings.collector_path.strip()
    if extra and extra != "/collector.js":
        out.append(Route("/" + extra.lstrip("/"), collector_js, methods=["GET", "HEAD"]))
    if settings.demo:
        out.append(
            Route("/demo", demo_page(container, settings.root_path), methods=["GET", "HEAD"])
        )
    return out
