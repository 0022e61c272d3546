"""The event model: common event data (a plain dict) and the read-only request context.

Events are dicts keyed with sGTM's common event data names (`event_name`, `client_id`,
`ip_override`, `user_data.email_address`, ...) so that a marketer's knowledge carries over.
`RequestContext` is what the hit's HTTP request looked like, computed once per request.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any
from urllib.parse import urlsplit

from user_agents import parse as parse_user_agent

from .settings import Settings
from .visitor.geo import NOWHERE, Geography, locate
from .visitor.identity_cookie import COOKIE, NOTHING, Remembered, read

Event = dict[str, Any]

COMMON_KEYS = (
    "event_name", "event_id", "event_time", "client_id", "ip_override", "user_agent",
    "page_location", "page_referrer", "page_title", "page_hostname", "page_path", "language",
    "screen_resolution", "user_id", "value", "currency", "items", "transaction_id",
    "search_term", "user_data", "consent", "action_source",
)  # fmt: skip

CONSENT_TYPES = ("ad_storage", "analytics_storage", "ad_user_data", "ad_personalization")

# what a trusted proxy in front of us may tell about the client (see `_forwarded`)
FORWARDED_HEADERS = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})


def get_path(data: Any, path: str | tuple[str, ...], default: Any = None) -> Any:
    """Read `a.b.0.c` from nested dicts/lists; `default` when any step is missing."""
    parts = path.split(".") if isinstance(path, str) else path
    for part in parts:
        if isinstance(data, dict):
            if part not in data:
                return default
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return default
    return data


def add_page_parts(event: Event) -> None:
    """Derive `page_hostname` and `page_path` from `page_location` when a client did not."""
    location = event.get("page_location")
    if not isinstance(location, str) or not location:
        return
    if "page_hostname" in event and "page_path" in event:
        return
    parts = page_parts(location)
    if parts is not None:
        event.setdefault("page_hostname", parts[0])
        event.setdefault("page_path", parts[1])


@lru_cache(maxsize=4096)
def page_parts(location: str) -> tuple[str, str] | None:
    """(hostname, path) of a page URL; a site's hits come from the same few pages."""
    try:
        parts = urlsplit(location)
        return parts.hostname or "", parts.path or "/"
    except ValueError:
        return None


@dataclass(frozen=True)
class UserAgentInfo:
    browser: str
    os: str
    device_type: str  # mobile | tablet | desktop | bot
    is_bot: bool


NO_USER_AGENT = UserAgentInfo(browser="", os="", device_type="", is_bot=False)
"""What an event without a user agent is: unknown, and not a bot."""


@lru_cache(maxsize=4096)
def user_agent_info(header: str) -> UserAgentInfo:
    """Parsing a user agent costs ~0.1 ms; the same few strings repeat, so cache them."""
    if not header:
        return NO_USER_AGENT
    ua = parse_user_agent(header)
    if ua.is_bot:
        device = "bot"
    elif ua.is_tablet:
        device = "tablet"
    elif ua.is_mobile:
        device = "mobile"
    else:
        device = "desktop"
    return UserAgentInfo(
        browser=ua.browser.family or "Other",
        os=ua.os.family or "Other",
        device_type=device,
        is_bot=bool(ua.is_bot),
    )


