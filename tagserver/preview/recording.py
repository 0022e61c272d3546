"""Turn a hit's trace into what the preview store keeps: scrubbed, bounded, summarised.

Runs in the preview writer thread, never on the hit's path.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import orjson

from ..redact import REDACTED, Redactor
from .sessions import TOKEN_PATTERN

MAX_TRACE_BYTES = 256 * 1024
MAX_LIST_EVENTS = 50  # events of one hit shown in the list (all of them are in the detail)
TAG_PROBLEMS = frozenset({"error", "rejected"})


def scrub(value: Any, redactor: Redactor) -> Any:
    """Secrets out, again: the engine redacted already, but a slip here would show a token."""
    value = redactor(value)
    return _without_tokens(value)


def _without_tokens(value: Any) -> Any:
    if isinstance(value, str):
        return TOKEN_PATTERN.sub(REDACTED, value) if "tsp_" in value else value
    if isinstance(value, dict):
        return {k: _without_tokens(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_tokens(v) for v in value]
    return value


def bound(trace: dict[str, Any]) -> dict[str, Any]:
    """Keep one trace under MAX_TRACE_BYTES by dropping its last events (saying so)."""
    size = len(orjson.dumps(trace, default=str))
    events = trace.get("events") or []
    if size <= MAX_TRACE_BYTES or not events:
        return trace
    kept = list(events)
    while kept and size > MAX_TRACE_BYTES:
        kept = kept[: max(0, len(kept) // 2)] if len(kept) > 1 else []
        size = len(orjson.dumps({**trace, "events": kept}, default=str))
    dropped = len(events) - len(kept)
    console = list(trace.get("console") or [])
    console.append({"time": trace.get("time"), "level": "warning",
                    "message": f"preview kept {len(kept)} of {len(events)} events: this hit's "
                               f"trace is over {MAX_TRACE_BYTES // 1024} KiB ({dropped} not shown)"})  # fmt: skip
    return {**trace, "events": kept, "console": console, "events_dropped": dropped}


def summarize(trace: dict[str, Any]) -> dict[str, Any]:
    """What the hit list shows: time, request line, client, and per event its tag counts."""
    request = trace.get("request") or {}
    url = str(request.get("url") or "")
    try:
        parts = urlsplit(url)
        path, host = parts.path or "/", parts.netloc
    except ValueError:
        path, host = url[:200], ""
    events = []
    problems = 0
    page = ""
    for entry in trace.get("events") or []:
        event = entry.get("event") or {}
        tags = entry.get("tags") or []
        errors = sum(1 for t in tags if t.get("status") in TAG_PROBLEMS)
        problems += errors
        page = page or str(event.get("page_location") or "")
        events.append({
            "name": str(event.get("event_name") or "(no event_name)")[:100],
            "fired": sum(1 for t in tags if t.get("status") == "fired"),
            "dry_run": sum(1 for t in tags if t.get("status") == "dry_run"),
            "tags": len(tags),
            "errors": errors,
        })  # fmt: skip
    return {
        "id": trace.get("id"),
        "time": trace.get("time"),
        "method": str(request.get("method") or "")[:10],
        "path": path[:300],
        "host": host[:200],
        "page": (page or str((request.get("headers") or {}).get("referer") or ""))[:500],
        "client": trace.get("client"),
        "status": trace.get("status"),
        "error": (str(trace["error"])[:300] if trace.get("error") else None),
        "duration_ms": trace.get("duration_ms"),
        "event_count": len(events),
        "events": events[:MAX_LIST_EVENTS],
        "rejected": len(trace.get("rejected") or []),
        "tag_errors": problems,
        "container": _container_version(trace),
    }


def _container_version(trace: dict[str, Any]) -> dict[str, Any] | None:
    """Which container version handled the hit (the list shows it beside each hit)."""
    container = trace.get("container")
    if not isinstance(container, dict):
        return None
    return {"version": container.get("version"), "hash": container.get("hash")}


def prepare_hit(
    trace: dict[str, Any], redactor: Redactor
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(session, summary, trace) ready for the store."""
    session = str(trace.get("session") or "")
    clean = bound(scrub(trace, redactor))
    return session, summarize(clean), clean


def prepare_delivery(delivery: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    clean = scrub(delivery, redactor)
    body = orjson.dumps(clean, default=str)
    if len(body) > MAX_TRACE_BYTES:  # a huge vendor response: keep the verdict, cut the body
        clean = {k: v for k, v in clean.items() if k not in ("response", "request")}
        clean["note"] = f"request/response over {MAX_TRACE_BYTES // 1024} KiB, not kept"
    return clean
