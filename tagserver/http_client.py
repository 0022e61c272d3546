"""The one `httpx.AsyncClient` every sender shares, configured for many small vendor requests.

It keeps no cookies: a server-to-server sender must not carry one vendor answer's cookies into
the next request (to that vendor or, by domain matching, another). The jar's policy refuses
every cookie, so nothing is ever stored or sent back.
"""

from __future__ import annotations

from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx


def vendor_client(timeout: float) -> httpx.AsyncClient:
    """Timeouts from the settings, a bounded pool, no redirects followed, no cookies kept."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        headers={"User-Agent": "tagserver"},
        follow_redirects=False,
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
    )
