"""Toolkit for conversions-API tags (TikTok, Pinterest, Snapchat ...): what every one needs.

- `Refusal`: an event the vendor would refuse, with a short fixed code for metrics; raised by
  `fire` so it never reaches the outbox (the reason shows in the events-API answer, preview
  and the log, and counts in `tagserver_tag_refused_total{tag_type, reason}`).
- `raw_identity(event)`: the person's raw match keys from sGTM's common event data, by the
  short names the vendors share (`em`, `ph`, `fn` ...), each a list; `regions` gives the
  address country and the phone region they are read with.
- `Hashes` / `UserKey` / `add_user_keys`: those keys normalized and hashed by the shared rules
  of `tagserver.toolkit.identity` or a vendor's own, each key's values once per event for
  every tag that sends it alike (`Hashes.user_values`; the memo is the event's
  `FireContext.memo`); `add_client` adds IP and user agent.
- `event_id`, `event_time`, `event_name`, `server_event`, `currency`, `amount`, `order_id`, `search_term`,
  `add_configured`: the parts of an event every vendor reads alike.
- `items(event, memo)` / `total(items)`: GA4 items read once per event, numbers made numbers.
- `click_id(url, name)`: a click id of the page URL, exactly as given.
- `check_id_and_time`, `check_value`, `check_currency`: the refusals vendors share.
- `MatchQuality`: a local 0–10 estimate from the keys an event carries, with weights per vendor.
- `isolate(batch, post)`: sends a batch, and when the vendor refuses the whole request for one
  bad event, halves it until each refused event stands alone (bounded in requests).
- `VendorAnswer` / `post_json` / `refused_request`: one vendor request and its verdict.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple
from urllib.parse import parse_qsl, urlsplit

import httpx

from .. import metrics
from ..delivery.http_outcomes import elapsed_ms, retry_after_seconds
from ..event import Event, RequestContext
from ..plugins import (
    Delivery,
    FireContext,
    Message,
    Outgoing,
    Param,
    Sender,
    StartupParams,
    Tag,
    TagRejected,
)
from ..redact import Redactor
from ..visitor.identity_cookie import ADDRESS_FIELDS, PERSON_FIELDS
from . import identity, match

__all__ = [
    "TokenSender",
    "Refusal",
    "refused",
    "raw_identity",
    "regions",
    "Hashes",
    "UserKey",
    "add_user_keys",
    "add_client",
    "UNHASHED",
    "event_id",
    "event_name",
    "server_event",
    "currency",
    "amount",
    "order_id",
    "search_term",
    "add_configured",
    "check_id_and_time",
    "check_value",
    "check_currency",
    "missing",
    "DEFAULT_PHONE_COUNTRY",
    "CUSTOM_DATA",
    "Item",
    "items",
    "total",
    "click_id",
    "event_time",
    "MatchQuality",
    "Quality",
    "VendorAnswer",
    "isolate",
    "post_json",
    "number",
    "Target",
    "ConversionsTag",
    "text",
    "token_id",
    "install_token_log_filter",
    "refused_request",
]

MAX_REQUESTS_PER_SEND = 64  # bound on the requests one batch may take while isolating events
_TOKEN_IN_TEXT = re.compile(r"(access_token=)[^&\s\"'#]+", re.I)


class RedactTokens(logging.Filter):
    """Removes `access_token=…` from httpx's and httpcore's log records, whatever the level:
    their request line shows the URL, where Meta's and Snapchat's tokens travel."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(
                _TOKEN_IN_TEXT.sub(r"\1[redacted]", str(a)) if "access_token" in str(a) else a
                for a in args
            )
        if isinstance(record.msg, str) and "access_token" in record.msg:
            record.msg = _TOKEN_IN_TEXT.sub(r"\1[redacted]", record.msg)
        return True


def install_token_log_filter() -> None:
    """Install `RedactTokens` on httpx's and httpcore's loggers, once. Called by the senders
    whose token travels in the URL when they are created, never on import."""
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


