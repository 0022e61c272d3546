"""The dispatcher: delivers what the outbox holds, one lane per destination.

A lane claims up to its tag type's `batch_size` messages (a lease in the shared database, so
several workers never send the same message), hands them to the tag type's sender, and settles
each message by its `Delivery`: delivered → removed; retry → rescheduled with exponential
backoff and full jitter (at least what the vendor's Retry-After asked); permanent, or out of
time before its deadline → dead letter with the vendor's reason. A lane whose sends keep failing
pauses itself — only itself: every destination has its own lane, so one broken vendor never
slows the others. Senders share one `httpx.AsyncClient` (`tagserver.delivery.http_client`); each lane
keeps at most `send_concurrency` sends in flight.

Bookkeeping is amortised, since a webhook lane may deliver one message per request: a healthy
lane of small batches claims `CLAIM_AHEAD` messages at once and starts them as slots free up;
a send frees its slot when the vendor has answered, and the results of the sends that end
within `SETTLE_DELAY` are written in one outbox job (at most `UNSETTLED_SENDS` per slot wait
for it, so a slow disk still holds the lane back).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import random
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from .. import metrics
from ..plugins import Delivery, Message, Registry, Sender
from ..redact import RedactingFilter, Redactor
from ..settings import Settings
from .alerts import Alerts
from .delivery_types import DeadLetter, Destination, Retry, Settlement
from .http_client import vendor_client
from .outbox_backend import Claim, OutboxBackend

log = logging.getLogger("tagserver.dispatch")

POLL_SECONDS = 1.0  # how often to look for work written by other workers or the CLI
FAILURES_BEFORE_PAUSE = 3  # consecutive failed sends before a lane pauses itself
UNSETTLED_SENDS = 2  # sends per slot whose results may be waiting to be written at once
SETTLE_DELAY = 0.003  # results of sends ending within this time are written together
CLAIM_AHEAD = 32  # a healthy lane of small batches claims at least this many messages at once
MAX_RETRY_AFTER = 86400.0  # a vendor's Retry-After is honoured up to a day


def backoff(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Delay before retry number `attempt` (1 = first retry): full jitter, floor `base`.

    The ceiling doubles with every attempt up to `cap`; the delay is uniform between `base`
    and that ceiling, and never shorter than the vendor's Retry-After.
    """
    ceiling = min(cap, base * 2 ** min(max(attempt - 1, 0), 62))
    delay = random.uniform(base, max(base, ceiling))
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Lane:
    """One destination's delivery loop in this worker: claim, send, settle, repeat.

    The lane does its own sends; the dispatcher only gives it the shared services (outbox,
    senders, the settlement writer, the claims this worker holds) and wakes it."""

    def __init__(self, dispatcher: Dispatcher, destination_id: int, key: str, tag_type: str):
        self.dispatcher = dispatcher
        self.outbox = dispatcher.outbox
        self.settings = dispatcher.settings
        self.id = destination_id
        self.key = key
        self.tag_type = tag_type
        self.wake = asyncio.Event()
        self.inflight: set[asyncio.Task[None]] = set()  # sending, or recording the results
        self.sending: set[asyncio.Task[None]] = set()  # of those, the ones still sending
        self.ahead: deque[Claim] = deque()  # batches claimed, waiting for a free send slot
        self.failures = 0  # consecutive sends in which nothing got through
        self.last_claimed = 0  # messages the last claim returned (a full batch: no lingering)
        self.paused_until = 0.0
        self._made_of: tuple[Redactor, tuple[str, ...]] | None = None
        self.redact = Redactor()  # this destination's, as last built by `redactor()`
        # the last failure this worker saw, for the status page: time, status, code, error, class
        self.last_error: dict[str, Any] | None = None
        self.tags: set[str] = set()  # the tags whose messages it carried (the page names it so)
        self.failing = metrics.DESTINATION_FAILING.labels(key, tag_type)
        self.latency = metrics.VENDOR_LATENCY.labels(tag_type)
        self.task = asyncio.create_task(self.run(), name=f"lane {key}")

    # -- the loop

    async def run(self) -> None:
        d = self.dispatcher
        while not d.stopping:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                if d.outbox.problem is None:  # an outbox that is down says so itself, once
                    log.exception("delivery lane %s failed; retrying in 1s", self.key)
                await d.sleep(1.0)

    async def step(self) -> None:
        d = self.dispatcher
        now = time.time()
        if self.paused_until > now:
            await d.sleep(self.paused_until - now)
            return
        limit = max(
            1, 1 if self.failures >= FAILURES_BEFORE_PAUSE else self.settings.send_concurrency
        )
        if len(self.sending) >= limit or len(self.inflight) >= UNSETTLED_SENDS * limit:
            self.wake.clear()  # set again when a send ends
            await self.wake.wait()
            return
        sender, batch_size = d.sender_for(self.tag_type)
        if sender is None:
            await self.wait(None)
            return
        if self.ahead:
            while self.ahead and len(self.sending) < limit and not d.stopping:
                self.start(sender, self.ahead.popleft())
            return
        if self.lingers(batch_size):
            await d.sleep(self.settings.batch_linger_seconds)
            if d.stopping:
                return
        self.wake.clear()
        # one claim fills every free slot: fewer transactions when batches are small; a
        # healthy lane of small batches claims ahead, and starts those as slots free up
        want = batch_size * (limit - len(self.sending))
        if self.failures < FAILURES_BEFORE_PAUSE and want < CLAIM_AHEAD:
            want = -(-CLAIM_AHEAD // batch_size) * batch_size
        claim = await self.outbox.claim(self.id, d.worker, want)
        self.last_claimed = len(claim.messages)
        if claim.messages:
            d.claimed.update(m.id for m in claim.messages)
            self.tags.update(claim.tag_names.values())
            if d.stopping:  # claimed while shutting down: released by the dispatcher's close()
                return
            messages = claim.messages
            for start in range(0, len(messages), batch_size):
                batch = messages[start : start + batch_size]
                self.ahead.append(dataclasses.replace(claim, messages=batch))
            while self.ahead and len(self.sending) < limit:
                self.start(sender, self.ahead.popleft())
            return
        timeout = None if claim.next_due is None else max(0.0, claim.next_due - time.time())
        await self.wait(timeout)

    def lingers(self, batch_size: int) -> bool:
        """Wait `batch_linger_seconds` before claiming? For a healthy lane of a batching tag
        type whose last claim was far from a full batch: the messages arriving meanwhile go
        in the same request, which costs one claim, one send and one settlement for all."""
        return (
            batch_size > 1
            and self.failures == 0
            and self.last_claimed < batch_size // 2
            and self.settings.batch_linger_seconds > 0
        )

    def start(self, sender: Sender, batch: Claim) -> None:
        task = asyncio.create_task(self.deliver(sender, batch))
        self.inflight.add(task)
        self.sending.add(task)
        task.add_done_callback(functools.partial(self._done, batch))

    def _done(self, batch: Claim, task: asyncio.Task[None]) -> None:
        self.inflight.discard(task)
        self.sending.discard(task)
        self.wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "delivery to %s failed (its messages return when their lease ends)", self.key,
                exc_info=task.exception(),
            )  # fmt: skip
            # no longer this worker's to keep: the heartbeat stops extending their lease
            self.dispatcher.claimed.difference_update(m.id for m in batch.messages)

    def _send_ended(self) -> None:
        """The vendor request is over: its slot is free while the results are being recorded."""
        task = asyncio.current_task()
        if task is not None and task in self.sending:
            self.sending.discard(task)
            self.wake.set()

    async def wait(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout)

    async def release_ahead(self) -> None:
        """Give back the messages claimed ahead (the lane paused): other workers may take them."""
        ids = [m.id for batch in self.ahead for m in batch.messages]
        self.ahead.clear()
        if ids:
            d = self.dispatcher
            d.claimed.difference_update(ids)  # released now, or else when their lease ends
            try:
                await self.outbox.release(d.worker, ids)
            except Exception as exc:
                log.warning("could not release messages claimed ahead (they return after the lease): %s", exc)  # fmt: skip

    # -- one send

    async def deliver(self, sender: Sender, claim: Claim) -> None:
        """Send one claimed batch and settle every message of it by its verdict."""
        d = self.dispatcher
        settings = self.settings
        clean = self.redactor(claim.secrets)

        now = time.time()
        plan = Settlement()
        records: list[tuple[Message, dict[str, Any]]] = []  # for preview
        live: list[Message] = []
        for message in claim.messages:
            if message.deadline is not None and now >= message.deadline:
                reason = f"deadline passed before delivery ({message.attempts} attempts made)"
                plan.dead.append(DeadLetter(message.id, False, None, "", "", "", reason))
                self.count("deadline")
                records.append((message, {"outcome": "dead_letter", "reason": reason}))
            else:
                live.append(message)

        reached, throttle, last_error = False, None, ""
        if live and claim.route is None:
            log.error("destination %s has no stored route; releasing its messages", self.key)
            await self.outbox.release(d.worker, [m.id for m in live])
            d.claimed.difference_update(m.id for m in live)
            live = []
        if live:
            try:
                results, elapsed = await self._send(sender, claim.route or {}, live, clean)
            finally:
                self._send_ended()
            for message, result in zip(live, results, strict=True):
                error = clean(result.error) if result.error else ""
                last_error = error or last_error
                record = self._record(message, result, clean, error, elapsed, len(live))
                if result.outcome == "delivered":
                    plan.delivered.append(message.id)
                    reached = True
                elif result.outcome == "permanent":
                    reached = True
                    reason = "refused by the vendor"
                    plan.dead.append(
                        DeadLetter(message.id, True, result.status, error, clean(result.code),
                                   clean(result.trace), reason)
                    )  # fmt: skip
                    record.update(outcome="dead_letter", reason=reason)
                else:
                    attempt = message.attempts + 1
                    delay = backoff(
                        attempt, settings.retry_base_seconds, settings.retry_cap_seconds,
                        result.retry_after,
                    )  # fmt: skip
                    at = time.time() + delay
                    if result.retry_after:
                        throttle = max(throttle or 0.0, result.retry_after)
                    if message.deadline is not None and at >= message.deadline:
                        reason = (
                            f"deadline: not delivered after {attempt} attempts, and the next "
                            "retry would come after the message's deadline"
                        )
                        plan.dead.append(
                            DeadLetter(message.id, True, result.status, error,
                                       clean(result.code), clean(result.trace), reason)
                        )  # fmt: skip
                        record.update(outcome="dead_letter", reason=reason)
                        self.count("deadline")
                    else:
                        summary = error or (f"HTTP {result.status}" if result.status else "")
                        plan.retry.append(Retry(message.id, at, result.status, summary))
                        record.update(outcome="retry", next_attempt_in=round(delay, 3))
                self.count(result.outcome)
                if result.outcome != "delivered":
                    self.failed(result, error, clean)
                records.append((message, record))

        if live:
            self.sent(reached, throttle, last_error)
            if plan.delivered and d.alerts is not None:
                d.alerts.delivered(self.key)
        if plan.dead and d.alerts is not None:
            last = plan.dead[-1]
            d.alerts.dead_lettering(self.key, len(plan.dead), last.error or last.reason, last.code)
        await d.settle(self.key, plan)
        d.claimed.difference_update(m.id for m in claim.messages)
        if live and self.ahead and self.paused_until > time.time():
            await self.release_ahead()
        if d.preview is not None:
            for message, record in records:
                if message.trace_id:
                    self._preview(message, claim, record)

    async def _send(
        self,
        sender: Sender,
        route: dict[str, Any],
        batch: list[Message],
        clean: Callable[[Any], Any],
    ) -> tuple[list[Delivery], float]:
        """Call the sender; an exception or a wrong answer counts as "retry" for the batch."""
        started = time.perf_counter()
        try:
            results = await sender.send(route, batch)
            if not isinstance(results, list) or len(results) != len(batch):
                count = len(results) if isinstance(results, list) else type(results).__name__
                raise RuntimeError(f"the sender returned {count} results for {len(batch)} messages")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = clean(f"{type(exc).__name__}: {exc}")
            log.warning("sender for %s failed: %s", self.key, error)
            results = [Delivery("retry", error=f"sender failed: {error}") for _ in batch]
        elapsed = time.perf_counter() - started
        self.latency.observe(elapsed)
        for result in results:
            if result.outcome not in ("delivered", "retry", "permanent"):
                result.error = f"the sender returned an unknown outcome {result.outcome!r}"
                result.outcome = "retry"
        return results, elapsed

    def failed(self, result: Delivery, error: str, clean: Callable[[Any], Any]) -> None:
        """Count a message the vendor did not take, by error class; remember it for the page."""
        kind = error_class(result)
        metrics.labelled(metrics.DELIVERY_ERRORS, self.key, self.tag_type, kind).inc()
        code = str(clean(result.code) or "")
        self.last_error = {
            "time": time.time(), "status": result.status, "code": code,
            "error": error, "error_class": kind, "outcome": result.outcome,
        }  # fmt: skip
        alerts = self.dispatcher.alerts
        if kind == "auth" and alerts is not None:
            alerts.token_refused(self.key, error, code)

    def sent(self, reached: bool, throttle: float | None, error: str) -> None:
        """Adjust the lane after a send: `reached` = the vendor answered for some message."""
        settings = self.settings
        if reached and not throttle:
            if self.failures >= FAILURES_BEFORE_PAUSE:
                log.info("destination %s recovered after %d failed sends", self.key, self.failures)
                self.failing.set(0)
            self.failures, self.paused_until = 0, 0.0
            return
        self.failures += 1
        pause = 0.0
        if throttle:
            pause = min(throttle, MAX_RETRY_AFTER)
        elif self.failures >= FAILURES_BEFORE_PAUSE:
            pause = backoff(
                self.failures - FAILURES_BEFORE_PAUSE + 1,
                settings.retry_base_seconds,
                settings.retry_cap_seconds,
            )
        if self.failures >= FAILURES_BEFORE_PAUSE:
            self.failing.set(1)
        if pause:
            self.paused_until = max(self.paused_until, time.time() + pause)
            log.warning(
                "destination %s: %d failed sends in a row (last: %s); pausing it %.1fs",
                self.key, self.failures, error or "no detail", pause,
            )  # fmt: skip

    def count(self, outcome: str) -> None:
        metrics.labelled(metrics.DELIVERIES, self.key, outcome).inc()

    def redactor(self, secrets: tuple[str, ...]) -> Redactor:
        """This destination's one redactor: its route's declared secrets and the container's
        (settings, secret variables, literal secret params). Rebuilt when either changes."""
        shared = self.dispatcher.container_redactor()
        made_of = self._made_of
        if made_of is None or made_of[0] is not shared or made_of[1] != secrets:
            self.redact = shared.extended(secrets)
            self._made_of = (shared, secrets)
        return self.redact

    # -- what preview shows

    def _record(
        self,
        message: Message,
        result: Delivery,
        clean: Callable[[Any], Any],
        error: str,
        elapsed: float,
        batch_size: int,
    ) -> dict[str, Any]:
        if not message.trace_id or self.dispatcher.preview is None:
            return {}
        latency = result.latency_ms if result.latency_ms is not None else elapsed * 1000
        return {
            "outcome": result.outcome,
            "status": result.status,
            "error": error,
            "code": clean(result.code),
            "trace": clean(result.trace),
            "retry_after": result.retry_after,
            "response": clean(result.response),
            "latency_ms": round(latency, 3),
            "request": clean(result.request)
            if result.request
            else {"destination": self.key, "messages_in_request": batch_size},
        }

    def _preview(self, message: Message, claim: Claim, record: dict[str, Any]) -> None:
        skipped = record.get("reason", "").startswith("deadline passed before")
        entry = {
            "time": time.time(),
            "destination": self.key,
            "tag_type": self.tag_type,
            "tag": claim.tag_names.get(message.id, ""),
            "dedup_id": message.dedup_id,
            "attempt": message.attempts + (0 if skipped else 1),
            **record,
        }
        try:
            self.dispatcher.preview.record_delivery(message.trace_id, entry)
        except Exception:
            log.exception("preview could not record a delivery")


