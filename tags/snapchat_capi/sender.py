"""The Snapchat sender: one Conversions API v3 request per batch (≤ 1000 events).

    POST {TAGSERVER_SNAPCHAT_API_URL}/v3/{pixel_id}/events?access_token=…
    {"data": [event, …], "test_event_code"?: "…"}

A 400 (`status: INVALID`) for a batch is halved until the refused event stands alone, and
dead-lettered with Snap's `reason` and error messages. 429 waits at least a minute; 5xx and
timeouts are retried; 401/403 (the token) are never retried. The token travels only as the
query parameter and is removed from every error, response and log line.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from tagserver import Delivery, Message, Setting
from tagserver.toolkit.conversions import (
    TokenSender,
    VendorAnswer,
    install_token_log_filter,
    post_json,
    refused_request,
)
from tagserver.toolkit.redact import Redactor

__all__ = ["API_URL", "SnapchatSender"]

log = logging.getLogger("tagserver.tag.snapchat_capi")

API_URL = Setting(
    "snapchat_api_url",
    "https://tr.snapchat.com",
    "Base URL of Snapchat's Conversions API (tests, proxies).",
)


class SnapchatSender(TokenSender):
    vendor = "snapchat"
    log = log

    def __init__(self, http: Any, settings: Any) -> None:
        super().__init__(http, settings)
        install_token_log_filter()  # the token travels in the URL, which httpx logs

    async def _post(
        self, route: dict[str, Any], token: str, redact: Redactor, messages: list[Message]
    ) -> VendorAnswer:
        base = self.settings.get(API_URL).rstrip("/")
        url = f"{base}/v3/{route['pixel_id']}/events"
        body: dict[str, Any] = {"data": [m.payload for m in messages]}
        if route.get("test_event_code"):
            body["test_event_code"] = route["test_event_code"]
        content = orjson.dumps(body)
        shown: dict[str, Any] = {
            "method": "POST", "url": url, "events": len(messages), "bytes": len(content),
        }  # fmt: skip
        if "test_event_code" in body:
            shown["test_event_code"] = body["test_event_code"]
        posted = await post_json(
            self.http, url, content,
            headers={"content-type": "application/json"},
            params={"access_token": token}, timeout=self.settings.send_timeout_seconds,
            vendor="Snapchat", redact=redact, shown=shown,
        )  # fmt: skip
        if posted.failure is not None:
            return VendorAnswer(posted.failure)
        response, parsed = posted.response, posted.body
        assert response is not None
        status = response.status_code
        shown_body = redact(parsed) if parsed is not None else redact.text(response.text[:2000])
        common: dict[str, Any] = {
            "status": status, "latency_ms": posted.latency_ms, "request": shown,
            "response": shown_body,
        }  # fmt: skip
        body_in = parsed if isinstance(parsed, dict) else {}
        verdict = str(body_in.get("status") or "")
        if 200 <= status < 300 and verdict != "INVALID":
            return VendorAnswer(Delivery("delivered", **common))
        found = body_in.get("errors")
        errors: dict[str, Any] = found if isinstance(found, dict) else {}
        codes = [str(c) for c in errors.get("codes") or [] if c is not None][:5]
        messages_text = [str(m) for m in errors.get("error_msgs") or [] if m is not None][:5]
        reason = str(body_in.get("reason") or "")
        parts = [p for p in (reason, "; ".join(messages_text)) if p]
        text = (
            "Snapchat: " + " — ".join(parts)
            if parts
            else f"HTTP {status} from the Snapchat API: " + " ".join(response.text[:200].split())
        )
        error: dict[str, Any] = {"error": redact.text(text), "code": ",".join(codes)}

        def on_auth() -> None:
            log.error(
                "snapchat %s: the access token was refused (HTTP %d): create a new one in "
                "Ads Manager → Business Settings", messages[0].destination, status,
            )  # fmt: skip

        return refused_request(response, error, common, batch=len(messages), on_auth=on_auth)