class Refusal(TagRejected):
    """An event the vendor would refuse. `code` is a short, fixed label for metrics."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def refused(tag_type: str, refusal: Refusal) -> None:
    metrics.labelled(metrics.TAG_REFUSED, tag_type, refusal.code).inc()


def check_id_and_time(
    event_id: str, event_time: float, now: float, *, max_age: int = 7 * 86400, future: int = 60
) -> None:
    """Refuse an event without id, older than `max_age` or more than `future` seconds ahead."""
    if not event_id:
        raise Refusal("no_event_id", "event_id is empty")
    age = now - event_time
    if age > max_age:
        limit = f"{max_age / 86400:g} days"
        raise Refusal("too_old", f"event_time is {age / 86400:.1f} days old (limit {limit})")
    if age < -future:
        raise Refusal("in_future", "event_time is in the future")


def check_value(value: Any) -> None:
    """Refuse a `value` that is there but not a number."""
    if value is not None and (value.__class__ not in (int, float) or value != value):
        raise Refusal("bad_value", f"value {str(value)[:30]!r} is not a number")


def check_currency(code: Any) -> None:
    """Refuse a `currency` that is there but not an ISO 4217 code."""
    if code is not None and code not in identity.CURRENCIES:
        raise Refusal("bad_currency", f"currency {str(code)[:10]!r} is not an ISO 4217 code")


# params several conversions tags declare alike
DEFAULT_PHONE_COUNTRY = Param(
    "default_phone_country",
    "string",
    description="Country for phone numbers without country code when the event has no "
    "address country.",
)
CUSTOM_DATA = Param(
    "custom_data",
    "object",
    description="Extra custom_data (values may use {{variables}}); wins over the event's.",
)


# -- reading the event -----------------------------------------------------------------------------


class RawIdentity(NamedTuple):
    values: dict[str, list[Any]]  # key → raw values, in order, blanks left out
    country: str | None  # the first address's country as given (phone and ZIP rules need it)


def raw_identity(
    event: Event, configured: Any = None, memo: dict[Any, Any] | None = None
) -> RawIdentity:
    """Raw match keys: the tag's `user_data` param (by short key) first, then sGTM's
    `user_data` (email_address, phone_number, gender, date_of_birth, address{…} — one or a
    list — and their sha256_* forms), `user_id` for external_id. With the event's `memo`
    (`FireContext.memo`) the tags that read the same event alike share one reading (read-only:
    never change its lists)."""
    if memo is None:
        return _raw_identity(event, configured)
    seen = memo.get("conversions.raw_identity")
    if seen is not None and seen[0] is event and seen[1] is configured:
        found: RawIdentity = seen[2]
        return found
    found = _raw_identity(event, configured)
    memo["conversions.raw_identity"] = (event, configured, found)  # holds `event`: no id reuse
    return found


def _raw_identity(event: Event, configured: Any) -> RawIdentity:
    out: dict[str, list[Any]] = {}
    country: str | None = None
    if configured.__class__ is dict and configured:
        for key, value in configured.items():
            if value is not None and value != "":
                out[key] = value if value.__class__ is list else [value]
        given = configured.get("country")
        if given.__class__ is str and given.strip():
            country = given
    ud = event.get("user_data")
    if ud.__class__ is not dict:
        ud = {}
    for key, fields in PERSON_FIELDS:
        if key in out:
            continue
        value = event.get("user_id") if key == "external_id" else None
        if not value:
            for field in fields:
                value = ud.get(field)
                if value:
                    break
        if value:
            out[key] = value if value.__class__ is list else [value]
    addresses = ud.get("address")
    if addresses.__class__ is dict:
        addresses = (addresses,)
    if addresses.__class__ is list or addresses.__class__ is tuple:
        taken = frozenset(out)
        for address in addresses:
            if address.__class__ is not dict:
                continue
            given = address.get("country")
            if country is None and given.__class__ is str and given.strip():
                country = given
            for key, names in ADDRESS_FIELDS:
                if key in taken:
                    continue
                for field in names:
                    value = address.get(field)
                    if value:
                        out.setdefault(key, []).append(value)
                        break
    return RawIdentity(out, country)


def regions(raw: RawIdentity, params: dict[str, Any]) -> tuple[str | None, str | None]:
    """(address country, phone region), ISO codes in lowercase: a phone number without its
    country code is read in the address country, else the tag's `default_phone_country`."""
    country = identity.NORMALIZERS["country"]
    cc = country(raw.country.strip(), None) if raw.country else None
    region = cc
    given = params.get("default_phone_country")
    if region is None and given.__class__ is str and given.strip():
        region = country(given.strip(), None)
    return cc, region


Rule = Callable[[str, "str | None"], "str | None"]  # a normalizer: (stripped text, country)
UNHASHED = "(not hashed: a dry run nobody sees)"
# the shared rules that do not read the country: one memo entry for every tag's value
_CONTEXT_FREE = frozenset({"em", "fn", "ln", "ge", "db", "ct", "country", "external_id"})
_MISSING: Any = object()
_sha256 = hashlib.sha256


