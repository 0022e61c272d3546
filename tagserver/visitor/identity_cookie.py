"""The identity cookie: a visitor's hashed match keys, kept by the server between pages.

A visitor who signs in or buys on one page gives an email, a phone, a name; without help the
next page's events are anonymous again. With `ad_user_data` consent (and `ad_storage`: it is
a cookie), the server keeps the keys' SHA-256 hashes — normalized by the shared rules of
`tagserver.toolkit.identity`, exactly what a conversions tag would send — in one first-party
cookie, and later events that lack a key get it from there (`tagserver.visitor.match`).

Hashes are still personal data, so the cookie is:
- **encrypted and authenticated**: AES-256-GCM (the `cryptography` library) with a key
  derived by HKDF-SHA256 from the server's secret key; a random 96-bit nonce per cookie; the
  purpose is bound in as associated data. A changed, truncated or foreign value fails
  authentication and is ignored (never an error);
- **HttpOnly**, `SameSite=Lax`, `Secure` behind HTTPS, on the registrable domain like `_fbp`;
- **bounded**: one value per key, eleven keys at most: ~530 characters;
- **short-lived**: `TAGSERVER_IDENTITY_COOKIE_DAYS` from the last time the visitor identified
  (page views do not extend it); the lifetime is checked inside the sealed value too;
- **removed** when consent is denied, on logout (`tagserver('user', null)`), and when the
  feature is off (`TAGSERVER_IDENTITY_COOKIE_DAYS=0`).

Key rotation: set the new `TAGSERVER_SECRET_KEY` and list the old one in
`TAGSERVER_PREVIOUS_SECRET_KEYS`; cookies sealed with an old key are still read, and re-sealed
with the new key on the visitor's next hit. Drop the old key after the cookie lifetime.

Sealed value (URL-safe base64, no padding): version byte 1 · nonce (12) · ciphertext + tag
(16), where the plaintext is the issue time (4 bytes, unix seconds) and, per key, its index in
`KEYS` (1 byte) and its SHA-256 (32 bytes).
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..settings import Settings
from ..toolkit import identity

COOKIE = "tagserver_ident"
VERSION = 1
KEYS = identity.HASHED_KEYS  # em, ph, fn, ln, ge, db, ct, st, zp, country, external_id
PERSON_KEYS = frozenset({"em", "ph", "external_id"})  # a different one: a different person
MAX_COOKIE = 1024  # longer values are not even decoded
_AAD = b"tagserver identity cookie v1"
_HKDF_INFO = b"tagserver.identity_cookie.v1"
_NONCE = 12
_ENTRY = 33
MAX_OPENED = 2048  # sealed values each keyring remembers having opened


@dataclass(frozen=True)
class Remembered:
    """What the cookie held: key → SHA-256 hex, when it was issued, and how it was read."""

    keys: dict[str, str] = field(default_factory=dict)
    issued_at: int = 0
    status: str = "absent"  # absent | valid | rotated | expired | invalid | off
    # rotated: valid, sealed with a previous secret key (re-sealed on the next hit)

    def __bool__(self) -> bool:
        return bool(self.keys)


NOTHING = Remembered()


# -- sealing ------------------------------------------------------------------------------------


class Keyring:
    """AES-GCM keys derived from the current and previous secret keys, once per process."""

    def __init__(self, current: str, previous: list[str]) -> None:
        self.current = AESGCM(_derive(current))
        self.previous = [AESGCM(_derive(k)) for k in previous if k and k != current]
        self._opened: dict[str, tuple[dict[str, str], int, bool]] = {}

    def seal(self, keys: dict[str, str], issued_at: int) -> str:
        plain = bytearray(struct.pack(">I", issued_at & 0xFFFFFFFF))
        for index, key in enumerate(KEYS):
            digest = keys.get(key)
            if digest:
                plain.append(index)
                plain += bytes.fromhex(digest)
        nonce = os.urandom(_NONCE)
        sealed = bytes([VERSION]) + nonce + self.current.encrypt(nonce, bytes(plain), _AAD)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open_cached(self, value: str) -> tuple[dict[str, str], int, bool] | None:
        """`open`, remembered per keyring: a visitor sends the same sealed value with every
        hit, so each is opened once (bounded; only values this keyring authenticated)."""
        found = self._opened.get(value)
        if found is None:
            found = self.open(value)
            if found is not None:
                if len(self._opened) >= MAX_OPENED:
                    self._opened.clear()
                self._opened[value] = found
        return found

    def open(self, value: str) -> tuple[dict[str, str], int, bool] | None:
        """(keys, issued_at, sealed with a previous key) or None when not ours or tampered."""
        if not value or len(value) > MAX_COOKIE:
            return None
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) < 1 + _NONCE + 16 + 4 or raw[0] != VERSION:
            return None
        nonce, body = raw[1 : 1 + _NONCE], raw[1 + _NONCE :]
        for number, cipher in enumerate((self.current, *self.previous)):
            try:
                plain = cipher.decrypt(nonce, body, _AAD)
            except InvalidTag:
                continue
            return (*_unpack(plain), number > 0) if _well_formed(plain) else None
        return None


def _derive(secret: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO)
    return hkdf.derive(secret.encode("utf-8"))


def _well_formed(plain: bytes) -> bool:
    return len(plain) >= 4 and (len(plain) - 4) % _ENTRY == 0


def _unpack(plain: bytes) -> tuple[dict[str, str], int]:
    issued_at = struct.unpack(">I", plain[:4])[0]
    keys: dict[str, str] = {}
    for start in range(4, len(plain), _ENTRY):
        index = plain[start]
        if index < len(KEYS):
            keys[KEYS[index]] = plain[start + 1 : start + _ENTRY].hex()
    return keys, issued_at


_keyrings: dict[tuple[str, str, str], Keyring] = {}


def keyring(settings: Settings) -> Keyring:
    """The settings' keyring, derived once per process (HKDF is not free)."""
    cache_key = (settings.secret_key, settings.previous_secret_keys, settings.data_dir)
    found = _keyrings.get(cache_key)
    if found is None:
        if len(_keyrings) > 16:
            _keyrings.clear()
        found = _keyrings[cache_key] = Keyring(
            settings.signing_key(), settings.previous_signing_keys()
        )
    return found


