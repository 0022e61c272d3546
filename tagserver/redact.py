"""Remove secrets from anything that could be shown: traces, logs, errors, dead letters."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import orjson

REDACTED = "[redacted]"

# query parameters and headers that carry credentials whatever the container says
SENSITIVE_KEYS = frozenset(
    {"access_token", "authorization", "cookie", "set-cookie", "x-tagserver-preview",
     "tagserver_preview", "appsecret_proof", "api_key", "apikey", "token", "password"}
)  # fmt: skip
_KEY_MARKS = tuple(f'"{key}":' for key in SENSITIVE_KEYS)  # a key, as orjson writes it
_URL_TOKENS = ("access_token=", "appsecret_proof=", "tagserver_preview=")
_TOKEN_IN_URL = re.compile(r"((?:access_token|appsecret_proof|tagserver_preview)=)[^&\s\"']+", re.I)


class Redactor:
    """Replaces every known secret value (and credential-looking keys) with `[redacted]`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        self.values = tuple(values)
        # the secrets as they appear inside a JSON string
        self._in_json = tuple(orjson.dumps(v).decode()[1:-1] for v in values)
        self._pattern = re.compile("|".join(re.escape(v) for v in values)) if values else None

    def text(self, value: str) -> str:
        # Substring tests first: most strings hold no secret and no `=`, and `in` is far
        # cheaper than a regex scan (the log tag and notes pass every string of an event).
        for secret in self.values:
            if secret in value:
                value = self._pattern.sub(REDACTED, value)  # type: ignore[union-attr]
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
        for mark in _KEY_MARKS if "=" not in line else _KEY_MARKS + _URL_TOKENS:
            if mark in lower:
                return True
        return False

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
