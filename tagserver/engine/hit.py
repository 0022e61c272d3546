"""One incoming hit: the object a client uses to run its events and store their messages.

`Hit` implements the plugin API's `tagserver.Hit` protocol; clients see only that.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import metrics
from ..event import Event, RequestContext
from .event_ids import ReuseDetector
from .runtime import EventResult, Runtime

if TYPE_CHECKING:
    from ..delivery.outbox_backend import OutboxBackend
    from ..visitor.cookie_keeper import CookieKeeper


@dataclass
class HitTrace:
    """Everything preview shows about one hit. Built only when the hit is previewed."""

    id: str
    session: str
    started: float
    request: dict[str, Any]
    client: str | None = None
    events: list[EventResult] = field(default_factory=list)
    status: int | None = None
    error: str | None = None
    duration_ms: float = 0.0
    console: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)  # events refused, with why
    response: dict[str, Any] | None = None  # what the hit was answered (no cookie values)
    container: dict[str, Any] | None = None  # name, version, hash of the one that ran the hit

    def log(self, level: str, message: str) -> None:
        self.console.append({"time": time.time(), "level": level, "message": message})

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "session": self.session,
            "time": self.started,
            "request": self.request,
            "client": self.client,
            "status": self.status,
            "error": self.error,
            "duration_ms": round(self.duration_ms, 3),
            "console": self.console,
            "rejected": self.rejected,
            "response": self.response,
            "container": self.container,
            "events": [
                {
                    "event": r.event,
                    "tags": [t.as_dict() for t in r.tags],
                    "variables": r.variables,
                    "warnings": r.warnings or [],
                }
                for r in self.events
            ],
        }


def new_trace_id() -> str:
    return uuid.uuid4().hex


class Hit:
    """Handed to `Client.handle`: run events through the container, store what they produce."""

    def __init__(
        self,
        *,
        request: RequestContext,
        client_name: str,
        runtime: Runtime,
        outbox: OutboxBackend,
        trace: HitTrace | None = None,
        reuse: ReuseDetector | None = None,
    ) -> None:
        self.request = request
        self.client_name = client_name
        self.runtime = runtime
        self.outbox = outbox
        self.trace = trace
        self.reuse = reuse
        self._next_index = 0

    @property
    def body(self) -> bytes:
        return self.request.body

    @property
    def cookie_keeper(self) -> CookieKeeper | None:
        """The container's cookie keeper (other tools' cookies re-set), None when off."""
        return self.runtime.container.cookie_keeper

    @property
    def previewed(self) -> bool:
        return self.trace is not None

    def record_error(self, reason: str) -> None:
        if self.trace is not None:
            self.trace.error = reason

    def log(self, level: str, message: str) -> None:
        if self.trace is not None:
            self.trace.log(level, message)

    def reject(self, index: int, reason: str) -> None:
        """Record that the request's `index`-th event was refused and why (shown in preview).

        Clients call it for every event they do not run, so a refused event leaves a trace
        beside the caller's answer.
        """
        if self.trace is not None:
            self.trace.rejected.append({"index": index, "reason": reason})
            self.trace.log("warning", f"event {index} rejected: {reason}")

    async def run(self, events: list[Event]) -> list[EventResult]:
        """Run every event, then wait until their messages are durably in the outbox.

        Raises `Unavailable` when the outbox cannot take them: the client must then answer
        503 so the sender retries, because nothing of this hit was stored.
        """
        request = self.request
        trace_id = self.trace.id if self.trace is not None else None
        run_event = self.runtime.run_event
        received = int(request.received_at)
        # a server-to-server caller's own address and agent are not the customer's
        ip = request.ip if request.is_visitor else ""
        user_agent = request.user_agent if request.is_visitor else ""
        results, outgoing = [], []
        reuse = self.reuse
        for event in events:
            index, self._next_index = self._next_index, self._next_index + 1
            warning = None
            given = event.get("event_id")
            if not given:
                event["event_id"] = request.derived_event_id(index)
            elif reuse is not None:
                warning = reuse.check(str(given), event, request.received_at, self.client_name)
            if "event_time" not in event:
                event["event_time"] = received
            if ip and not event.get("ip_override"):
                event["ip_override"] = ip
            if user_agent and not event.get("user_agent"):
                event["user_agent"] = user_agent
            result = run_event(
                event, request, self.client_name, trace=trace_id is not None, trace_id=trace_id
            )
            if warning is not None:
                result.warnings = [warning]
                self.log("warning", warning)
            results.append(result)
            for tag in result.tags:
                if tag.outgoing:
                    outgoing.extend(tag.outgoing)
        if outgoing:
            repeats = await self.outbox.put(outgoing)
            if repeats:
                mark_repeats(results, repeats)
        metrics.count(metrics.EVENTS, self.client_name, amount=len(events))
        if self.trace is not None:
            self.trace.events.extend(results)
        return results


def mark_repeats(results: list[EventResult], repeats: list[int]) -> None:
    """Count, on each tag, its messages the outbox did not store as repeats (`repeats` are
    indices into the hit's messages, in the order `run` collected them)."""
    wanted = set(repeats)
    index = 0
    for result in results:
        for tag in result.tags:
            for _ in tag.outgoing:
                if index in wanted:
                    tag.duplicates += 1
                index += 1
