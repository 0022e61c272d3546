"""Remove secrets from anything that could be shown: traces, logs, errors, dead letters."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

REDACTED = "[redacted]"

# query parameters and headers that carry credentials whatever the container says
SENSITIVE_KEYS = frozenset(
    {"access_token", "authorization", "cookie", "set-cookie", "x-tagserver-preview",
     "tagserver_preview", "appsecret_proof", "api_key", "apikey", "token", "password"}
)  # fmt: skip
_TOKEN_IN_URL = re.compile(r"((?:access_token|appsecret_proof|tagserver_preview)=)[^&\s\"']+", re.I)


class Redactor:
    """Replaces every known secret value (and credential-looking keys) with `[redacted]`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(v) for v in values)) if values else None

    def text(self, value: str) -> str:
        if self._pattern is not None:
            value = self._pattern.sub(REDACTED, value)
        return _TOKEN_IN_URL.sub(r"\1" + REDACTED, value)

    def __call__(self, value: Any, _key: str = "") -> Any:
        if isinstance(value, str):
            return REDACTED if _key.lower() in SENSITIVE_KEYS and value else self.text(value)
        if isinstance(value, dict):
            return {k: self(v, str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self(v) for v in value]
        return value