class UserKey(NamedTuple):
    """How a vendor sends one shared match key (`em`, `ph` ...)."""

    name: str  # the vendor's name for it
    rule: str | Rule  # the shared rule's key in `identity.NORMALIZERS`, or the vendor's own
    hashed: bool = True  # False: sent normalized, in clear
    many: bool = True  # a list of values; False: the first one
    # the vendor's own last step on the shared rule's result (TikTok's "+" before a phone's
    # digits): the costly part, parsing a phone number, is then done once per event for all
    then: Callable[[str], str | None] | None = None


class Hashes:
    """User data normalized and SHA-256 hashed, each value once per event for every tag of the
    event that follows the same rule: `memo` is the event's `FireContext.memo` (nothing is
    kept longer: no raw personal data outlives the event).

    With `digest=False` (a dry run whose payload nobody sees) a value is only normalized, to
    decide whether the key is kept, and stands as `UNHASHED`: such a payload is never shown
    or sent, so a `build` may also leave out what no check of it reads (the items' contents)."""

    __slots__ = ("_done", "_keys", "_phones", "digest", "memo")

    def __init__(self, memo: dict[Any, Any] | None = None, *, digest: bool = True) -> None:
        self.memo = {} if memo is None else memo
        shared = self.memo.get("conversions.hashes")
        if shared is None:
            shared = self.memo["conversions.hashes"] = ({}, {}, {})
        # (rule, text, context) → hash | UNHASHED | None, see `hash`;
        # (key, rule, hashed, context, then) → (raw values, digested, results), see
        # `user_values`; (text, region) → a phone number's digits or None, see `phone`
        self._done: dict[tuple[Any, str, str | None], str | None] = shared[0]
        self._keys: dict[tuple[Any, ...], tuple[list[Any], bool, list[str]]] = shared[1]
        self._phones: dict[tuple[str, str | None], str | None] = shared[2]
        self.digest = digest

    def normalizer(self, rule: str | Rule) -> Rule:
        """`rule`'s function: a key of `identity.NORMALIZERS`, or the vendor's own. Phone
        numbers go through `phone`, parsed once per event whichever tags read them."""
        if rule == "ph":
            return self.phone
        return identity.NORMALIZERS[rule] if isinstance(rule, str) else rule

    def phone(self, text: str, region: str | None) -> str | None:
        """The shared phone rule, remembered for the event: a number outside the parser's
        fast path (a national format) costs ~11 µs, and no number is kept past the event."""
        if text[0] == "+":  # an international number reads the same in every region
            region = None
        found = self._phones.get((text, region), _MISSING)
        if found is _MISSING:
            found = self._phones[text, region] = identity.NORMALIZERS["ph"](text, region)
        return found  # type: ignore[no-any-return]  # a str or None, as stored

    def hash(self, rule: str | Rule, text: str, context: str | None = None) -> str | None:
        """SHA-256 of stripped, non-empty `text` normalized by `rule`: a key of the shared rules
        (`identity.NORMALIZERS`: "em", "ph" ...) or a vendor's own normalizer; a SHA-256
        passes through lowercased; None when the value is unusable. `context` is the phone
        region for "ph", the address country for "st" and "zp"."""
        if rule in identity.REMEMBERED_KEYS:  # identity keeps these across events already
            return identity.hash_text(rule, text, context)
        key = (rule, text, None if rule in _CONTEXT_FREE else context)
        found = self._done.get(key, _MISSING)
        if found is _MISSING or (found is UNHASHED and self.digest):
            # what `identity.hash_with` does, without its call: this runs for every value
            if len(text) == 64 and identity.is_hashed(text):
                found = text.lower()
            else:
                normalized = self.normalizer(rule)(text, key[2])
                if not normalized:
                    found = None
                elif self.digest:
                    found = _sha256(normalized.encode()).hexdigest()
                else:
                    found = UNHASHED
            self._done[key] = found
        return found  # type: ignore[no-any-return]  # a str or None, as stored

    def user_values(
        self, key: str, spec: UserKey, given: list[Any], context: str | None
    ) -> list[str]:
        """What `spec` makes of the match key `key`'s raw values (`RawIdentity.values[key]`):
        each normalized and hashed as `hash` does (only normalized when `spec.hashed` is
        False), in order, without repeats or unusable ones. `context` is the phone region for "ph", else
        the address country.

        Worked out once per event for every tag that sends the key by the same rule (Pinterest
        and Snapchat share all but one): the list is shared, copy it to keep it."""
        rule, hashed, then = spec.rule, spec.hashed, spec.then
        if not hashed or rule in _CONTEXT_FREE:  # values sent in clear are read without one
            context = None
        memo_key = (key, rule, hashed, context, then)
        seen = self._keys.get(memo_key)
        if seen is not None and seen[0] is given and (seen[1] or not self.digest):
            return seen[2]
        normalize = self.normalizer(rule)
        digest = self.digest
        result: str | None
        found: list[str] = []
        for value in given:
            if value.__class__ is not str:  # a number: phones, ZIPs, ids (42.0 counts as 42)
                if value.__class__ is float and value.is_integer():
                    value = int(value)
                if value.__class__ is not int:
                    continue
                value = str(value)
            text = value.strip()
            if not text:
                continue
            if hashed and len(text) == 64 and identity.is_hashed(text):
                result = text.lower()  # already a SHA-256: passes through
            elif hashed and digest and rule in identity.REMEMBERED_KEYS:
                result = identity.hash_text(rule, text, context)  # kept across events there
            else:
                result = normalize(text, context)
                if result and then is not None:
                    result = then(result)
                if result and hashed:
                    result = _sha256(result.encode()).hexdigest() if digest else UNHASHED
            if result and result not in found:
                found.append(result)
        # `given` is held: its id is not reused while the entry stands
        self._keys[memo_key] = (given, self.digest or not hashed, found)
        return found


