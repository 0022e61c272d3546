"""Geography of a hit: country, region, city and postal code, for match keys and variables.

Two sources, both local (the hot path does no network I/O):

1. **Headers a trusted proxy adds** (Cloudflare `CF-IPCountry` and its visitor-location
   headers, Google's `X-Appengine-Country/Region/City`, CloudFront's `CloudFront-Viewer-*`,
   Vercel's `X-Vercel-IP-*`; the names are settings). They count only when the request's
   direct peer is a trusted proxy (`TAGSERVER_TRUSTED_PROXIES`): anyone else could send them.
2. **A MaxMind-format database file** (`TAGSERVER_GEO_DATABASE`, GeoIP2/GeoLite2 City or
   Country, or any `.mmdb` with the same fields), looked up with the client's IP. It fills
   what the headers did not give, and only when it agrees on the country (a city from one
   country beside a country from another would match nobody).

Values are as the source gives them (`US`, `CA` or `California`, `Mountain View`, `94043`):
a tag normalizes and hashes them with its vendor's rules, like any other customer data.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

from ..settings import Settings

log = logging.getLogger("tagserver.geo")

FIELDS = ("country", "region", "city", "postal_code")
# values a CDN sends when it does not know (Cloudflare: XX unknown, T1 Tor; EU/AP: continents)
_UNKNOWN = frozenset({"", "xx", "t1", "zz", "a1", "a2", "o1", "eu", "ap", "unknown", "-"})
MAX_VALUE = 100


@dataclass(frozen=True)
class Geography:
    country: str | None = None  # ISO 3166-1 alpha-2, upper case
    region: str | None = None  # a subdivision code (ISO 3166-2 without the country) or name
    city: str | None = None
    postal_code: str | None = None
    source: str = ""  # "headers", "database", "headers+database" or "" when nothing is known

    def as_dict(self) -> dict[str, str]:
        """The fields that have a value."""
        if self is NOWHERE:  # no proxy's headers and no database: most hits, every tag
            return {}
        return {f: v for f in FIELDS if (v := getattr(self, f))}


NOWHERE = Geography()


def locate(headers: dict[str, str], peer_ip: str, client_ip: str, settings: Settings) -> Geography:
    """The hit's geography from a trusted proxy's headers, then the database file."""
    found: dict[str, str] = {}
    table, names = _config(
        settings.geo_country_headers,
        settings.geo_region_headers,
        settings.geo_city_headers,
        settings.geo_postal_code_headers,
    )
    if not names.isdisjoint(headers) and settings.is_trusted_proxy(peer_ip):
        for field, candidates in table:
            for name in candidates:
                raw = headers.get(name)
                if raw:
                    value = _clean(raw, field)
                    if value:
                        found[field] = value
                        break
    source = "headers" if found else ""
    if settings.geo_database and len(found) < len(FIELDS):
        looked_up = database(settings.geo_database).lookup(client_ip)
        if looked_up and (not found.get("country") or looked_up.get("country") == found["country"]):
            added = {k: v for k, v in looked_up.items() if k not in found}
            if added:
                found.update(added)
                source = "headers+database" if source else "database"
    if not found:
        return NOWHERE
    return Geography(
        found.get("country"), found.get("region"), found.get("city"), found.get("postal_code"),
        source,
    )  # fmt: skip


def of_ip(ip: str, settings: Settings) -> Geography:
    """The geography of an address other than the request's (an event's own `ip_override`,
    sent server to server): the database only, since headers describe the request's client."""
    if not settings.geo_database or not ip:
        return NOWHERE
    found = database(settings.geo_database).lookup(ip)
    if not found:
        return NOWHERE
    return Geography(
        found.get("country"), found.get("region"), found.get("city"), found.get("postal_code"),
        "database",
    )  # fmt: skip


def _clean(raw: str | None, field: str) -> str | None:
    """A header value as text: percent-decoded (Vercel, CloudFront), UTF-8 mis-read as
    Latin-1 repaired (Cloudflare sends city names as raw UTF-8), blanks and unknowns dropped."""
    if not raw:
        return None
    value = raw.strip()
    if "%" in value:
        value = unquote(value)
    if not value.isascii():
        with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
            value = value.encode("latin-1").decode("utf-8")
    if value.lower() in _UNKNOWN or len(value) > MAX_VALUE:
        return None
    if field == "country":
        return value.upper() if len(value) == 2 and value.isalpha() else None
    if field == "region" and "-" in value and len(value) <= 6:  # "US-CA" → "CA"
        value = value.split("-", 1)[1]
    return value


# -- header names (settings) ------------------------------------------------------------------


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip().lower() for n in text.split(",") if n.strip())


@lru_cache(maxsize=8)
def _config(*lists: str) -> tuple[tuple[tuple[str, tuple[str, ...]], ...], frozenset[str]]:
    """(field, header names) pairs and every name, from the four settings (once)."""
    table = tuple(zip(FIELDS, (_names(text) for text in lists), strict=True))
    return table, frozenset(n for _, names in table for n in names)


# -- the database file ------------------------------------------------------------------------


class Database:
    """A MaxMind-format file, opened once per process and path, read with `maxminddb`.

    A missing or broken file is logged once and then gives nothing: geography is an addition,
    never a reason to refuse hits."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.reader: Any = None
        try:
            import maxminddb

            self.reader = maxminddb.open_database(path)
        except Exception as exc:  # missing file, not a database, module absent
            log.warning("geo database %s not used: %s: %s", path, type(exc).__name__, exc)

    def lookup(self, ip: str) -> dict[str, str]:
        if self.reader is None or not ip:
            return {}
        return _cached_lookup(self, ip)

    def _read(self, ip: str) -> dict[str, str]:
        try:
            record = self.reader.get(ip)
        except (ValueError, TypeError):  # not an IP, or IPv6 in an IPv4-only file
            return {}
        if not isinstance(record, dict):
            return {}
        return from_record(record)


def from_record(record: dict[str, Any]) -> dict[str, str]:
    """Country, region, city and postal code from a GeoIP2-shaped record."""
    out: dict[str, str] = {}
    country = record.get("country")
    if isinstance(country, dict):
        code = _clean(country.get("iso_code"), "country")
        if code:
            out["country"] = code
    subdivisions = record.get("subdivisions")
    if isinstance(subdivisions, list) and subdivisions and isinstance(subdivisions[0], dict):
        first = subdivisions[0]
        region = first.get("iso_code") or _english(first.get("names"))
        if isinstance(region, str) and region.strip():
            out["region"] = region.strip()
    city = (
        _english((record.get("city") or {}).get("names"))
        if isinstance(record.get("city"), dict)
        else None
    )
    if city:
        out["city"] = city
    postal = record.get("postal")
    if isinstance(postal, dict) and isinstance(postal.get("code"), str) and postal["code"].strip():
        out["postal_code"] = postal["code"].strip()
    return out


def _english(names: Any) -> str | None:
    if isinstance(names, dict):
        name = names.get("en") or next(iter(names.values()), None)
        if isinstance(name, str) and name.strip():
            return name.strip()
    return None


_databases: dict[str, Database] = {}
_lock = threading.Lock()


def database(path: str) -> Database:
    found = _databases.get(path)
    if found is None:
        with _lock:
            found = _databases.get(path)
            if found is None:
                found = _databases[path] = Database(path)
    return found


@lru_cache(maxsize=8192)
def _cached_lookup(db: Database, ip: str) -> dict[str, str]:
    """Visitors send many hits from one address: each is looked up once (bounded)."""
    return db._read(ip)