@dataclass
class RequestContext:
    """What the hit's request looked like. Built once per request; tags must not change it."""

    method: str
    url: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    cookies: dict[str, str]
    ip: str
    is_https: bool
    host: str
    body: bytes = b""
    received_at: float = field(default_factory=time.time)
    client_name: str = ""
    is_visitor: bool = True  # the request's IP and User-Agent are the visitor's (see Client)
    peer_ip: str = ""  # the direct peer (a proxy, when one is in front); `ip` is the client's
    settings: Settings | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_scope(
        cls,
        *,
        method: str,
        url: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        cookies: dict[str, str],
        peer_ip: str,
        scheme: str,
        settings: Settings,
        body: bytes = b"",
    ) -> RequestContext:
        ip, is_https, host = peer_ip, scheme == "https", headers.get("host", "")
        if not FORWARDED_HEADERS.isdisjoint(headers):
            ip, is_https, host = _forwarded(headers, peer_ip, is_https, host, settings)
        if "," in host or " " in host:
            host = host.split(",")[0].strip()
        return cls(
            method, url, path, query, headers, cookies, ip, is_https, host, body, time.time(),
            "", True, peer_ip, settings,
        )  # fmt: skip

    @classmethod
    def empty(cls, method: str = "", url: str = "") -> RequestContext:
        """The context of events that came with no HTTP request (a file import, a container
        being compiled): no address, no headers, no cookies."""
        return cls(method, url, "", {}, {}, {}, "", False, "")

    @property
    def user_agent(self) -> str:
        return self.headers.get("user-agent", "")

    @cached_property
    def ua(self) -> UserAgentInfo:
        return user_agent_info(self.user_agent)

    @cached_property
    def geo(self) -> Geography:
        """Where the visitor is, from a trusted proxy's headers or the geo database (see
        `tagserver.visitor.geo`); worked out on first use, once per hit."""
        if self.settings is None:
            return NOWHERE
        return locate(self.headers, self.peer_ip, self.ip, self.settings)

    @cached_property
    def identity(self) -> Remembered:
        """The visitor's remembered match keys (the encrypted identity cookie, see
        `tagserver.visitor.identity_cookie`); opened on first use, once per hit."""
        if self.settings is None or COOKIE not in self.cookies:
            return NOTHING
        return read(self.cookies, self.settings, self.received_at)

    @property
    def hostname(self) -> str:
        """The Host header without its port (IPv6 brackets kept off)."""
        host = self.host
        if host.startswith("["):
            return host[1 : host.find("]")] if "]" in host else host
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host

    @cached_property
    def hit_id(self) -> str:
        """A fingerprint of the request: the same hit, resent, gets the same id."""
        query = _sorted_query(self.query) if self.query else ""
        head = f"{self.method}\0{self.path}\0{query}\0{self.ip}\0"
        return hashlib.sha256(head.encode("utf-8", "surrogatepass") + self.body).hexdigest()[:32]

    def derived_event_id(self, index: int) -> str:
        """Deterministic id for the index-th event of this hit when the sender gave none."""
        return f"{self.hit_id[:24]}.{index}"


def _forwarded(
    headers: dict[str, str], peer_ip: str, is_https: bool, host: str, settings: Settings
) -> tuple[str, bool, str]:
    """Client address, HTTPS and host as a trusted proxy in front of us reports them."""
    if not settings.is_trusted_proxy(peer_ip):
        return peer_ip, is_https, host
    ip = _client_ip_from_forwarded(headers.get("x-forwarded-for", ""), peer_ip, settings)
    proto = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    if proto:
        is_https = proto == "https"
    return ip, is_https, headers.get("x-forwarded-host") or host


def _sorted_query(query: dict[str, str]) -> str:
    return "&".join(f"{k}={v}" for k, v in sorted(query.items()) if k != "tagserver_preview")


def _client_ip_from_forwarded(header: str, peer_ip: str, settings: Settings) -> str:
    """The right-most address in X-Forwarded-For that is not one of our trusted proxies."""
    hops = [h.strip() for h in header.split(",") if h.strip()]
    for hop in reversed(hops):
        if hop.startswith("[") and "]" in hop:
            hop = hop[1 : hop.index("]")]
        elif hop.count(":") == 1:  # IPv4 with a port
            hop = hop.split(":", 1)[0]
        if not settings.is_trusted_proxy(hop):
            return hop if _is_ip(hop) else peer_ip
    return hops[0] if hops and _is_ip(hops[0]) else peer_ip


def _is_ip(value: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