def add_user_keys(
    user: dict[str, Any],
    raw: RawIdentity,
    keys: dict[str, UserKey],
    order: Iterable[str],
    hashes: Hashes,
    country: str | None,
    phone_region: str | None,
    dropped: dict[str, str],
) -> None:
    """Each raw match key of `keys` that the event has, in `order`, normalized (and hashed)
    into `user` under the vendor's name; a key none of whose values survives is `dropped`."""
    values = raw.values
    for key in order:
        spec = keys.get(key)
        given = values.get(key)
        if spec is None or not given:
            continue
        found = hashes.user_values(key, spec, given, phone_region if key == "ph" else country)
        if found:
            user[spec.name] = found.copy() if spec.many else found[0]
        else:
            dropped[spec.name] = "not usable after normalization"


def add_client(user: dict[str, Any], event: Event, ip_key: str, agent_key: str) -> None:
    """The visitor's IP address and user agent, sent as given (never hashed)."""
    ip = event.get("ip_override")
    if ip.__class__ is str and ip:
        user[ip_key] = ip
    agent = event.get("user_agent")
    if agent.__class__ is str and agent:
        user[agent_key] = agent


# -- the event's other parts -----------------------------------------------------------------


def event_id(event: Event, request: RequestContext) -> str:
    """The event's id, else one derived from the hit (the same for a resent hit)."""
    return str(event.get("event_id") or request.derived_event_id(0))


def server_event(
    name: str, action_source: str, event: Event, request: RequestContext
) -> dict[str, Any]:
    """The head of a server event as Pinterest and Snapchat order it: `event_name`,
    `action_source`, `event_time`, `event_id`, then the page URL as `event_source_url`."""
    out: dict[str, Any] = {
        "event_name": name,
        "action_source": action_source,
        "event_time": event_time(event, request.received_at),
        "event_id": event_id(event, request),
    }
    location = event.get("page_location")
    if location.__class__ is str and location:
        out["event_source_url"] = location
    return out


def event_name(name: str, custom: Any, table: dict[str, str]) -> str:
    """The tag's own `event_name_map` first, then the vendor's `table`, else `name`."""
    if custom.__class__ is dict and custom:
        mapped = custom.get(name)
        if isinstance(mapped, str) and mapped.strip():
            return mapped.strip()
    return table.get(name, name)


def currency(event: Event) -> str | None:
    """The event's `currency`, trimmed and uppercase (checked by `check_currency`)."""
    found = event.get("currency")
    if found.__class__ is str:
        found = found.strip()
        if found:
            return found.upper()
    return None


def amount(event: Event, found: list[Item]) -> Any:
    """The event's `value` (numeric text made a number), else the items' total; None when
    neither; anything else as given (`check_value` refuses it)."""
    value = event.get("value")
    if value is None or value == "":
        return total(found)
    as_number = number(value)
    return value if as_number is None else as_number