@dataclass
class _Queued:
    """One send's settlement, waiting for the settlement writer."""

    key: str
    plan: Settlement
    done: asyncio.Future[None]


class Dispatcher:
    """Every lane of this worker, and what they share: the HTTP client, the senders, the
    claims this worker holds (their leases are extended together) and the settlement writer."""

    def __init__(
        self,
        outbox: OutboxBackend,
        registry: Registry,
        settings: Settings,
        *,
        preview: Any = None,
        redact: Callable[[], Redactor] | None = None,
        http: httpx.AsyncClient | None = None,
        alerts: Alerts | None = None,
    ) -> None:
        self.outbox = outbox
        self.registry = registry
        self.settings = settings
        self.preview = preview
        self.alerts = alerts
        self.container_redactor: Callable[[], Redactor] = redact or (lambda: _NO_SECRETS)
        self.worker = worker_name()
        self.http = http
        self.lanes: dict[int, Lane] = {}
        self.claimed: set[int] = set()  # claimed by this worker and not yet settled
        self.stopping = False
        self._senders: dict[str, tuple[Sender | None, int]] = {}
        self._queued: list[_Queued] = []
        self._settler: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._log_filter = RedactingFilter(lambda: [lane.redact for lane in self.lanes.values()])

    # -- lifecycle

    async def start(self) -> None:
        # httpx logs every request's full URL at INFO: URLs may carry tokens. Quiet it, and
        # should someone turn it up, clean its records with every destination's secrets
        logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))
        self._log_filter.install()
        if self.http is None:
            self.http = vendor_client(self.settings.send_timeout_seconds)
        self.outbox.on_commit = self._on_commit
        self._tasks = [
            asyncio.create_task(self._poll(), name="dispatch-poll"),
            asyncio.create_task(self._heartbeat(), name="dispatch-heartbeat"),
        ]
        log.info("dispatcher %s started", self.worker)

    async def close(self) -> None:
        """Stop claiming, give in-flight sends the grace period, release what is left."""
        if self.stopping:
            return
        self.stopping = True
        self._stop.set()
        self.outbox.on_commit = None
        for lane in self.lanes.values():
            lane.wake.set()
        lanes = [lane.task for lane in self.lanes.values()]
        await asyncio.wait(lanes, timeout=5.0) if lanes else None
        inflight = [t for lane in self.lanes.values() for t in lane.inflight]
        if inflight:
            log.info("waiting up to %.0fs for %d sends", self.settings.shutdown_grace_seconds, len(inflight))  # fmt: skip
            _, late = await asyncio.wait(inflight, timeout=self.settings.shutdown_grace_seconds)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._settler is not None and not self._settler.done():
            await asyncio.wait([self._settler], timeout=self.settings.shutdown_grace_seconds)
        for task in [*lanes, *self._tasks]:
            task.cancel()
        await asyncio.gather(*lanes, *self._tasks, return_exceptions=True)
        if self.claimed:
            try:
                await self.outbox.release(self.worker, sorted(self.claimed))
                log.info("released %d claimed messages for the next start", len(self.claimed))
            except Exception as exc:
                log.error("could not release claimed messages (they return after the lease): %s", exc)  # fmt: skip
            self.claimed.clear()
        if self.http is not None:
            await self.http.aclose()
        self._log_filter.remove()

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the dispatcher stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(0.0, seconds))

    # -- finding work

    def lane(self, destination_id: int, key: str, tag_type: str) -> Lane:
        lane = self.lanes.get(destination_id)
        if lane is None:
            lane = self.lanes[destination_id] = Lane(self, destination_id, key, tag_type)
        return lane

    def _on_commit(self, touched: dict[int, Destination]) -> None:
        if self.stopping:
            return
        for destination_id, (key, tag_type) in touched.items():
            self.lane(destination_id, key, tag_type).wake.set()

    async def _poll(self) -> None:
        while not self.stopping:
            try:
                now = time.time()
                # (destination id, key, tag type, next due): a `Due` from SQLite, a row from
                # PostgreSQL
                for destination_id, key, tag_type, next_due in await self.outbox.due():
                    lane = self.lane(destination_id, key, tag_type)
                    if next_due <= now:
                        lane.wake.set()
            except Exception:
                if self.outbox.problem is None:
                    log.exception("dispatcher poll failed")
            await self.sleep(POLL_SECONDS)

    async def _heartbeat(self) -> None:
        """Extend the leases of messages being sent, so a slow send keeps its claim."""
        interval = max(0.05, self.settings.outbox_lease_seconds / 3)
        while not self.stopping:
            await self.sleep(interval)
            if self.claimed and not self.stopping:
                try:
                    await self.outbox.extend(self.worker, sorted(self.claimed))
                except Exception as exc:
                    log.warning("could not extend leases: %s", exc)

    def sender_for(self, tag_type: str) -> tuple[Sender | None, int]:
        """The tag type's sender (one per process) and batch size; None when not installed."""
        found = self._senders.get(tag_type)
        if found is None:
            cls = self.registry.tags.get(tag_type)
            sender_class = getattr(cls, "sender_class", None)
            if cls is None or sender_class is None:
                log.error(
                    "messages for tag type %r are waiting, but no installed tag type %r can "
                    "send them; they stay in the outbox", tag_type, tag_type,
                )  # fmt: skip
                found = (None, 1)
            else:
                assert self.http is not None
                found = (sender_class(self.http, self.settings), max(1, int(cls.batch_size)))
            self._senders[tag_type] = found
        return found

    # -- recording results

    async def settle(self, key: str, plan: Settlement) -> None:
        """Record one send's results. Settlements that arrive while one is being written go
        together into the next: one writer job for many sends, not one each."""
        if not plan:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append(_Queued(key, plan, done))
        if self._settler is None or self._settler.done():
            self._settler = asyncio.create_task(self._settle_queued(), name="dispatch-settle")
        await done  # cancelling this send leaves the write to the settler task

    async def _settle_queued(self) -> None:
        while self._queued:
            await asyncio.sleep(SETTLE_DELAY)
            queued, self._queued = self._queued, []
            merged = Settlement()
            for item in queued:
                merged.extend(item.plan)
            keys = ", ".join(sorted({item.key for item in queued}))
            try:
                await self._write_settlement(keys, merged)
            finally:
                for item in queued:
                    if not item.done.done():
                        item.done.set_result(None)

    async def _write_settlement(self, keys: str, plan: Settlement) -> None:
        """Record the results; while the disk is full, keep trying for about a lease.

        A failed settlement is rolled back whole, so trying again is exact. The messages keep
        their lease meanwhile; given up, they come back when it ends and may be sent again.
        """
        started = time.monotonic()
        for attempt in range(1000):
            try:
                await self.outbox.settle(self.worker, plan)
                return
            except Exception as exc:
                waited = time.monotonic() - started
                if self.stopping or waited > self.settings.outbox_lease_seconds:
                    log.error(
                        "could not record delivery results for %s (the messages return after "
                        "their lease and may be sent again): %s", keys, exc,
                    )  # fmt: skip
                    return
                if attempt == 0:
                    log.warning("recording delivery results for %s failed, retrying: %s", keys, exc)  # fmt: skip
                await self.sleep(min(2.0, 0.05 * 2**attempt))


_NO_SECRETS = Redactor()


def error_class(result: Delivery) -> str:
    """The sender's error class, else one told by the HTTP status."""
    if result.error_class:
        return result.error_class
    status = result.status
    if status is None:
        return "network"
    if status in (401, 403):
        return "auth"
    if status == 429:
        return "throttled"
    if status >= 500:
        return "unavailable"
    return "refused"
