"""The Pinterest sender: one Conversions API request per batch (≤ 1000 events).

    POST {TAGSERVER_PINTEREST_API_URL}/v5/ad_accounts/{ad_account_id}/events[?test=true]
    Authorization: Bearer <token>
    {"data": [event, …]}

Pinterest answers per event (`events[i].status` processed | failed, in request order), in a
200 and in a 422 ("not all events were processed"): failed events are dead-lettered with
Pinterest's `error_message`, processed ones count as delivered and are never resent. A 400
for the whole request is halved until the refused event stands alone. 429 waits at least a
minute; 503 and other 5xx are retried; 401/403 (token, ad account access) are never retried.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from tagserver import Delivery, Message, Setting
from tagserver.toolkit.conversions import (
    TokenSender,
    VendorAnswer,
    post_json,
    refused_request,
)
from tagserver.toolkit.redact import Redactor

__all__ = ["API_URL", "PinterestSender"]

log = logging.getLogger("tagserver.tag.pinterest_capi")

API_URL = Setting(
    "pinterest_api_url",
    "https://api.pinterest.com",
    "Base URL of Pinterest's Conversions API (tests, proxies).",
)


class PinterestSender(TokenSender):
    vendor = "pinterest"
    log = log

    async def _post(
        self, route: dict[str, Any], token: str, redact: Redactor, messages: list[Message]
    ) -> VendorAnswer:
        base = self.settings.get(API_URL).rstrip("/")
        url = f"{base}/v5/ad_accounts/{route['ad_account_id']}/events"
        query = {"test": "true"} if route.get("test") else None
        content = orjson.dumps({"data": [m.payload for m in messages]})
        shown: dict[str, Any] = {
            "method": "POST", "url": url, "events": len(messages), "bytes": len(content),
        }  # fmt: skip
        if query:
            shown["test"] = True
        posted = await post_json(
            self.http, url, content,
            headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
            params=query, timeout=self.settings.send_timeout_seconds,
            vendor="Pinterest", redact=redact, shown=shown,
        )  # fmt: skip
        if posted.failure is not None:
            return VendorAnswer(posted.failure)
        response, parsed = posted.response, posted.body
        assert response is not None
        status = response.status_code
        shown_body = redact(parsed) if parsed is not None else redact.text(response.text[:2000])
        common: dict[str, Any] = {
            "status": status, "latency_ms": posted.latency_ms, "request": shown,
        }  # fmt: skip
        body = parsed if isinstance(parsed, dict) else {}
        code = body.get("code")
        code_text = "" if code is None else str(code)
        message = str(body.get("message") or "")
        if status == 200 or status == 422:
            statuses = body.get("events")
            if status == 422 and isinstance(body.get("details"), dict):
                statuses = body["details"].get("events")
            per = _per_event(statuses, len(messages), redact, code_text, common)
            if per is not None:
                first = next((d for d in per if d.outcome != "delivered"), per[0])
                for delivery in per:
                    delivery.response = shown_body
                return VendorAnswer(first, per_message=per)
            if status == 200:
                return VendorAnswer(Delivery("delivered", response=shown_body, **common))
        text = (
            f"Pinterest code {code_text}: {message}"
            if message
            else (f"HTTP {status} from the Pinterest API: " + " ".join(response.text[:200].split()))
        )
        error: dict[str, Any] = {
            "error": redact.text(text), "code": code_text, "response": shown_body,
        }  # fmt: skip

        def on_auth() -> None:
            log.error(
                "pinterest %s: %s", messages[0].destination,
                "the access token was refused or may not use this ad account "
                f"(HTTP {status}, code {code_text})",
            )  # fmt: skip

        return refused_request(response, error, common, batch=len(messages), on_auth=on_auth)


def _per_event(
    statuses: Any, count: int, redact: Redactor, code: str, common: dict[str, Any]
) -> list[Delivery] | None:
    """One delivery per event from Pinterest's `events` list; None when it does not match."""
    if not isinstance(statuses, list) or len(statuses) != count:
        return None
    out = []
    for entry in statuses:
        entry = entry if isinstance(entry, dict) else {}
        if entry.get("status") == "processed":
            out.append(Delivery("delivered", **common))
        else:
            reason = str(entry.get("error_message") or "event not processed")
            out.append(Delivery("permanent", error=redact.text(reason), code=code, **common))
    return out