def order_id(event: Event) -> str | None:
    order = event.get("transaction_id")
    if (order.__class__ is str or order.__class__ is int) and order != "":
        return str(order)
    return None


def search_term(event: Event) -> str | None:
    search = event.get("search_term")
    return search if search.__class__ is str and search else None


def add_configured(out: dict[str, Any], configured: Any) -> None:
    """The tag's own values (a `custom_data` or `properties` param) over the event's; empty
    ones are left out."""
    if configured.__class__ is dict and configured:
        out.update({k: v for k, v in configured.items() if v is not None and v != ""})


class Item(NamedTuple):
    id: str
    name: str | None
    category: str | None
    brand: str | None
    price: float | int | None
    quantity: int


def items(event: Event, memo: dict[Any, Any] | None = None) -> list[Item]:
    """GA4 `items` with an id (item_id, else item_name); quantity ≥ 1 (default 1). With the
    event's `memo` (`FireContext.memo`) its tags share one reading (never change the list)."""
    if memo is None:
        return _items(event)
    seen = memo.get("conversions.items")
    if seen is not None and seen[0] is event:
        found: list[Item] = seen[1]
        return found
    found = _items(event)
    memo["conversions.items"] = (event, found)  # holds `event`: no id reuse
    return found


def _items(event: Event) -> list[Item]:
    raw = event.get("items")
    if raw.__class__ is not list or not raw:
        return []
    out = []
    for item in raw:
        if item.__class__ is not dict:
            continue
        ident = item.get("item_id")
        if ident is None or ident == "":
            ident = item.get("item_name")
        if ident is None or ident == "" or isinstance(ident, (dict, list, bool)):
            continue
        quantity = item.get("quantity", 1)
        if quantity.__class__ is not int:
            quantity = number(quantity)
            quantity = int(quantity) if quantity is not None else 1
        price = item.get("price")
        if price is not None and price.__class__ is not float and price.__class__ is not int:
            price = number(price)
        out.append(
            Item(
                ident if ident.__class__ is str else str(ident),
                _text(item.get("item_name")),
                _text(item.get("item_category")),
                _text(item.get("item_brand")),
                price,
                quantity if quantity >= 1 else 1,
            )
        )
    return out


def total(found: list[Item]) -> float | None:
    """Σ price × quantity, when every item has a price."""
    amount: float = 0
    for item in found:
        if item.price is None:
            return None
        amount += item.price * item.quantity
    return round(amount, 2) if found else None


def number(value: Any) -> float | int | None:
    """A finite number from a number or numeric text, else None."""
    if value.__class__ is int or value.__class__ is float:
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            found = float(value.strip())
        except ValueError:
            return None
        if math.isfinite(found):
            return int(found) if found.is_integer() and "." not in value else found
    return None


def _text(value: Any) -> str | None:
    if value.__class__ is str:
        return value.strip() or None
    if value.__class__ is int or value.__class__ is float:
        return str(value)
    return None


def click_id(url: Any, name: str, *, ignore_case: bool = False) -> str | None:
    """The first non-empty `name` query parameter of `url`, exactly as given (never altered:
    click ids are case-sensitive)."""
    if url.__class__ is not str or "=" not in url:
        return None
    if (name.lower() if ignore_case else name) + "=" not in (url.lower() if ignore_case else url):
        return None
    try:
        query = urlsplit(url).query
    except ValueError:
        return None
    for key, value in parse_qsl(query):
        if (key.lower() == name.lower() if ignore_case else key == name) and value:
            return value[:500]
    return None


def event_time(event: Event, received_at: float) -> int:
    """The event's own time (unix seconds), else when the hit arrived."""
    value = event.get("event_time")
    if (value.__class__ is int or value.__class__ is float) and math.isfinite(value):
        return int(value)
    return int(received_at)


# -- match quality -------------------------------------------------------------------------------


class Quality(NamedTuple):
    keys: tuple[str, ...]
    score: float  # 0–10
    band: str  # poor | ok | good | great


BANDS = ((8.0, "great"), (6.0, "good"), (4.0, "ok"), (0.0, "poor"))


