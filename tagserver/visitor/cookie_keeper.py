"""The cookie keeper: other tools' cookies re-set by the server with a long lifetime.

Browsers cap cookies written by scripts (Safari: 7 days, or 24 hours after a click with
tracking parameters); a cookie set with `Set-Cookie` by the site's own server is not capped
that way. The keeper takes cookies the browser sends with a hit — `_ga`, `_gcl_aw`, `_ttp` …,
written by gtag.js or a pixel — and sets each again, same value, on the hit's response:

    "cookie_keeper": {"cookies": ["_ga", "_ga_*", "_gcl_aw", "_ttp"], "max_age_days": 395}

Off unless the container has a non-empty list. An entry is a name, a prefix ending in `*`,
or `{"name": …, "consent": "ad_storage" | "analytics_storage" | "none"}`; without one, Google
Analytics' cookies (`_ga`, `_ga_*`, `_gid`) need `analytics_storage` and every other cookie
`ad_storage`: a denied consent means the cookie is not re-set (and not deleted). Only cookies
that reach the tagging host can be kept (set on the registrable domain, not host-only on
`www`), and they are re-set with tagserver's attributes (`Domain` of the registrable domain,
`Path=/`, `SameSite=Lax`, `Secure` on HTTPS, never HttpOnly), whatever they had before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..event import RequestContext
from .consent import consent_denied

__all__ = ["CookieKeeper", "compile_keeper", "problems", "SCHEMA"]

DEFAULT_MAX_AGE_DAYS = 395  # 13 months
MAX_AGE_DAYS_LIMIT = 400  # browsers cap any cookie at 400 days
MAX_KEPT = 30  # cookies re-set per response, at most
MAX_VALUE = 4000
CONSENTS = ("ad_storage", "analytics_storage", "none")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}\*?")
# RFC 6265 cookie-octet: a value with anything else is not re-set (it could not round-trip)
_VALUE = re.compile(r"[\x21\x23-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]{1,4000}")
_ANALYTICS = ("_ga", "_gid")

SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Other tools' cookies the server re-sets with a long lifetime (off when "
    "the list is empty); see docs/collector.md#cookie-keeper",
    "additionalProperties": False,
    "properties": {
        "cookies": {
            "type": "array",
            "items": {
                "anyOf": [
                    {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,100}\*?$"},
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,100}\*?$"},
                            "consent": {"enum": list(CONSENTS)},
                        },
                    },
                ]
            },
        },
        "max_age_days": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_AGE_DAYS_LIMIT,
            "default": DEFAULT_MAX_AGE_DAYS,
        },
    },
}


@dataclass(frozen=True)
class Rule:
    name: str  # without the `*`
    prefix: bool
    consent: str  # ad_storage | analytics_storage | none

    def matches(self, cookie: str) -> bool:
        return cookie.startswith(self.name) if self.prefix else cookie == self.name


@dataclass(frozen=True)
class CookieKeeper:
    rules: tuple[Rule, ...]
    max_age_days: int

    def keep(
        self,
        request: RequestContext,
        consent: Any,
        attrs: str,
        already_set: set[str],
        actions: dict[str, str],
    ) -> list[str]:
        """Set-Cookie values for the kept cookies this request carries; `actions` gets what
        happened to each (for preview)."""
        out: list[str] = []
        max_age = self.max_age_days * 86400
        for name, value in request.cookies.items():
            if name in already_set:
                continue
            rule = next((r for r in self.rules if r.matches(name)), None)
            if rule is None:
                continue
            if rule.consent != "none" and consent_denied(consent, rule.consent):
                actions[name] = f"not kept: {rule.consent} denied"
                continue
            if not _VALUE.fullmatch(value):
                actions[name] = "not kept: value cannot be re-set as is"
                continue
            if len(out) >= MAX_KEPT:
                actions[name] = f"not kept: more than {MAX_KEPT} cookies"
                continue
            out.append(f"{name}={value}; Max-Age={max_age}{attrs}")
            actions[name] = "kept by the cookie keeper"
        return out


def compile_keeper(data: Any) -> CookieKeeper | None:
    """The keeper of a validated `cookie_keeper` object; None when off."""
    if not isinstance(data, dict) or not data.get("cookies"):
        return None
    rules = []
    for entry in data["cookies"]:
        name, consent = (
            (entry, None) if isinstance(entry, str) else (entry["name"], entry.get("consent"))
        )
        prefix = name.endswith("*")
        bare = name.rstrip("*")
        if consent is None:
            consent = "analytics_storage" if bare.startswith(_ANALYTICS) else "ad_storage"
        rules.append(Rule(bare, prefix, consent))
    return CookieKeeper(tuple(rules), int(data.get("max_age_days", DEFAULT_MAX_AGE_DAYS)))


def problems(data: Any) -> list[tuple[str, str]]:
    """(path, message) for each problem of a `cookie_keeper` object."""
    base = "cookie_keeper"
    if not isinstance(data, dict):
        return [(base, "must be an object")]
    out = []
    for key in data:
        if key not in ("cookies", "max_age_days"):
            out.append((f"{base}.{key}", f'unknown field "{key}" (known: cookies, max_age_days)'))
    cookies = data.get("cookies", [])
    if not isinstance(cookies, list):
        out.append((f"{base}.cookies", "must be a list of cookie names"))
        cookies = []
    for i, entry in enumerate(cookies):
        path = f"{base}.cookies[{i}]"
        name = entry.get("name") if isinstance(entry, dict) else entry
        if isinstance(entry, dict):
            for key in entry:
                if key not in ("name", "consent"):
                    out.append((f"{path}.{key}", f'unknown field "{key}" (known: name, consent)'))
            if entry.get("consent", "none") not in CONSENTS:
                out.append((f"{path}.consent", f"must be one of {', '.join(CONSENTS)}"))
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name == "*":
            out.append((path, "must be a cookie name (letters, digits, _ . -), optionally "
                        "ending in * for a prefix"))  # fmt: skip
    age = data.get("max_age_days", DEFAULT_MAX_AGE_DAYS)
    if isinstance(age, bool) or not isinstance(age, int) or not 1 <= age <= MAX_AGE_DAYS_LIMIT:
        out.append(
            (f"{base}.max_age_days", f"must be a whole number of days, 1 to {MAX_AGE_DAYS_LIMIT}")
        )
    return out
