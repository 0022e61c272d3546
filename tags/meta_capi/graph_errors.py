"""What a Graph API answer means for the events in it: delivered, retry, or never.

Branch on `code`/`error_subcode` only: the texts are localized and for humans. The table is
Meta's (Graph API error handling + Conversions API):

    retry, backoff        HTTP 5xx, timeout, connection error, is_transient, code 1, 2
    retry, ≥ 60 s         throttling: 4, 17, 32, 341, 613, 80000–80014; 368 (and alert)
    never                 100 (invalid parameter: 2804003 too old, 2804050 too little customer
                          information, 33 bad pixel …), 190/102 (token: alert), 10, 200–299
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tagserver import Outcome

__all__ = ["GraphError", "Verdict", "parse_error", "classify", "THROTTLE_FLOOR_SECONDS"]

THROTTLE_FLOOR_SECONDS = 60.0
THROTTLING = frozenset({4, 17, 32, 341, 613, *range(80000, 80015)})
TRANSIENT = frozenset({1, 2})
TOKEN = frozenset({190, 102})
PERMISSION = frozenset({10, *range(200, 300)})
INVALID_PARAMETER = 100
SPAM = 368


@dataclass(frozen=True)
class GraphError:
    """The `error` object of a Graph envelope."""

    message: str
    code: int | None
    subcode: int | None
    is_transient: bool
    user_title: str
    user_msg: str
    fbtrace_id: str

    @property
    def code_text(self) -> str:
        if self.code is None:
            return ""
        return f"{self.code}/{self.subcode}" if self.subcode else str(self.code)

    def describe(self) -> str:
        """Meta's message for humans: the technical one, then the user-facing title/text."""
        parts = [self.message or "Graph API error"]
        extra = ": ".join(p for p in (self.user_title, self.user_msg) if p)
        if extra and extra not in parts[0]:
            parts.append(extra)
        return " — ".join(parts)


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    retry_after: float | None = None
    bisect: bool = False  # code 100 on several events: split to find the bad one(s)
    alert: str = ""  # something an operator must fix (token, permissions, policy)
    error_class: str = ""  # Delivery.error_class: "auth" when the token is refused


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def parse_error(body: Any) -> GraphError | None:
    """The Graph error in a parsed response body, or None when it is not a Graph envelope."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return None
    error = body["error"]
    return GraphError(
        message=str(error.get("message") or ""),
        code=_int(error.get("code")),
        subcode=_int(error.get("error_subcode")),
        is_transient=error.get("is_transient") is True,
        user_title=str(error.get("error_user_title") or ""),
        user_msg=str(error.get("error_user_msg") or ""),
        fbtrace_id=str(error.get("fbtrace_id") or body.get("fbtrace_id") or ""),
    )


def classify(status: int, error: GraphError | None, batch_size: int) -> Verdict:
    """The verdict for a non-2xx answer (`error` None: not a Graph envelope)."""
    if error is None or error.code is None:
        # not Meta speaking (a proxy, a load balancer, an outage page): try again later;
        # the message's deadline bounds how long
        return Verdict("retry")
    code = error.code
    if code in THROTTLING:
        return Verdict("retry", retry_after=THROTTLE_FLOOR_SECONDS, error_class="throttled")
    if code == SPAM:
        return Verdict(
            "retry",
            retry_after=THROTTLE_FLOOR_SECONDS,
            alert="Meta temporarily blocked this app for policy reasons (code 368)",
        )
    if error.is_transient or code in TRANSIENT:
        return Verdict("retry")
    if code == INVALID_PARAMETER:
        return Verdict("permanent", bisect=batch_size > 1, error_class="invalid")
    if code in TOKEN:
        return Verdict(
            "permanent",
            error_class="auth",
            alert=f"the access token is invalid or expired (code {error.code_text}): "
            "create a new one in Events Manager",
        )
    if code in PERMISSION:
        return Verdict(
            "permanent",
            error_class="auth",
            alert=f"the token may not send events to this pixel (code {error.code_text})",
        )
    if status >= 500:
        return Verdict("retry")
    return Verdict("permanent")
