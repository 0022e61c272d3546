"""The one `httpx.AsyncClient` every sender shares, configured for many small vendor requests.

Senders speak httpx; the bytes go through aiohttp (`httpx-aiohttp`'s transport). On this
kind of machine one small webhook request cost ~0.9 ms of CPU through httpx's default stack
(httpcore over anyio) and about a third of that through aiohttp, and that CPU is taken from
the event loop that answers hits (bench/bench_drain.py).

It keeps no cookies: a server-to-server sender must not carry one vendor answer's cookies into
the next request (to that vendor or, by domain matching, another): neither httpx nor
aiohttp keeps any (`NoCookies`, `DummyCookieJar`).
"""

from __future__ import annotations

from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from .._compat import release_response

MAX_CONNECTIONS = 200
KEEPALIVE_SECONDS = 5.0

# aiohttp's errors as httpx names them. httpx-aiohttp's own table turns a refused connection
# or a dropped one into ConnectTimeout, which would tell an operator "slow" for "down".
ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (aiohttp.ClientConnectorError, httpx.ConnectError),  # refused, unreachable, DNS, TLS setup
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),  # not HTTP
    (aiohttp.ClientOSError, httpx.ReadError),  # reset by peer
)


class VendorTransport(AiohttpTransport):
    """`AiohttpTransport` with the error names above."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except httpx.TransportError as exc:
            cause = exc.__cause__
            if isinstance(cause, aiohttp.ServerTimeoutError):
                raise  # a timeout, named as such
            for aiohttp_error, httpx_error in ERRORS:
                if isinstance(cause, aiohttp_error):
                    raise httpx_error(str(cause), request=request) from cause
            raise


def forget_stream(response: httpx.Response) -> None:
    """Let a closed response be freed as soon as its sender drops it (not by the garbage
    collector, whose pauses stall hits too: `_compat.release_response`)."""
    release_response(response)


class NoCookies(httpx.Cookies):
    """Keeps no cookie, and does not look for one: httpx reads every answer's `Set-Cookie`
    through urllib's cookie machinery (~35 µs per request) even when the jar's policy
    refuses them all (it still does, should anything else put one in)."""

    def __init__(self) -> None:
        super().__init__(CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])))

    def extract_cookies(self, response: httpx.Response) -> None:
        pass


class VendorClient(httpx.AsyncClient):
    """`httpx.AsyncClient` with no cookies (above) and whose read answers are freed by
    reference counting (`forget_stream`; a sender that asks for `stream=True` calls it after
    `aclose()` itself)."""

    _no_cookies = NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        if cookies:
            raise ValueError("the vendor client keeps no cookies")

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        response = await super().send(request, **kwargs)
        if not kwargs.get("stream"):
            forget_stream(response)  # read and closed by httpx already
        return response


def vendor_client(timeout: float) -> httpx.AsyncClient:
    """Timeouts from the settings, a bounded pool, no redirects followed, no cookies kept."""

    def session() -> aiohttp.ClientSession:  # made on first use, inside the running loop
        connector = aiohttp.TCPConnector(
            limit=MAX_CONNECTIONS,
            keepalive_timeout=KEEPALIVE_SECONDS,
            ssl=httpx.create_ssl_context(),
        )
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    return VendorClient(
        transport=VendorTransport(client=session),
        timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
        headers={"User-Agent": "tagserver"},
        follow_redirects=False,
    )
