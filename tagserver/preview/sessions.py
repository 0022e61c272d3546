"""Preview sessions: what marks a hit as previewed, and for how long.

A session is a record in the shared store (id, name, expiry, stopped). Sources prove they
belong to it with a signed token (`tsp_` + itsdangerous): the signature makes tokens
unforgeable, the session record makes them expire, renewable and stoppable centrally, so a
link or header handed out earlier keeps working when the operator renews the session.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

from ..settings import Settings
from .store import Store

TOKEN_PREFIX = "tsp_"
# The token is `tsp_` + an itsdangerous payload: easy to spot, so it is redacted wherever it shows.
TOKEN_PATTERN = re.compile(
    re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+"
)
MAX_TOKEN_AGE = 7 * 86400  # a token older than this is refused even if its session lives on
CACHE_SECONDS = 1.0  # how stale a worker's view of a session may be (stop/renew elsewhere)
MAX_NAME = 80
VERIFIED_SECONDS = 60.0


@dataclass
class PreviewSession:
    id: str
    name: str
    created: float
    expires: float
    token: str
    stopped: bool = False

    def live(self, now: float | None = None) -> bool:
        return not self.stopped and (now or time.time()) < self.expires

    def remaining(self, now: float | None = None) -> int:
        return max(0, math.ceil(self.expires - (now or time.time())))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreviewSession:
        return cls(**{k: data[k] for k in ("id", "name", "created", "expires", "token")},
                   stopped=bool(data.get("stopped")))  # fmt: skip


class Sessions:
    """Start, renew, stop preview sessions; recognise their tokens on hits."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self._serializer: URLSafeTimedSerializer | None = None
        self._cache: dict[str, tuple[float, PreviewSession | None]] = {}
        self._verified: dict[str, tuple[float, str]] = {}

    @property
    def serializer(self) -> URLSafeTimedSerializer:
        if self._serializer is None:
            self._serializer = URLSafeTimedSerializer(
                self.settings.signing_key(), salt="tagserver.preview.session"
            )
        return self._serializer

    # -- tokens

    def sign(self, session_id: str) -> str:
        return TOKEN_PREFIX + str(self.serializer.dumps({"s": session_id}))

    def verify(self, token: str) -> str | None:
        """The session id a token was signed for, or None (tampered, foreign, too old).

        Checking a signature costs ~30 µs; a previewed browser sends the same token on every
        hit, so tokens verified in the last minute are remembered (a few hundred at most).
        """
        now = time.monotonic()
        known = self._verified.get(token)
        if known is not None and now - known[0] < VERIFIED_SECONDS:
            return known[1]
        sid = self._verify(token)
        if sid is not None:
            if len(self._verified) >= 256:
                self._verified.clear()
            self._verified[token] = (now, sid)
        return sid

    def _verify(self, token: str) -> str | None:
        if not token.startswith(TOKEN_PREFIX) or len(token) > 512:
            return None
        try:
            data = self.serializer.loads(token[len(TOKEN_PREFIX) :], max_age=MAX_TOKEN_AGE)
        except BadSignature:  # includes SignatureExpired
            return None
        sid = data.get("s") if isinstance(data, dict) else None
        return sid if isinstance(sid, str) else None

    # -- lifecycle (called from the UI routes, off the hot path)

    def start(self, name: str = "") -> PreviewSession:
        now = time.time()
        sid = secrets.token_hex(8)
        name = (name.strip() or time.strftime("session %H:%M", time.localtime(now)))[:MAX_NAME]
        session = PreviewSession(
            id=sid,
            name=name,
            created=now,
            expires=now + self.settings.preview_token_ttl_seconds,
            token=self.sign(sid),
        )
        self.store.put_session(session.as_dict())
        self._cache.pop(sid, None)
        return session

    def get(self, sid: str) -> PreviewSession | None:
        data = self.store.get_session(sid)
        return PreviewSession.from_dict(data) if data else None

    def all(self) -> list[PreviewSession]:
        return [PreviewSession.from_dict(d) for d in self.store.list_sessions()]

    def renew(self, sid: str) -> PreviewSession | None:
        """Push the expiry a full TTL from now and issue a fresh token (old ones stay valid)."""
        session = self.get(sid)
        if session is None:
            return None
        session.expires = time.time() + self.settings.preview_token_ttl_seconds
        session.stopped = False
        session.token = self.sign(sid)
        self.store.put_session(session.as_dict())
        self._cache.pop(sid, None)
        return session

    def stop(self, sid: str) -> PreviewSession | None:
        """Stop recording; the hits already recorded stay viewable."""
        session = self.get(sid)
        if session is None:
            return None
        session.stopped = True
        self.store.put_session(session.as_dict())
        self._cache.pop(sid, None)
        return session

    def delete(self, sid: str) -> None:
        self.store.delete_session(sid)
        self._cache.pop(sid, None)

    # -- the hot path

    def live_session(self, token: str) -> str | None:
        """Session id for a hit's token when its session is live. One store read per second
        per session per worker at most; a forged token never reaches the store."""
        sid = self.verify(token)
        if sid is None:
            return None
        now = time.monotonic()
        cached = self._cache.get(sid)
        if cached is None or now - cached[0] > CACHE_SECONDS:
            session = self.get(sid)
            if len(self._cache) > 1000:
                self._cache.clear()
            self._cache[sid] = cached = (now, session)
        session = cached[1]
        return sid if session is not None and session.live() else None
