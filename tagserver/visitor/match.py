"""Match quality: fill the match keys an event lacks, and tell what each event gained.

Two sources add keys to what an event carries, for the tags that use them:
- the **identity cookie** (`identity_cookie.py`): the visitor's hashed keys from an earlier
  page, with `ad_user_data` consent;
- **geography** (`geo.py`): country, region, city and postal code from a trusted proxy's
  headers or the geo database.

An event's own data always wins: a key is added only when the event (or the tag's own
`user_data` param) has none. Keys are added to a copy of the event, in sGTM's shape
(`user_data.sha256_email_address`, `user_data.address.city` ...), so a tag reads them exactly
like the event's own: hashed ones pass through hashing, geography is normalized and hashed by
the tag's rules. A tag says which stored hashes it can use (a vendor that normalizes a key
differently, like TikTok's `+` phones, cannot use Meta-style hashes of it).

Then the tag reports which of its keys came from where, and its local match-quality score
with the event's keys alone ("event") and with the added ones ("enriched"): preview and the
events API show it per tag, and three metrics count it (see `record`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from prometheus_client import Counter, Histogram

from .. import metrics
from ..event import Event, RequestContext
from ..plugins import MatchReport, Param
from ..settings import Settings
from ..toolkit import identity
from .cookies import attributes, consent_denied
from .geo import NOWHERE, Geography, of_ip
from .identity_cookie import Stored, hashed_keys, remember

EVENT, IDENTITY_COOKIE, GEOGRAPHY = "event", "identity_cookie", "geography"
PLACE_KEYS = frozenset({"ct", "st", "zp", "country"})
ALL_KEYS = frozenset(identity.HASHED_KEYS)

# the tag params every tag that uses this module declares (its per-tag opt-out)
USE_IDENTITY_COOKIE = Param(
    "use_identity_cookie",
    "boolean",
    default=True,
    description="Fill match keys the event lacks from the visitor's encrypted identity cookie "
    "(kept with ad_user_data consent); false: only the event's own.",
)
USE_GEOGRAPHY = Param(
    "use_geography",
    "boolean",
    default=True,
    description="Fill a missing country, region, city and postal code from a trusted proxy's "
    "geo headers or the geo database; false: never.",
)
PARAMS = (USE_IDENTITY_COOKIE, USE_GEOGRAPHY)


class Gain(NamedTuple):
    """What `enrich` added: shared key (em, ph, ct ...) → its source."""

    added: dict[str, str]


NO_GAIN = Gain({})


# -- filling an event ---------------------------------------------------------------------------


def geography(event: Event, request: RequestContext) -> Geography:
    """Where the event's visitor is. The request's geography (a trusted proxy's headers, the
    database) describes the request's client: it is used when the event's IP is that client's
    (browser hits); an event with another `ip_override` (sent server to server for a
    customer) gets the database's answer for that address, or nothing, and so does an event
    without any (a server-to-server client that does not take the caller's address)."""
    ip = event.get("ip_override")
    if (ip == request.ip and request.is_visitor) or request.settings is None:
        return request.geo
    if not ip or not isinstance(ip, str):  # no customer address: nothing to locate
        return NOWHERE
    return of_ip(ip, request.settings)


def enrich(
    event: Event,
    params: dict[str, Any],
    request: RequestContext,
    accept: frozenset[str] = ALL_KEYS,
    *,
    memo: dict[Any, Any] | None = None,
) -> tuple[Event, Gain]:
    """`event` with the keys it lacks from the identity cookie and geography (a copy; the
    event itself when nothing is added), and what was added.

    `accept`: the stored hashes the tag can use (geography is raw: every tag can). Nothing is
    added when the event denies `ad_user_data`; the cookie is not used when it denies
    `ad_storage` either.

    `memo`: the event's `FireContext.memo`. The tags of one event that read it alike (the same
    event and request, `use_identity_cookie`, `use_geography` and `user_data` param) then
    share what the event and the request give (`_Given`), worked out once."""
    use_cookie = params.get("use_identity_cookie") is not False
    use_geo = params.get("use_geography") is not False
    configured = params.get("user_data")
    given: _Given | None
    if memo is None:
        given = _given(event, request, use_cookie, use_geo, configured)
    else:
        memo_key = ("match.enrich", use_cookie, use_geo)
        seen = memo.get(memo_key)
        if seen is not None and seen[0] is event and seen[1] is request and seen[2] == configured:
            given = seen[3]
        else:
            given = _given(event, request, use_cookie, use_geo, configured)
            memo[memo_key] = (event, request, configured, given)  # holds `event`: no id reuse
    if given is None:
        return event, NO_GAIN
    stored, geo, present, country = given
    added: dict[str, str] = {}
    person: dict[str, Any] = {}
    place: dict[str, Any] = {}
    if stored:
        for key, digest in stored.items():
            if key in present or key not in accept:
                continue
            if key in PLACE_KEYS:
                continue
            person[key] = digest
            added[key] = IDENTITY_COOKIE
        stored_country = stored.get("country")
        if country is None or stored_country is None or stored_country == _hash_cc(country):
            for key in PLACE_KEYS & accept:
                if key not in present and key in stored:
                    place[key] = stored[key]
                    added[key] = IDENTITY_COOKIE
            if country is None and "country" in place:
                country = place["country"]  # a hash: geography must then agree with it
    if geo and not (place and country is None):  # a stored city without a country: no mix
        geo_cc = geo.get("country")
        if country is None or (
            geo_cc is not None and country in (geo_cc.lower(), _hash_cc(geo_cc))
        ):
            for field, key in _GEO_FIELDS:
                value = geo.get(field)
                if value and key not in present and key not in place:
                    place[key] = value
                    added[key] = GEOGRAPHY
    if not added:
        return event, NO_GAIN
    return _with(event, person, place), Gain(added)


class _Given(NamedTuple):
    """What an event and its request give every tag that reads them alike (read-only)."""

    stored: dict[str, str] | None  # the identity cookie's hashes, when the tag may use them
    geo: dict[str, str] | None  # the event's geography, when the tag may use it
    present: set[str]  # the shared keys the event (or the tag's `user_data` param) gives
    country: str | None  # its country, when it names one


def _given(
    event: Event, request: RequestContext, use_cookie: bool, use_geo: bool, configured: Any
) -> _Given | None:
    """None when nothing can be added: consent denies it, or neither source knows anything."""
    consent = event.get("consent")
    if consent and consent_denied(consent, "ad_user_data"):
        return None
    stored = request.identity.keys if use_cookie else None
    if stored and consent and consent_denied(consent, "ad_storage"):
        stored = None
    geo = geography(event, request).as_dict() if use_geo else None
    if not stored and not geo:
        return None
    present, country = _present(event, configured)
    return _Given(stored, geo, present, country)


_GEO_FIELDS = (("country", "country"), ("region", "st"), ("city", "ct"), ("postal_code", "zp"))
# shared key → where it goes in sGTM's user_data (hashed values pass every tag's hashing)
_PERSON_TARGET = {
    "em": "sha256_email_address",
    "ph": "sha256_phone_number",
    "ge": "gender",
    "db": "date_of_birth",
    "external_id": "external_id",
}
_ADDRESS_TARGET = {
    "fn": "sha256_first_name",
    "ln": "sha256_last_name",
    "ct": "city",
    "st": "region",
    "zp": "postal_code",
    "country": "country",
}


_PLAIN = {"em": "email_address", "ph": "phone_number", "fn": "first_name", "ln": "last_name"}
_ALT = {"em": "email", "ph": "phone"}
# where `_present` looks for each shared key: sGTM's name, then the plain and other names
# ("" when there is none), named once rather than per event and tag
_PERSON_FIELDS = tuple(
    (key, (target, _PLAIN.get(key, ""), _ALT.get(key, "")))
    for key, target in _PERSON_TARGET.items()
)
_ADDRESS_FIELDS = tuple(
    (key, (target, _PLAIN.get(key, ""))) for key, target in _ADDRESS_TARGET.items()
)
_PIXEL_FIELDS = tuple((key, "x-fb-ud-" + key) for key in identity.HASHED_KEYS)  # GA4 hits


def _hash_cc(country: str) -> str | None:
    return identity.hash_value("country", country)


def _present(event: Event, configured: Any) -> tuple[set[str], str | None]:
    """The shared keys the event (or the tag's `user_data` param) gives, and its country
    (ISO code, lower case) when it names one."""
    present: set[str] = set()
    country: str | None = None
    if isinstance(configured, dict):
        present.update(k for k, v in configured.items() if v not in (None, "", []))
        if isinstance(configured.get("country"), str):
            country = identity.country(configured["country"])
    ud = event.get("user_data")
    if isinstance(ud, dict):
        for key, (target, plain, alt) in _PERSON_FIELDS:
            if ud.get(target) or ud.get(plain) or ud.get(alt):
                present.add(key)
        addresses = ud.get("address")
        if isinstance(addresses, dict):
            addresses = [addresses]
        if isinstance(addresses, list):
            for address in addresses:
                if not isinstance(address, dict):
                    continue
                for key, (target, plain) in _ADDRESS_FIELDS:
                    if address.get(target) or address.get(plain):
                        present.add(key)
                if country is None and isinstance(address.get("country"), str):
                    country = identity.country(address["country"])
    if event.get("user_id"):
        present.add("external_id")
    for key, name in _PIXEL_FIELDS:
        if event.get(name):
            present.add(key)
    return present, country


def _with(event: Event, person: dict[str, Any], place: dict[str, Any]) -> Event:
    out = dict(event)
    ud = dict(out["user_data"]) if isinstance(out.get("user_data"), dict) else {}
    for key, value in person.items():
        if key in _PERSON_TARGET:
            ud[_PERSON_TARGET[key]] = value
    address = {_ADDRESS_TARGET[k]: v for k, v in person.items() if k in _ADDRESS_TARGET}
    address.update({_ADDRESS_TARGET[k]: v for k, v in place.items()})
    if address:
        given = ud.get("address")
        if isinstance(given, list):
            ud["address"] = [address, *given]
        elif isinstance(given, dict):
            ud["address"] = {**given, **address}
        else:
            ud["address"] = address
    out["user_data"] = ud
    return out


# -- reporting ----------------------------------------------------------------------------------


def report(
    gain: Gain,
    keys: Iterable[str],
    names: dict[str, str],
    score: Callable[[dict[str, Any]], float],
    after: float,
    event_name: str,
) -> MatchReport:
    """Where each of the tag's match `keys` came from (`names`: shared key → the tag's name
    for it) and the score with the event's own keys; `score` scores a dict of keys.

    Reports are read-only: when nothing was added, the one report for these keys, score and
    name is shared by every event that has them (they recur event after event)."""
    if not gain.added:
        if type(keys) is tuple and type(event_name) is str:
            shape = (keys, after, event_name)
            found = _unenriched.get(shape)
            if found is None:
                if len(_unenriched) >= 4096:  # key sets and names come from events: bounded
                    _unenriched.clear()
                found = _unenriched[shape] = MatchReport(
                    dict.fromkeys(keys, EVENT), after, after, event_name
                )
            return found
        return MatchReport(dict.fromkeys(keys, EVENT), after, after, event_name)
    sources = dict.fromkeys(keys, EVENT)
    for shared, source in gain.added.items():
        key = names.get(shared, shared)
        if key in sources:
            sources[key] = source
    own = {k: True for k, s in sources.items() if s == EVENT}
    return MatchReport(sources, score(own), after, event_name)


_unenriched: dict[tuple[tuple[str, ...], float, str], MatchReport] = {}


MATCH_SCORE = Histogram(
    "tagserver_match_quality_score",
    "Local match-quality score (0-10) of events per tag type and vendor event name: "
    "stage=event with the event's own keys, stage=enriched as sent (with keys from the "
    "identity cookie and geography)",
    ["tag_type", "event_name", "stage"],
    buckets=(1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
)
MATCH_KEYS = Counter(
    "tagserver_match_keys_total",
    "Match keys sent, by tag type, key and source (event, identity_cookie, geography)",
    ["tag_type", "key", "source"],
)
MATCH_GAIN = Counter(
    "tagserver_match_quality_gain_total",
    "Score points added to events by each key source (identity_cookie, geography), per tag "
    "type and vendor event name; divide by the score histogram's count for the mean gain",
    ["tag_type", "event_name", "source"],
)
MAX_EVENT_NAMES = 100  # per tag type and worker; later names are counted as "other"
_names: dict[str, set[str]] = {}


def event_label(tag_type: str, name: str) -> str:
    """`name`, or "other" once a tag type has shown MAX_EVENT_NAMES names (bounded labels)."""
    seen = _names.setdefault(tag_type, set())
    if name in seen:
        return name
    if len(seen) >= MAX_EVENT_NAMES:
        return "other"
    seen.add(name)
    return name


def record(tag_type: str, found: MatchReport) -> None:
    """Count one tag's report in the three metrics. The same keys come from the same sources
    with the same scores event after event: what such a report adds is worked out once
    (`_Tally`), then counted in a few dict updates (see metrics.py)."""
    kind = (tag_type, found.event_name, found.before, found.after, tuple(found.keys.items()))
    tally = _tallies.get(kind)
    if tally is None:
        if len(_tallies) >= 4096:  # key sets and names come from events: bounded
            _tallies.clear()
        tally = _tallies[kind] = _Tally.of(tag_type, found)
    metrics.observe(tally.score_event, found.before)
    metrics.observe(tally.score_enriched, found.after)
    metrics.count_group(tally.keys)
    for labels, share in tally.gains:
        metrics.count(MATCH_GAIN, *labels, amount=share)


class _Tally(NamedTuple):
    """What `record` counts for one kind of report: its score histograms' children, its
    keys with their sources, and the gain per source."""

    score_event: Any
    score_enriched: Any
    keys: metrics.Group
    gains: tuple[tuple[tuple[str, str, str], float], ...]

    @classmethod
    def of(cls, tag_type: str, found: MatchReport) -> _Tally:
        name = event_label(tag_type, found.event_name or "unknown")
        gains = []
        if found.after != found.before:
            # split the gain between the sources by key count (the weights are the tag's)
            added = [s for s in found.keys.values() if s != EVENT]
            for source in set(added):
                share = (found.after - found.before) * added.count(source) / len(added)
                gains.append(((tag_type, name, source), share))
        return cls(
            metrics.labelled(MATCH_SCORE, tag_type, name, "event"),
            metrics.labelled(MATCH_SCORE, tag_type, name, "enriched"),
            metrics.Group(MATCH_KEYS, tuple((tag_type, k, s) for k, s in found.keys.items())),
            tuple(gains),
        )


_tallies: dict[tuple[Any, ...], _Tally] = {}


# -- keeping the identity (browser clients) -----------------------------------------------------


def remember_identity(
    request: RequestContext,
    settings: Settings,
    identities: Iterable[tuple[Any, Any]],
    consent: dict[str, Any] | None,
    *,
    forget: bool = False,
) -> Stored:
    """The identity cookie's Set-Cookie for a browser hit: `identities` are the hit's
    (user_data, user_id) pairs in sGTM's shape; the cookie is removed when `consent` denies
    ad_user_data or ad_storage, or on `forget` (logout)."""
    denied = next((c for c in ("ad_user_data", "ad_storage") if consent_denied(consent, c)), None)
    given: dict[str, str] = {}
    if not denied and not forget and settings.identity_cookie_days > 0:
        for user_data, user_id in identities:
            if user_data or user_id:
                for key, digest in hashed_keys(user_data, user_id).items():
                    given.setdefault(key, digest)
    return remember(
        request.cookies,
        given,
        settings,
        now=request.received_at,
        attributes=attributes(request, settings),
        denied=denied,
        forget=forget,
    )
