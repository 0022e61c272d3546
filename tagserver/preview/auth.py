"""Who may open /preview: the operator, with TAGSERVER_PREVIEW_PASSWORD or the start-up token.

Signing in sets a signed, expiring, HttpOnly, SameSite=Strict cookie (Secure on https).
Failed attempts are counted in the shared store (so all workers count together) and
throttled per client address and in all.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from ..settings import Settings
from .store import Store

log = logging.getLogger("tagserver.preview")

LOGIN_COOKIE = "tagserver_preview_auth"
LOGIN_TTL = 12 * 3600
TOKEN_FILE = "preview_login_token"
FAILURE_WINDOW = 60.0
MAX_FAILURES_PER_ADDRESS = 5  # per FAILURE_WINDOW
MAX_FAILURES_TOTAL = 50  # per FAILURE_WINDOW, all addresses together
MAX_SECRET_LENGTH = 1024


def token_path(settings: Settings) -> Path:
    return settings.data_path / TOKEN_FILE


def _private_tmp(path: Path, text: str) -> Path:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return tmp


def new_login_token(settings: Settings) -> str:
    """A fresh sign-in token, written where every worker reads it (owner-only file)."""
    token = secrets.token_urlsafe(24)
    path = token_path(settings)
    os.replace(_private_tmp(path, token), path)
    return token


def login_token(settings: Settings) -> tuple[str, bool]:
    """The current sign-in token and whether this call created it (first process wins)."""
    path = token_path(settings)
    if path.exists():
        return path.read_text().strip(), False
    tmp = _private_tmp(path, secrets.token_urlsafe(24))
    try:
        os.link(tmp, path)
        created = True
    except FileExistsError:
        created = False
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip(), created


class Auth:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self._serializer: URLSafeTimedSerializer | None = None

    @property
    def serializer(self) -> URLSafeTimedSerializer:
        if self._serializer is None:
            self._serializer = URLSafeTimedSerializer(
                self.settings.signing_key(), salt="tagserver.preview.login"
            )
        return self._serializer

    @property
    def uses_password(self) -> bool:
        return bool(self.settings.preview_password)

    def _fingerprint(self) -> str:
        """Changes when the password changes, which signs everybody out."""
        if not self.uses_password:
            return "token"
        digest = hashlib.sha256(b"tagserver-preview:" + self.settings.preview_password.encode())
        return digest.hexdigest()[:16]

    def check_secret(self, given: str) -> bool:
        if not given or len(given) > MAX_SECRET_LENGTH:
            return False
        expected = (
            self.settings.preview_password if self.uses_password else login_token(self.settings)[0]
        )
        return hmac.compare_digest(given.encode(), expected.encode())

    # -- throttling

    def retry_after(self, address: str) -> int | None:
        """Seconds to wait when this address (or everybody) failed too often, else None."""
        if (
            self.store.failures(f"ip:{address}", FAILURE_WINDOW) >= MAX_FAILURES_PER_ADDRESS
            or self.store.failures("all", FAILURE_WINDOW) >= MAX_FAILURES_TOTAL
        ):
            return int(FAILURE_WINDOW)
        return None

    def failed(self, address: str) -> None:
        self.store.count_failure(f"ip:{address}", FAILURE_WINDOW)
        self.store.count_failure("all", FAILURE_WINDOW)
        log.warning("preview: failed sign-in from %s", address)

    def succeeded(self, address: str) -> None:
        self.store.reset_failures(f"ip:{address}")

    # -- the cookie

    def signed_in(self, request: Request) -> bool:
        value = request.cookies.get(LOGIN_COOKIE)
        if not value or len(value) > 512:
            return False
        try:
            data = self.serializer.loads(value, max_age=LOGIN_TTL)
        except BadSignature:
            return False
        return isinstance(data, dict) and hmac.compare_digest(
            str(data.get("v", "")), self._fingerprint()
        )

    def sign_in(self, response: Response, secure: bool) -> None:
        response.set_cookie(
            LOGIN_COOKIE,
            str(self.serializer.dumps({"v": self._fingerprint()})),
            max_age=LOGIN_TTL,
            path=self.settings.root_path + "/preview",
            httponly=True,
            secure=secure,
            samesite="strict",
        )

    def sign_out(self, response: Response, secure: bool) -> None:
        response.delete_cookie(
            LOGIN_COOKIE,
            path=self.settings.root_path + "/preview",
            httponly=True,
            secure=secure,
            samesite="strict",
        )
