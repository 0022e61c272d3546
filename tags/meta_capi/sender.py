"""The Meta sender: one Graph API request per batch (≤ 1000 events), verdicts per event.

    POST {TAGSERVER_META_GRAPH_URL}/{version}/{pixel_id}/events?access_token=…
    {"data": [event, …], "test_event_code"?: "…", "partner_agent"?: "…"}

Meta refuses a whole request for one bad event (code 100). The sender then splits the batch
in halves, and halves again, until each refused event stands alone: those are dead-lettered
with Meta's message, every other event is delivered. A throttled or failing Graph stops the
splitting at once: what is left is retried later (never resent in a tight loop).

The access token travels only as the query parameter of the request. It never appears in a
`Delivery` (errors, responses), in an exception leaving this module, or in a log line:
httpx's own request log line gets the token redacted by the conversions toolkit's filter.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
import orjson

from tagserver import Delivery, Message, Setting
from tagserver.toolkit.conversions import (
    MAX_REQUESTS_PER_SEND,
    TokenSender,
    VendorAnswer,
    install_token_log_filter,
)
from tagserver.toolkit.http import elapsed_ms, retry_after_seconds
from tagserver.toolkit.redact import Redactor

from .graph_errors import THROTTLE_FLOOR_SECONDS, classify, parse_error

__all__ = ["MetaSender", "MAX_REQUESTS_PER_SEND"]

log = logging.getLogger("tagserver.tag.meta_capi")


GRAPH_URL = Setting(
    "meta_graph_url", "https://graph.facebook.com", "Base URL of the Graph API (tests, proxies)."
)


class MetaSender(TokenSender):
    """Sends batches of server events for one destination (pixel, token, test code, version)."""

    vendor = "meta"
    log = log
    label = "Meta"

    def __init__(self, http: Any, settings: Any) -> None:
        super().__init__(http, settings)
        install_token_log_filter()  # the token travels in the URL, which httpx logs

    async def _post(
        self, route: dict[str, Any], token: str, redact: Redactor, messages: list[Message]
    ) -> VendorAnswer:
        graph = self.settings.get(GRAPH_URL).rstrip("/")
        url = f"{graph}/{route.get('api_version')}/{route.get('pixel_id')}/events"
        body: dict[str, Any] = {"data": [_payload(m.payload) for m in messages]}
        for key in ("test_event_code", "partner_agent"):
            if route.get(key):
                body[key] = route[key]
        content = orjson.dumps(body)
        shown: dict[str, Any] = {  # what preview shows of the request: never the token
            "method": "POST",
            "url": url,
            "events": len(messages),
            "bytes": len(content),
            **{k: body[k] for k in ("test_event_code", "partner_agent") if k in body},
        }
        timeout = self.settings.send_timeout_seconds
        started = time.perf_counter()
        try:
            response = await self.http.post(
                url,
                params={"access_token": token},
                content=content,
                headers={"content-type": "application/json"},
                timeout=timeout,
            )
        except httpx.TimeoutException as exc:
            error = f"no answer from the Graph API within {timeout:g} s ({type(exc).__name__})"
            return VendorAnswer(
                Delivery("retry", error=error, latency_ms=elapsed_ms(started), request=shown)
            )
        except httpx.HTTPError as exc:
            error = redact.text(f"cannot reach the Graph API: {type(exc).__name__}: {exc}")
            return VendorAnswer(
                Delivery("retry", error=error, latency_ms=elapsed_ms(started), request=shown)
            )
        latency = elapsed_ms(started)
        status = response.status_code
        try:
            parsed: Any = response.json()
        except ValueError:
            parsed = None
        header_trace = response.headers.get("x-fb-trace-id", "")
        if 200 <= status < 300:
            trace = parsed.get("fbtrace_id", "") if isinstance(parsed, dict) else ""
            return VendorAnswer(
                Delivery(
                    "delivered",
                    status=status,
                    trace=str(trace or header_trace),
                    response=redact(parsed) if parsed is not None else None,
                    latency_ms=latency,
                    request=shown,
                )
            )

        graph_error = parse_error(parsed)
        verdict = classify(status, graph_error, len(messages))
        retry_after = _retry_after(response, verdict.retry_after)
        if graph_error is not None:
            text = graph_error.describe()
            code, trace = graph_error.code_text, graph_error.fbtrace_id or header_trace
        else:
            snippet = " ".join(response.text[:200].split())
            text = f"HTTP {status} from the Graph API" + (f": {snippet}" if snippet else "")
            code, trace = "", header_trace
        if verdict.alert:
            log.error("meta %s: %s", messages[0].destination, redact.text(verdict.alert))
        return VendorAnswer(
            Delivery(
                verdict.outcome,
                status=status,
                error=redact.text(text),
                code=code,
                trace=trace,
                retry_after=retry_after,
                response=redact(parsed)
                if parsed is not None
                else redact.text(response.text[:2000]),
                latency_ms=latency,
                request=shown,
                error_class=verdict.error_class,
            ),
            bisect=verdict.bisect,
        )


def _payload(payload: Any) -> Any:
    """A stored payload: a dict, or already-serialized JSON (inserted as is)."""
    if isinstance(payload, (bytes, str)):
        return orjson.Fragment(payload)
    return payload


def _retry_after(response: httpx.Response, floor: float | None) -> float | None:
    """Seconds to wait: the larger of `floor` (throttling), `Retry-After` and Meta's
    `estimated_time_to_regain_access` (minutes, in the business use case usage header)."""
    waits = [floor] if floor else []
    header = retry_after_seconds(response.headers.get("retry-after"))
    if header is not None:
        waits.append(header)
    usage = response.headers.get("x-business-use-case-usage")
    if usage:
        try:
            data = orjson.loads(usage)
        except orjson.JSONDecodeError:
            data = None
        for entries in data.values() if isinstance(data, dict) else ():
            for entry in entries if isinstance(entries, list) else ():
                minutes = (
                    entry.get("estimated_time_to_regain_access")
                    if isinstance(entry, dict)
                    else None
                )
                if isinstance(minutes, (int, float)) and minutes > 0:
                    waits.append(max(float(minutes) * 60, THROTTLE_FLOOR_SECONDS))
    return max(waits) if waits else None