class MatchQuality:
    """A plain sum of per-key weights (capped at 10), with a bonus for keys that count more
    together (IP + user agent). Vendors publish no formula: this tells a marketer, per event,
    which keys are missing. Scores are cached per key combination."""

    def __init__(self, weights: dict[str, float], pair: tuple[str, str], bonus: float) -> None:
        self.weights, self.pair, self.bonus = weights, pair, bonus
        self._cache: dict[tuple[str, ...], Quality] = {}

    def assess(self, user: dict[str, Any]) -> Quality:
        keys = tuple(user)
        found = self._cache.get(keys)
        if found is None:
            score = sum(self.weights.get(k, 0.0) for k in keys)
            if self.pair[0] in keys and self.pair[1] in keys:
                score += self.bonus
            score = min(score, 10.0)
            band = next(label for floor, label in BANDS if score >= floor)
            found = Quality(keys, score, band)
            if len(self._cache) < 4096:
                self._cache[keys] = found
        return found


# -- delivery --------------------------------------------------------------------------------------


@dataclass
class VendorAnswer:
    """The verdict for one vendor request: one delivery for all its messages, or one each
    (`per_message`, vendors that answer per event); `bisect` when the vendor refused the
    whole request because of some event(s) in it."""

    delivery: Delivery
    per_message: list[Delivery] | None = None
    bisect: bool = False


Post = Callable[[list[Message]], Awaitable[VendorAnswer]]


async def isolate(
    batch: list[Message], post: Post, *, vendor: str, log: Any = None, label: str = ""
) -> list[Delivery]:
    """Deliveries for `batch`, in order. A refused batch is split in halves until each refused
    event stands alone; a retry verdict (outage, throttling) stops calling the vendor at once,
    and what is left is retried later, never in a tight loop."""
    results: list[Delivery | None] = [None] * len(batch)
    pending = [(0, len(batch))]
    requests = 0
    stopped: Delivery | None = None
    while pending:
        lo, hi = pending.pop()
        if stopped is None and requests >= MAX_REQUESTS_PER_SEND:
            stopped = Delivery(
                "retry",
                error=f"isolating the events {label or vendor} refused took {requests} requests; "
                "the rest is tried again later",
            )
        if stopped is not None:
            results[lo:hi] = [dataclasses.replace(stopped) for _ in range(hi - lo)]
            continue
        answer = await post(batch[lo:hi])
        requests += 1
        if answer.bisect and hi - lo > 1:
            mid = (lo + hi) // 2
            pending.append((mid, hi))
            pending.append((lo, mid))  # popped first: results keep the batch's order
            continue
        if answer.per_message is not None and len(answer.per_message) == hi - lo:
            results[lo:hi] = answer.per_message
        else:
            delivery = answer.delivery
            results[lo:hi] = [delivery] + [
                dataclasses.replace(delivery) for _ in range(hi - lo - 1)
            ]
        if answer.delivery.outcome == "retry" and answer.per_message is None:
            stopped = answer.delivery
    if requests > 1 and log is not None:
        refused_count = sum(1 for r in results if r is not None and r.outcome == "permanent")
        log.info(
            "%s %s: batch of %d split into %d requests; %d event(s) refused",
            vendor, batch[0].destination, len(batch), requests, refused_count,
        )  # fmt: skip
    return [r if r is not None else Delivery("retry", error="not sent") for r in results]


THROTTLE_FLOOR_SECONDS = 60.0  # a vendor's 429 waits at least this long


def refused_request(
    response: httpx.Response,
    error: dict[str, Any],
    common: dict[str, Any],
    *,
    batch: int,
    on_auth: Callable[[], None],
) -> VendorAnswer:
    """The verdict of a vendor's error answer that is not per event: 429 waits at least a
    minute (or its Retry-After), 5xx and 408 are retried, 401/403 (the token) are never
    retried and `on_auth` says so in the log, anything else refuses the batch, halved to find
    the refused event when it holds several. `error` and `common` are `Delivery` fields."""
    status = response.status_code
    wait = retry_after_seconds(response.headers.get("retry-after"))
    if status == 429:
        floor = max(THROTTLE_FLOOR_SECONDS, wait or 0.0)
        return VendorAnswer(Delivery("retry", retry_after=floor, **error, **common))
    if status >= 500 or status == 408:
        return VendorAnswer(Delivery("retry", retry_after=wait, **error, **common))
    if status in (401, 403):
        on_auth()
        return VendorAnswer(Delivery("permanent", **error, **common))
    return VendorAnswer(Delivery("permanent", **error, **common), bisect=batch > 1)


