"""First-party visitor cookies set by the server: `_fbp`, `_fbc` and a stable client id.

Cookies set with `Set-Cookie` on a response from the site's own subdomain are first-party,
server-set cookies: Safari does not cap them at 7 days like script-set ones. Every client that
receives browser hits (collector, ga4 ...) uses this one module so the rules stay the same:

    from tagserver.toolkit import cookies

    visitor = cookies.visitor_cookies(
        hit.request, settings,
        page_location=event.get("page_location"),
        consent=event.get("consent"),
        seed=page_id, seed_ms=page_load_ms,   # optional, see "parallel first hits" below
    )
    for event in events:
        event.update(visitor.event_keys())   # x-fb-ck-fbp, x-fb-ck-fbc, client_id
    ...
    cookies.apply(response, visitor)          # adds the Set-Cookie headers

Rules:
- `_fbp` = `fb.{subdomainIndex}.{creationMs}.{random}`: generated when absent or malformed,
  otherwise kept as is (a 5th "appendix" dot-part is accepted) and its expiry refreshed.
- `_fbc` = `fb.{subdomainIndex}.{creationMs}.{fbclid}`: written only when the page URL has an
  `fbclid` and there is no valid `_fbc` or its click id (4th dot-part) differs. The same click id
  never gets a new timestamp; an existing valid `_fbc` is kept and its expiry refreshed. The
  `fbclid` is used exactly as given (case kept); one over 500 characters or with characters
  other than `A-Z a-z 0-9 _ -` is ignored.
- A malformed `_fbp`/`_fbc` cookie is never forwarded: `_fbp` is replaced, `_fbc` is replaced
  when the URL brings a click id and otherwise ignored (left alone: it may belong to another tool).
- The client id cookie (`tagserver_cid` unless a client names another, HttpOnly) holds
  `{random}.{creationSeconds}` (the shape of GA's client id, so GA-bound tags can use it).
- Domain = `settings.cookie_domain` when set (and the host is inside it), else the registrable
  domain (eTLD+1, Public Suffix List, no network); no Domain attribute for IP hosts,
  `localhost` and hosts that are themselves a public suffix. `Path=/`, `SameSite=Lax`, `Secure`
  when the request is HTTPS (X-Forwarded-Proto from trusted proxies is honoured upstream).
  Max-Age: `cookie_max_age_days` for `_fbp`/`_fbc`, `client_id_max_age_days` for the client id.
- Other ad platforms' click ids (see `clickids.py`): TikTok's `ttclid` (and `_ttp` when the
  TikTok pixel has not set one), Pinterest's `epik` → `_epik`, Snapchat's `ScCid` → `_scclid`
  (and its pixel's `_scid`, read only), under the same consent and attributes.
- Consent: when `ad_storage` is denied, `_fbp`/`_fbc` and the click-id cookies are neither set
  nor extended nor read (nothing goes on the event). When `analytics_storage` is denied, the
  same holds for the client id. Consent that is absent or not "denied" counts as granted
  (gtag's default).

Parallel first hits: a new visitor's first hits may arrive at the same time, all without
cookies. Generated values are therefore deterministic for the visitor's first moments: the
random part is an HMAC (key from `settings.signing_key()`) of a `seed` — a value every hit of
one page view shares (the collector script's page id, GA4's client id) — or, without a seed, of
IP + User-Agent + Accept-Language + the current minute; the creation time is `seed_ms` (the
page's load time) when plausible, else the start of the current minute. So parallel hits all
answer with the same `_fbp` and client id, and the last Set-Cookie the browser applies changes
nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from ..event import RequestContext
from ..settings import Settings
from . import clickids
from .clickids import has_click_id
from .consent import consent_denied

if TYPE_CHECKING:
    from publicsuffixlist import PublicSuffixList
    from starlette.responses import Response

    from .cookie_keeper import CookieKeeper

__all__ = [
    "CLIENT_ID_COOKIE",
    "VisitorCookies",
    "visitor_cookies",
    "apply",
    "keep_others",
    "has_click_id",
    "cookie_domain",
    "registrable_domain",
    "consent_denied",
]

FBP_COOKIE = "_fbp"
FBC_COOKIE = "_fbc"
CLIENT_ID_COOKIE = "tagserver_cid"

MAX_FBCLID = 500
WINDOW_MS = 60_000  # without a seed, generated values are stable for this long
SEED_PAST_MS = 86_400_000  # a seed_ms older than a day is not believed
SEED_FUTURE_MS = 600_000  # nor one more than 10 minutes ahead (clock skew)

_APPENDIX = r"(?:\.[A-Za-z0-9_-]{1,64})?"
FBP_RE = re.compile(r"fb\.\d{1,2}\.\d{1,13}\.\d{1,20}" + _APPENDIX)
FBC_RE = re.compile(r"fb\.\d{1,2}\.\d{1,13}\.([A-Za-z0-9_-]{1,500})" + _APPENDIX)
FBCLID_RE = re.compile(r"[A-Za-z0-9_-]{1,500}")
CLIENT_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
SEED_RE = re.compile(r"[A-Za-z0-9._:-]{8,128}")


@dataclass
class VisitorCookies:
    """The visitor's resolved ids for this hit, and the Set-Cookie values for the response."""

    fbp: str | None = None
    fbc: str | None = None
    client_id: str | None = None
    click_ids: dict[str, str] = field(default_factory=dict)  # event key → value
    set_cookie: list[str] = field(default_factory=list)
    actions: dict[str, str] = field(default_factory=dict)  # cookie → what happened (preview)

    def event_keys(self) -> dict[str, str]:
        """The keys to put on every event of the hit (only those with a value)."""
        keys = {"x-fb-ck-fbp": self.fbp, "x-fb-ck-fbc": self.fbc, "client_id": self.client_id}
        return {**{k: v for k, v in keys.items() if v}, **self.click_ids}


