"""The TikTok sender: one Events API request per batch (≤ 1000 events), verdicts per event.

    POST {TAGSERVER_TIKTOK_API_URL}/open_api/{version}/event/track/
    Access-Token: <token>
    {"event_source": "web", "event_source_id": "<pixel code>", "test_event_code"?: "…",
     "partner_name"?: "…", "data": [event, …]}

TikTok answers HTTP 200 for most failures: the body's `code` decides (0 and 20001 are
success). One bad event fails the whole batch (40000/40002): the batch is halved until each
refused event stands alone. Throttling codes wait at least a minute. Test events go one per
request (TikTok's Test Events view is not known to accept batches).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from tagserver import Delivery, Message, Sender, Setting
from tagserver.toolkit.conversions import VendorAnswer, isolate, post_json
from tagserver.toolkit.http import retry_after_seconds
from tagserver.toolkit.redact import Redactor

__all__ = ["API_URL", "TikTokSender", "classify"]

log = logging.getLogger("tagserver.tag.tiktok_events")

THROTTLE_FLOOR_SECONDS = 60.0
API_URL = Setting(
    "tiktok_api_url",
    "https://business-api.tiktok.com",
    "Base URL of TikTok's Events API (tests, proxies).",
)
OK = frozenset({0, 20001})
THROTTLED = frozenset({40100, 40132, 61000, 60001})
RETRY = frozenset({50000, 50002, 40700, *range(51000, 51100), *range(52000, 52205)})
AUTH = frozenset({40102, 40104, 40105, 40001, 40003})
CONFIG = frozenset({40063, 40051})  # partner_name, API version: every event fails alike


def classify(status: int, code: int | None) -> tuple[str, float | None, bool, str]:
    """(outcome, retry-after floor, bisect?, alert) for a TikTok answer that is not success."""
    if code in THROTTLED or status == 429:
        return "retry", THROTTLE_FLOOR_SECONDS, False, ""
    if code in RETRY or status >= 500 or code is None:
        return "retry", None, False, ""
    if code in AUTH or status in (401, 403):
        return (
            "permanent",
            None,
            False,
            (
                f"TikTok refused the access token (code {code}): generate a new one in "
                "Events Manager → pixel → Settings"
            ),
        )
    if code in CONFIG:
        return "permanent", None, False, f"TikTok refused the request's setup (code {code})"
    return "permanent", None, True, ""


class TikTokSender(Sender):
    async def send(self, route: dict[str, Any], batch: list[Message]) -> list[Delivery]:
        if not batch:
            return []
        token = str(route.get("access_token") or "")
        redact = Redactor([token])

        async def post(messages: list[Message]) -> VendorAnswer:
            return await self._post(route, token, redact, messages)

        if route.get("test_event_code"):
            out: list[Delivery] = []
            for message in batch:
                out.extend(await isolate([message], post, vendor="tiktok", log=log))
            return out
        return await isolate(batch, post, vendor="tiktok", log=log)

    async def _post(
        self, route: dict[str, Any], token: str, redact: Redactor, messages: list[Message]
    ) -> VendorAnswer:
        base = self.settings.get(API_URL).rstrip("/")
        url = f"{base}/open_api/{route.get('api_version')}/event/track/"
        body: dict[str, Any] = {
            "event_source": "web",
            "event_source_id": route["pixel_code"],
        }
        for key in ("test_event_code", "partner_name"):
            if route.get(key):
                body[key] = route[key]
        body["data"] = [m.payload for m in messages]
        content = orjson.dumps(body)
        shown = {"method": "POST", "url": url, "events": len(messages), "bytes": len(content)}
        if "test_event_code" in body:
            shown["test_event_code"] = body["test_event_code"]
        posted = await post_json(
            self.http, url, content,
            headers={"content-type": "application/json", "access-token": token},
            params=None, timeout=self.settings.send_timeout_seconds,
            vendor="TikTok", redact=redact, shown=shown,
        )  # fmt: skip
        if posted.failure is not None:
            return VendorAnswer(posted.failure)
        response, parsed = posted.response, posted.body
        assert response is not None
        status = response.status_code
        code = parsed.get("code") if isinstance(parsed, dict) else None
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        message = str(parsed.get("message") or "") if isinstance(parsed, dict) else ""
        request_id = str(parsed.get("request_id") or "") if isinstance(parsed, dict) else ""
        shown_body = redact(parsed) if parsed is not None else redact.text(response.text[:2000])
        if 200 <= status < 300 and code in OK:
            return VendorAnswer(
                Delivery(
                    "delivered",
                    status=status,
                    trace=request_id,
                    response=shown_body,
                    latency_ms=posted.latency_ms,
                    request=shown,
                )  # fmt: skip
            )
        outcome, floor, bisect, alert = classify(status, code)
        waits = [w for w in (floor, retry_after_seconds(response.headers.get("retry-after"))) if w]
        if message:
            text = f"TikTok code {code}: {message}"
        else:
            snippet = " ".join(response.text[:200].split())
            text = f"HTTP {status} from the TikTok API" + (f": {snippet}" if snippet else "")
        if alert:
            log.error("tiktok %s: %s", messages[0].destination, redact.text(alert))
        return VendorAnswer(
            Delivery(
                outcome,  # type: ignore[arg-type]
                status=status,
                error=redact.text(text),
                code="" if code is None else str(code),
                trace=request_id,
                retry_after=max(waits) if waits else None,
                response=shown_body,
                latency_ms=posted.latency_ms,
                request=shown,
            ),
            bisect=bisect and len(messages) > 1,
        )
