"""Remove secrets from anything that could be shown: traces, logs, errors, dead letters.

Which values are secret is declared, never guessed: the settings marked secret, the container's
secret variables, and each tag's `secret=True` params. A tag's secret params travel with the
route they built (`Outgoing.secrets`, stored beside the route in the outbox), so the delivery
lane of a destination redacts with exactly its own secrets and the container's, in one
`Redactor`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

import orjson

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 4  # shorter values would redact ordinary words

# query parameters and headers that carry credentials whatever the container says
SENSITIVE_KEYS = frozenset(
    {"access_token", "authorization", "cookie", "set-cookie", "x-tagserver-preview",
     "tagserver_preview", "appsecret_proof", "api_key", "apikey", "token", "password"}
)  # fmt: skip
# a credential-named key as orjson writes it, found by the last word of its name (`token":`
# finds "access_token": and "token":); a key such as "csrf_token" is a false alarm the walk
# then settles. Fewer substring scans of every line (the log tag's, notes, dry runs).
_WORDS = {re.split("[_-]", key)[-1] for key in SENSITIVE_KEYS}
_KEY_MARKS = tuple(
    sorted(f'{w}":' for w in _WORDS if not any(w != o and w.endswith(o) for o in _WORDS))
)
_URL_TOKEN_MARKS = ("access_token=", "appsecret_proof=", "tagserver_preview=")
_KEY_AND_URL_MARKS = _KEY_MARKS + _URL_TOKEN_MARKS
LIBRARY_LOGGERS = ("httpx", "httpcore")  # they log vendor request URLs (tokens in queries)
_TOKEN_IN_URL = re.compile(r"((?:access_token|appsecret_proof|tagserver_preview)=)[^&\s\"']+", re.I)


def secret_values(*values: Any) -> tuple[str, ...]:
    """Every text inside secret param values (an object param such as `headers` holds several).

    A value with spaces ("Bearer abc…") also gives its last word: a vendor may echo the
    credential alone."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            found.append(value)
            words = value.split()
            if len(words) > 1:
                found.append(words[-1])
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found.append(str(value))

    for value in values:
        walk(value)
    return tuple(dict.fromkeys(s for s in found if len(s) >= MIN_SECRET_LENGTH))


class Redactor:
    """Replaces every known secret value (and credential-looking keys) with `[redacted]`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = frozenset(s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH)
        values = sorted(self.secrets, key=len, reverse=True)
        self.values = tuple(values)
        # the secrets as they appear inside a JSON string
        self._in_json = tuple(orjson.dumps(v).decode()[1:-1] for v in values)
        self._pattern = re.compile("|".join(re.escape(v) for v in values)) if values else None

    def extended(self, secrets: Iterable[str]) -> Redactor:
        """This redactor's secrets and `secrets`, in one pattern."""
        return Redactor([*self.secrets, *secrets])

    def text(self, value: str) -> str:
        # Substring tests first: most strings hold no secret and no `=`, and `in` is far
        # cheaper than a regex scan (the log tag and notes pass every string of an event).
        for secret in self.values:
            if secret in value:
                value = self._pattern.sub(REDACTED, value)  # type: ignore[union-attr]  # a pattern whenever there are values
                break
        if "=" in value:
            value = _TOKEN_IN_URL.sub(r"\1" + REDACTED, value)
        return value

    def may_redact_json(self, line: str) -> bool:
        """False when redacting the value `line` serializes (JSON) would change nothing.

        A few substring tests on the one line instead of a walk over every string: a secret
        value, a credential-named key, or a URL token. True may be a false alarm."""
        for secret in self._in_json:
            if secret in line:
                return True
        lower = line.lower()  # the walk compares keys lower-cased
        for mark in _KEY_MARKS if "=" not in line else _KEY_AND_URL_MARKS:
            if mark in lower:
                return True
        return False

    def data(self, value: Any) -> Any:
        """`self(value)` for JSON-shaped data (a tag's notes, a dry run's payload): when one
        serialization shows nothing to redact, a copy made by orjson instead of the walk
        (the same value: a copy that would differ, say a tuple or a NaN, takes the walk)."""
        try:
            line = orjson.dumps(value)
        except TypeError:  # not JSON-shaped
            return self(value)
        if not self.may_redact_json(line.decode()):
            copy = orjson.loads(line)
            if copy == value:
                return copy
        return self(value)

    def __call__(self, value: Any, _key: str = "") -> Any:
        if isinstance(value, str):
            if value and _key and _key.lower() in SENSITIVE_KEYS:
                return REDACTED
            return self.text(value)
        if isinstance(value, dict):
            return {k: self(v, str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self(v) for v in value]
        return value


class RedactingFilter(logging.Filter):
    """Cleans the records of another library's logger (httpx logs each request's URL) with
    the redactors `redactors()` gives at the time of the record. Installed and removed
    explicitly by whoever owns those secrets (the dispatcher), never on import."""

    def __init__(self, redactors: Callable[[], Iterable[Redactor]]) -> None:
        super().__init__()
        self.redactors = redactors

    def install(self, loggers: Iterable[str] = LIBRARY_LOGGERS) -> None:
        for name in loggers:
            logging.getLogger(name).addFilter(self)

    def remove(self, loggers: Iterable[str] = LIBRARY_LOGGERS) -> None:
        for name in loggers:
            logging.getLogger(name).removeFilter(self)

    def clean(self, text: str) -> str:
        for redactor in (_URL_TOKENS, *self.redactors()):
            text = redactor.text(text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = self.clean(record.msg)
        if isinstance(record.args, dict):
            record.args = {k: self._arg(v) for k, v in record.args.items()}
        elif record.args:
            record.args = tuple(self._arg(arg) for arg in record.args)
        return True

    def _arg(self, arg: Any) -> Any:
        if isinstance(arg, (int, float)):  # numbers stay numbers, for %d
            return arg
        shown = str(arg)
        clean = self.clean(shown)
        return clean if clean != shown else arg


_URL_TOKENS = Redactor()  # credentials in URL query strings only