# -- reading ------------------------------------------------------------------------------------


def read(cookies: dict[str, str], settings: Settings, now: float) -> Remembered:
    """The identity cookie of a request, if there is a valid, unexpired one (never raises)."""
    if settings.identity_cookie_days <= 0:
        return Remembered(status="off") if COOKIE in cookies else NOTHING
    value = cookies.get(COOKIE)
    if not value:
        return NOTHING
    opened = keyring(settings).open_cached(value)
    if opened is None:
        return Remembered(status="invalid")
    keys, issued_at, rotated = opened
    if not issued_at <= now + 300 or now - issued_at > settings.identity_cookie_days * 86400:
        return Remembered(status="expired", issued_at=issued_at)
    return Remembered(keys, issued_at, "rotated" if rotated else "valid")


# -- writing ------------------------------------------------------------------------------------


@dataclass
class Stored:
    """What a hit does with the identity cookie: Set-Cookie values and why (for preview)."""

    set_cookie: list[str] = field(default_factory=list)
    action: str = ""  # "" when nothing happened
    keys: tuple[str, ...] = ()  # the keys now kept (never their values)


def hashed_keys(user_data: Any, user_id: Any = None) -> dict[str, str]:
    """sGTM-shaped `user_data` (and `user_id` as external_id) normalized by the shared rules
    and hashed: key → SHA-256 hex, the first usable value of each key."""
    if not isinstance(user_data, dict):
        user_data = {}
    out: dict[str, str] = {}
    addresses = user_data.get("address")
    if isinstance(addresses, dict):
        addresses = [addresses]
    if not isinstance(addresses, list):
        addresses = []
    country = None
    for address in addresses:
        if isinstance(address, dict) and isinstance(address.get("country"), str):
            country = identity.country(address["country"])
            if country:
                break
    given = _keys_given(user_data, _PERSON_KEY)  # two or three of the fifteen, at most
    if user_id:
        given.add("external_id")
    for key, fields in PERSON_FIELDS:
        if key in given:
            values = [user_id] if key == "external_id" and user_id else []
            values += [user_data.get(f) for f in fields]
            _first(out, key, values, country)
    for address in addresses:
        if isinstance(address, dict):
            given = _keys_given(address, _ADDRESS_KEY)
            for key, fields in ADDRESS_FIELDS:
                if key in given and key not in out:
                    _first(out, key, [address.get(f) for f in fields], country)
    return out