class TokenSender(Sender):
    """A conversions-API sender whose route carries an `access_token`: each request of a batch
    is made by `_post`, events the vendor refuses are isolated (`isolate`), and the token is
    redacted from whatever is reported. Subclasses name their `vendor` and implement `_post`."""

    vendor: ClassVar[str] = ""  # in log lines: "meta", "pinterest" ...
    label: ClassVar[str] = ""  # the vendor's name in messages, when not `vendor`
    log: ClassVar[logging.Logger] = logging.getLogger("tagserver.tag")

    async def send(self, route: dict[str, Any], batch: list[Message]) -> list[Delivery]:
        if not batch:
            return []
        token = str(route.get("access_token") or "")
        redact = Redactor([token])

        async def post(messages: list[Message]) -> VendorAnswer:
            return await self._post(route, token, redact, messages)

        return await isolate(batch, post, vendor=self.vendor, log=self.log, label=self.label)

    async def _post(
        self, route: dict[str, Any], token: str, redact: Redactor, messages: list[Message]
    ) -> VendorAnswer:
        raise NotImplementedError


class Posted(NamedTuple):
    """A vendor's HTTP answer (or None and the retry Delivery when there was none)."""

    response: httpx.Response | None
    body: Any  # parsed JSON, or None
    failure: Delivery | None
    latency_ms: float


async def post_json(
    http: httpx.AsyncClient,
    url: str,
    content: bytes,
    *,
    headers: dict[str, str],
    params: dict[str, str] | None,
    timeout: float,
    vendor: str,
    redact: Redactor,
    shown: dict[str, Any],
) -> Posted:
    """POST a JSON body; a timeout or a connection error is a retry `failure` whose text holds
    no secret."""
    started = time.perf_counter()
    try:
        response = await http.post(
            url, params=params, content=content, headers=headers, timeout=timeout
        )
    except httpx.TimeoutException as exc:
        error = f"no answer from the {vendor} API within {timeout:g} s ({type(exc).__name__})"
        latency = elapsed_ms(started)
        return Posted(
            None, None, Delivery("retry", error=error, latency_ms=latency, request=shown), latency
        )
    except httpx.HTTPError as exc:
        error = redact.text(f"cannot reach the {vendor} API: {type(exc).__name__}: {exc}")
        latency = elapsed_ms(started)
        return Posted(
            None, None, Delivery("retry", error=error, latency_ms=latency, request=shown), latency
        )
    latency = elapsed_ms(started)
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    return Posted(response, body, None, latency)


# -- the tag ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a tag's events go: the route for its sender, or why there is none."""

    destination: str = ""
    route: dict[str, Any] | None = None  # None: dry run
    missing: str = ""  # what a dry run lacks (shown in preview)
    shown: dict[str, Any] = dataclasses.field(default_factory=dict)  # body keys besides data
    problem: tuple[str, str] | None = None  # (code, reason) of a Refusal