def visitor_cookies(
    request: RequestContext,
    settings: Settings,
    *,
    page_location: str | None,
    consent: dict[str, Any] | None,
    client_id_cookie: str | None = CLIENT_ID_COOKIE,
    seed: str | None = None,
    seed_ms: int | None = None,
    generate_ttp: bool = False,
) -> VisitorCookies:
    """Resolve `_fbp`, `_fbc` and the client id for one hit; see the module docstring.

    `client_id_cookie=None` leaves the client id alone (a client with its own id, like GA4's
    `cid`). `seed`/`seed_ms` make generated values identical for parallel first hits.
    """
    out = VisitorCookies()
    domain = cookie_domain(request.hostname, settings)
    attrs = _attributes(domain, request.is_https)
    now_ms = int(request.received_at * 1000)
    gen = _Generator(request, settings, seed, seed_ms, now_ms)

    if consent_denied(consent, "ad_storage"):
        out.actions[FBP_COOKIE] = out.actions[FBC_COOKIE] = "not set: ad_storage denied"
    else:
        max_age = settings.cookie_max_age_days * 86400
        index = subdomain_index(domain)
        existing = request.cookies.get(FBP_COOKIE)
        if existing and FBP_RE.fullmatch(existing):
            out.fbp, out.actions[FBP_COOKIE] = existing, "kept"
        else:
            out.fbp = f"fb.{index}.{gen.created_ms}.{gen.number('fbp')}"
            out.actions[FBP_COOKIE] = "replaced malformed" if existing else "generated"
        out.set_cookie.append(_header(FBP_COOKIE, out.fbp, max_age, attrs))

        existing = request.cookies.get(FBC_COOKIE)
        match = FBC_RE.fullmatch(existing) if existing else None
        fbclid = fbclid_from(page_location)
        if fbclid and (match is None or match.group(1) != fbclid):
            out.fbc = f"fb.{index}.{gen.created_ms}.{fbclid}"
            out.actions[FBC_COOKIE] = (
                "from fbclid" if match or not existing else "replaced malformed"
            )
        elif match:
            out.fbc, out.actions[FBC_COOKIE] = existing, "kept"
        elif existing:
            out.actions[FBC_COOKIE] = "ignored malformed"
        if out.fbc:
            out.set_cookie.append(_header(FBC_COOKIE, out.fbc, max_age, attrs))
        clickids.resolve(out, request, settings, page_location, attrs, gen.token, generate_ttp)

    if client_id_cookie:
        if consent_denied(consent, "analytics_storage"):
            out.actions[client_id_cookie] = "not set: analytics_storage denied"
        else:
            existing = request.cookies.get(client_id_cookie)
            if existing and CLIENT_ID_RE.fullmatch(existing):
                out.client_id, out.actions[client_id_cookie] = existing, "kept"
            else:
                out.client_id = f"{gen.number('cid')}.{gen.created_ms // 1000}"
                out.actions[client_id_cookie] = "replaced malformed" if existing else "generated"
            max_age = settings.client_id_max_age_days * 86400
            out.set_cookie.append(
                _header(client_id_cookie, out.client_id, max_age, attrs + "; HttpOnly")
            )
    return out


def keep_others(
    visitor: VisitorCookies,
    request: RequestContext,
    settings: Settings,
    keeper: CookieKeeper | None,
    consent: dict[str, Any] | None,
) -> None:
    """Add the container's cookie keeper's Set-Cookie values (other tools' cookies re-set with
    a long lifetime, see `cookie_keeper.py`) to `visitor`; nothing when the keeper is off."""
    if keeper is None or not request.cookies:
        return
    attrs = _attributes(cookie_domain(request.hostname, settings), request.is_https)
    already = {value.split("=", 1)[0] for value in visitor.set_cookie}
    visitor.set_cookie.extend(keeper.keep(request, consent, attrs, already, visitor.actions))


def apply(response: Response, cookies: VisitorCookies) -> Response:
    """Add the Set-Cookie headers of `cookies` to `response` (returned for chaining)."""
    for value in cookies.set_cookie:
        response.headers.append("set-cookie", value)
    return response


