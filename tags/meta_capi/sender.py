"""The Meta sender: one Graph API request per batch (≤ 1000 events), verdicts per event.

    POST {TAGSERVER_META_GRAPH_URL}/{version}/{pixel_id}/events?access_token=…
    {"data": [event, …], "test_event_code"?: "…", "partner_agent"?: "…"}

Meta refuses a whole request for one bad event (code 100). The sender then splits the batch
in halves, and halves again, until each refused event stands alone: those are dead-lettered
with Meta's message, every other event is delivered. A throttled or failing Graph stops the
splitting at once: what is left is retried later (never resent in a tight loop).

The access token travels only as the query parameter of the request. It never appears in a
`Delivery` (errors, responses), in an exception leaving this module, or in a log line:
httpx's own request log line gets the token redacted by a filter installed here.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from typing import Any

import httpx
import orjson

from tagserver import Delivery, Message, Sender, Setting
from tagserver.toolkit.http import elapsed_ms, retry_after_seconds
from tagserver.toolkit.redact import Redactor

from .graph_errors import THROTTLE_FLOOR_SECONDS, classify, parse_error

__all__ = ["MetaSender"]

log = logging.getLogger("tagserver.tag.meta_capi")

MAX_REQUESTS_PER_SEND = 64  # bound on the requests one batch may take while isolating events
_TOKEN_IN_TEXT = re.compile(r"(access_token=)[^&\s\"'#]+", re.I)


class _RedactTokens(logging.Filter):
    """Removes `access_token=…` from httpx's and httpcore's log records, whatever the level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(
                _TOKEN_IN_TEXT.sub(r"\1[redacted]", str(a)) if "access_token" in str(a) else a
                for a in args
            )
        if isinstance(record.msg, str) and "access_token" in record.msg:
            record.msg = _TOKEN_IN_TEXT.sub(r"\1[redacted]", record.msg)
        return True


def _install_log_filter() -> None:
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactTokens) for f in logger.filters):
            logger.addFilter(_RedactTokens())


_install_log_filter()


@dataclasses.dataclass
class _Answer:
    delivery: Delivery
    bisect: bool = False


GRAPH_URL = Setting(
    "meta_graph_url", "https://graph.facebook.com", "Base URL of the Graph API (tests, proxies)."
)


class MetaSender(Sender):
    """Sends batches of server events for one destination (pixel, token, test code, version)."""

    async def send(self, route: dict[str, Any], batch: list[Message]) -> list[Delivery]:
        if not batch:
            return []
        token = str(route.get("access_token") or "")
        redact = Redactor([token])
        results: list[Delivery | None] = [None] * len(batch)
        pending = [(0, len(batch))]
        requests = 0
        stopped: Delivery | None = None  # once Graph is down or throttling, stop calling it
        while pending:
            lo, hi = pending.pop()
            if stopped is None and requests >= MAX_REQUESTS_PER_SEND:
                stopped = Delivery(
                    "retry",
                    error=f"isolating the events Meta refused took {requests} requests; "
                    "the rest is tried again later",
                )
            if stopped is not None:
                results[lo:hi] = [dataclasses.replace(stopped) for _ in range(hi - lo)]
                continue
            answer = await self._post(route, token, redact, batch[lo:hi])
            requests += 1
            if answer.bisect and hi - lo > 1:
                mid = (lo + hi) // 2
                pending.append((mid, hi))
                pending.append((lo, mid))  # popped first: results keep the batch's order
                continue
            delivery = answer.delivery
            results[lo:hi] = [delivery] + [
                dataclasses.replace(delivery) for _ in range(hi - lo - 1)
            ]
            if delivery.outcome == "retry":
                stopped = delivery
        if requests > 1:
            refused = sum(1 for r in results if r is not None and r.outcome == "permanent")
            log.info(
                "meta %s: batch of %d split into %d requests; %d event(s) refused",
                batch[0].destination, len(batch), requests, refused,
            )  # fmt: skip
        return [r if r is not None else Delivery("retry", error="not sent") for r in results]

    async def _post(
        self, route: dict[str, Any], token: str, redact: Redactor, messages: list[Message]
    ) -> _Answer:
        graph = self.settings.get(GRAPH_URL).rstrip("/")
        url = f"{graph}/{route.get('api_version')}/{route.get('pixel_id')}/events"
        body: dict[str, Any] = {"data": [_payload(m.payload) for m in messages]}
        for key in ("test_event_code", "partner_agent"):
            if route.get(key):
                body[key] = route[key]
        content = orjson.dumps(body)
        shown = {  # what preview shows of the request: never the token
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
            return _Answer(
                Delivery("retry", error=error, latency_ms=elapsed_ms(started), request=shown)
            )
        except httpx.HTTPError as exc:
            error = redact.text(f"cannot reach the Graph API: {type(exc).__name__}: {exc}")
            return _Answer(
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
            return _Answer(
                Delivery(
                    "delivered",
                    status=status,
                    trace=str(trace or header_trace),
                    response=redact(parsed) if parsed is not None else None,
                    latency_ms=latency,
                    request=shown,
                )
            )

        error = parse_error(parsed)
        verdict = classify(status, error, len(messages))
        retry_after = _retry_after(response, verdict.retry_after)
        if error is not None:
            text, code, trace = error.describe(), error.code_text, error.fbtrace_id or header_trace
        else:
            snippet = " ".join(response.text[:200].split())
            text = f"HTTP {status} from the Graph API" + (f": {snippet}" if snippet else "")
            code, trace = "", header_trace
        if verdict.alert:
            log.error("meta %s: %s", messages[0].destination, redact.text(verdict.alert))
        return _Answer(
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