class ConversionsTag(Tag):
    """A conversions-API tag: build the vendor event (PII hashed) → estimate match quality →
    refuse what the vendor would refuse → an `Outgoing`, or a dry run that shows the exact
    body in preview while the credentials are missing. Subclasses give `build`, `check`,
    `make_target`, the names of the params that decide the target and where the payload
    keeps its match keys (`user_key`)."""

    target_params: ClassVar[tuple[str, ...]] = ()
    user_key: ClassVar[str] = "user_data"
    quality: ClassVar[MatchQuality]
    # match keys the identity cookie may fill (its hashes follow the shared rules of
    # `identity`; leave out a key the vendor normalizes differently), and the vendor's name
    # of each shared key in `match_keys` (em → email ...); declare `*match.PARAMS` in params
    identity_keys: ClassVar[frozenset[str]] = match.ALL_KEYS
    key_names: ClassVar[dict[str, str]] = {}
    max_age_seconds: ClassVar[int] = 7 * 86400
    deadline_margin_seconds: ClassVar[int] = 600

    def __init__(self, name: str, static_params: dict[str, Any], settings: Any) -> None:
        super().__init__(name, static_params, settings)
        self._targets: dict[tuple[Any, ...], Target] = {}
        self._log = logging.getLogger(f"tagserver.tag.{self.type_name}")
        # counted like the hit latency, without prometheus-client's lock per call (`metrics`)
        child = metrics.labelled(metrics.MATCH_QUALITY, self.type_name)
        self._observe = functools.partial(metrics.observe, child)

    def build(
        self, event: Event, params: dict[str, Any], request: RequestContext, hashes: Hashes
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """The vendor event and what could not be used (key → why, never the value); user data
        hashed with `hashes`."""
        raise NotImplementedError

    def match_keys(self, payload: dict[str, Any]) -> dict[str, Any]:
        keys: dict[str, Any] = payload[self.user_key]
        return keys

    def check(self, payload: dict[str, Any], now: float) -> None:
        """Raise `Refusal` when the vendor would refuse `payload`."""

    def make_target(self, values: tuple[Any, ...]) -> Target:
        raise NotImplementedError

    def describe(self, params: StartupParams) -> str:
        """The start-up log's line: LIVE with where events go, or DRY RUN naming what is empty."""
        pending = [n for n in self.target_params if n in params.per_event]
        if pending:
            given = " and ".join(f"{n} from {params.source(n)}" for n in pending)
            return f"LIVE for events that resolve {given}; DRY RUN for the others"
        target = self.make_target(tuple(params.get(n) for n in self.target_params))
        if target.problem is not None:
            return f"REFUSES EVERY EVENT — {target.problem[1]}"
        if target.route is None:
            empty = [params.source(n.strip()) for n in target.missing.split(" and ")]
            verb = "is" if len(empty) == 1 else "are"
            return f"DRY RUN — {' and '.join(empty)} {verb} empty (events are checked, not sent)"
        return f"LIVE → {target.destination}"

    def dry_run_body(self, payload: dict[str, Any], target: Target) -> dict[str, Any]:
        return {**target.shown, "data": [payload]}

    def fire(self, event: Event, params: dict[str, Any], ctx: FireContext) -> list[Outgoing]:
        event, gain = match.enrich(event, params, ctx.request, self.identity_keys, memo=ctx.memo)
        target = self._target(params)
        # a dry run nobody sees decides the same (checks, match keys) without hashing
        hashes = Hashes(ctx.memo, digest=target.route is not None or ctx.shows_dry_runs)
        payload, dropped = self.build(event, params, ctx.request, hashes)
        quality = self.quality.assess(self.match_keys(payload))
        ctx.report_match(
            match.report(
                gain, quality.keys, self.key_names, self._score, quality.score,
                str(payload.get("event_name") or payload.get("event") or ""),
            )
        )  # fmt: skip
        notes = ctx.notes
        notes["match_keys"] = list(quality.keys)
        notes["match_quality"] = quality.score
        notes["match_quality_band"] = quality.band
        if dropped:
            notes["dropped_user_data"] = dropped
        name, event_id = payload.get("event_name") or payload.get("event"), payload["event_id"]
        try:
            self.check(payload, time.time())
            if target.problem is not None:
                raise Refusal(*target.problem)
        except Refusal as refusal:
            refused(self.type_name, refusal)
            self._log.info(
                "tag %r: %s event %s not sent: %s", self.name, name, event_id, refusal.reason
            )
            raise
        self._observe(quality.score)
        if target.route is None:
            body = self.dry_run_body(payload, target) if ctx.shows_dry_runs else None
            ctx.dry_run(body, f"no {target.missing}, so nothing is sent")
            return []
        return [
            Outgoing(
                destination=target.destination,
                payload=payload,
                dedup_id=f"{name}:{event_id}",
                tag_type=self.type_name,
                route=target.route,
                deadline=payload["event_time"]
                + self.max_age_seconds
                - self.deadline_margin_seconds,
            )
        ]

    def _score(self, keys: dict[str, Any]) -> float:
        return self.quality.assess(keys).score

    def _target(self, params: dict[str, Any]) -> Target:
        """The same few param combinations repeat for every event: each is worked out once."""
        key = tuple(map(params.get, self.target_params))
        try:
            target = self._targets.get(key)
        except TypeError:  # a templated param resolved to something unhashable
            return self.make_target(key)
        if target is None:
            if len(self._targets) >= 64:
                self._targets.clear()
            target = self._targets[key] = self.make_target(key)
        return target


def missing(*params: tuple[str, str]) -> str:
    """The names of the empty ones of (name, value) pairs: "pixel_id and access_token"."""
    return " and ".join(name for name, value in params if not value)


def text(value: Any) -> str:
    """A param as stripped text ("" when absent or not text; whole numbers without `.0`)."""
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(int(value)) if float(value).is_integer() else str(value)
    return value.strip() if isinstance(value, str) else ""


def token_id(token: str) -> str:
    """A short, non-secret name of a token for destination keys."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]