# Where each match key may be found in sGTM's `user_data` (and in each of its `address`
# entries), fields in order of preference; the sha256_* forms pass through hashing: the one
# table for each reader of user_data by key (here and `tagserver.toolkit.conversions`).
PERSON_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("em", ("email_address", "sha256_email_address", "email")),
    ("ph", ("phone_number", "sha256_phone_number", "phone")),
    ("ge", ("gender",)),
    ("db", ("date_of_birth",)),
    ("external_id", ("external_id",)),
)
ADDRESS_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("fn", ("first_name", "sha256_first_name")),
    ("ln", ("last_name", "sha256_last_name")),
    ("ct", ("city",)),
    ("st", ("region",)),
    ("zp", ("postal_code",)),
    ("country", ("country",)),
)

# field → the key it gives (fields of one key are tried in the order above)
_PERSON_KEY = {f: key for key, fields in PERSON_FIELDS for f in fields}
_ADDRESS_KEY = {f: key for key, fields in ADDRESS_FIELDS for f in fields}


def _keys_given(data: dict[Any, Any], keys: dict[str, str]) -> set[str]:
    """The keys `data` has a field for: only those are looked at."""
    return {keys[f] for f in data if f in keys}


def _first(out: dict[str, str], key: str, values: list[Any], country: str | None) -> None:
    for value in values:
        if isinstance(value, list):
            value = next((v for v in value if v not in (None, "")), None)
        if value is None or value == "" or isinstance(value, (bool, dict)):
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        hashed = identity.hash_value(key, value, country)
        if hashed:
            out[key] = hashed
            return


def remember(
    cookies: dict[str, str],
    given: dict[str, str],
    settings: Settings,
    *,
    now: float,
    attributes: str,
    denied: str | None = None,
    forget: bool = False,
) -> Stored:
    """Keep `given` (hashed keys, see `hashed_keys`) in the cookie, merged into what it holds.

    `denied` names the consent type the hit denies (the cookie is then removed); `forget`
    removes it (logout). `attributes` are the cookie attributes (`; Domain=...; Path=/ ...`).
    A key given again replaces the stored one; when an email, phone or external id differs
    from the stored one, the visitor is someone else and nothing stored is kept."""
    present = COOKIE in cookies
    if settings.identity_cookie_days <= 0:
        return _removed(attributes, "removed: identity cookie is off") if present else Stored()
    if denied:
        return _removed(attributes, f"removed: {denied} denied") if present else Stored()
    if forget:
        return _removed(attributes, "removed: logout") if present else Stored()
    stored = read(cookies, settings, now) if present else NOTHING
    if not given and stored.status != "rotated":
        if stored.status in ("invalid", "expired"):
            return _removed(attributes, f"removed: {stored.status}")
        return Stored(keys=tuple(stored.keys))
    if given and any(
        k in given and stored.keys.get(k) not in (None, given[k]) for k in PERSON_KEYS
    ):
        merged, action = dict(given), "replaced: another person"
    elif given:
        merged = {**stored.keys, **given}
        action = "updated" if stored.keys else "stored"
    else:
        merged, action = dict(stored.keys), "re-sealed with the current key"
    issued_at = int(now) if given else stored.issued_at
    lifetime = settings.identity_cookie_days * 86400
    max_age = lifetime if given else max(0, int(issued_at + lifetime - now))
    value = keyring(settings).seal(merged, issued_at)
    header = f"{COOKIE}={value}; Max-Age={max_age}{attributes}; HttpOnly"
    return Stored([header], action, tuple(k for k in KEYS if k in merged))


def _removed(attributes: str, action: str) -> Stored:
    return Stored([f"{COOKIE}=; Max-Age=0{attributes}; HttpOnly"], action)