# -- rules --------------------------------------------------------------------------------------


def fbclid_from(page_location: str | None) -> str | None:
    """The first usable `fbclid` of the page URL, exactly as given, or None."""
    if not page_location or "fbclid=" not in page_location:
        return None
    try:
        query = urlsplit(page_location).query
    except ValueError:
        return None
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "fbclid":
            return value if FBCLID_RE.fullmatch(value) else None
    return None


def cookie_domain(hostname: str, settings: Settings) -> str | None:
    """The Domain attribute for cookies set in answer to a request for `hostname`, or None."""
    return _cookie_domain(hostname, settings.cookie_domain)


@lru_cache(maxsize=1024)
def _cookie_domain(hostname: str, setting: str) -> str | None:
    # a site's hits come to one or two host names: worked out once for each
    host = hostname.strip().lower().rstrip(".")
    configured = setting.strip().lower().lstrip(".")
    if configured and (host == configured or host.endswith("." + configured)):
        return configured
    return registrable_domain(host)


@lru_cache(maxsize=1024)
def registrable_domain(host: str) -> str | None:
    """eTLD+1 of `host`; None for IP addresses, localhost and bare public suffixes."""
    if not host or host == "localhost" or host.endswith(".localhost"):
        return None
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    found: str | None = _psl().privatesuffix(host)
    return found


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    from publicsuffixlist import PublicSuffixList  # loads the bundled list once (~50 ms)

    return PublicSuffixList()


def subdomain_index(domain: str | None) -> int:
    """Meta's subdomainIndex: labels of the cookie domain minus one (`example.com` → 1)."""
    return domain.count(".") if domain else 0


def attributes(request: RequestContext, settings: Settings) -> str:
    """The attributes every cookie of this hit's answer gets (`; Domain=...; Path=/ ...`)."""
    return _attributes(cookie_domain(request.hostname, settings), request.is_https)


def _attributes(domain: str | None, secure: bool) -> str:
    attrs = f"; Domain={domain}" if domain else ""
    attrs += "; Path=/; SameSite=Lax"
    return attrs + "; Secure" if secure else attrs


def _header(name: str, value: str, max_age: int, attrs: str) -> str:
    return f"{name}={value}; Max-Age={max_age}{attrs}"


# -- deterministic generation -------------------------------------------------------------------


_keys: dict[tuple[str, str], bytes] = {}


def _key(settings: Settings) -> bytes:
    """A sub-key of the signing key, read once per process (not on every hit)."""
    cache_key = (settings.secret_key, settings.data_dir)
    key = _keys.get(cache_key)
    if key is None:
        key = hmac.new(settings.signing_key().encode(), b"tagserver.cookies", "sha256").digest()
        _keys[cache_key] = key
    return key


class _Generator:
    """Values for new cookies, identical for every hit that shares the seed (or IP+UA+minute).
    Worked out on first use: a returning visitor's hit usually generates nothing."""

    def __init__(
        self,
        request: RequestContext,
        settings: Settings,
        seed: str | None,
        seed_ms: int | None,
        now_ms: int,
    ) -> None:
        self.request, self.settings = request, settings
        self.seed, self.seed_ms = seed, seed_ms
        self.window_start = now_ms - now_ms % WINDOW_MS
        self.now_ms = now_ms

    @cached_property
    def basis(self) -> str:
        seed = self.seed
        if seed and SEED_RE.fullmatch(seed):
            return "seed\0" + seed
        request = self.request
        headers = request.headers
        return "\0".join(
            ("visitor", request.ip, headers.get("user-agent", ""),
             headers.get("accept-language", ""), str(self.window_start))
        )  # fmt: skip

    @cached_property
    def created_ms(self) -> int:
        seed_ms, now_ms = self.seed_ms, self.now_ms
        plausible = (
            isinstance(seed_ms, int)
            and not isinstance(seed_ms, bool)
            and now_ms - SEED_PAST_MS <= seed_ms <= now_ms + SEED_FUTURE_MS
        )
        return seed_ms if plausible and seed_ms is not None else self.window_start

    def number(self, purpose: str) -> int:
        """A 31-bit positive number (the shape of the Pixel's random part)."""
        message = f"{purpose}\0{self.basis}".encode("utf-8", "surrogatepass")
        digest = hmac.new(_key(self.settings), message, hashlib.sha256).digest()
        return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF or 1

    def token(self, purpose: str, size: int) -> str:
        """`size` characters of [A-Za-z0-9] (a 27-character `_ttp`, say)."""
        message = f"{purpose}\0{self.basis}".encode("utf-8", "surrogatepass")
        number = int.from_bytes(hmac.new(_key(self.settings), message, hashlib.sha256).digest())
        chars = []
        for _ in range(size):
            number, rest = divmod(number, 62)
            chars.append(_BASE62[rest])
        return "".join(chars)


_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
