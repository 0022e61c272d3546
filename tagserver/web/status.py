"""The figures of `/preview/status`: what the server already counts, in one place.

From the outbox, so they cover every worker and, with a shared PostgreSQL outbox, every
instance: per destination, pending messages, their oldest age, dead letters, and deliveries
over time (delivered, retried, dead-lettered in the last minute, hour, day, and the chart:
`delivery_counts`, which the dispatchers add to as they record outcomes).

From the Prometheus metrics, summed over every worker of this instance (the multiprocess
files that `/metrics` reads too): the tags' results, failures by kind, paused lanes. The tags'
hour and day are differences between samples of those counters, taken every SAMPLE_SECONDS
by the worker that answers and kept a day.

Nothing personal is read: no payload, no route (tokens, URLs), only keys, tag names, counts
and the vendors' reasons.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import Metric

from .. import metrics
from ..container.model import Container
from ..delivery import delivery_counts
from ..delivery.delivery_counts import WINDOWS
from ..delivery.outbox_backend import OutboxAdmin, open_admin
from ..engine.retry import Retried, retry_dead_letters, routes_now
from ..settings import Settings
from .exposition import MULTIPROC_ENV

log = logging.getLogger("tagserver.status")

SAMPLE_SECONDS = 10.0
FINE_SECONDS = 3600.0  # every sample is kept this long; older ones, one per COARSE_SECONDS
COARSE_SECONDS = 300.0
KEEP_SECONDS = 86400.0 + COARSE_SECONDS
DEAD_LETTERS_SHOWN = 200
TAG_STATUSES = (
    "fired", "not_fired", "blocked", "no_consent", "rejected", "error", "dry_run", "paused",
)  # fmt: skip
Key = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted labels


def registry_families() -> Iterable[Metric]:
    """Every metric family of this instance: all workers' in multiprocess mode."""
    metrics.flush()
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated
        return list(registry.collect())
    return list(REGISTRY.collect())


def read_samples(families: Iterable[Metric] | None = None) -> dict[Key, float]:
    """Sample name and labels → value (summed over workers)."""
    out: dict[Key, float] = {}
    for family in registry_families() if families is None else families:
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            out[key] = out.get(key, 0.0) + s.value
    return out


def _wanted(name: str) -> bool:
    return name.startswith("tagserver_tag_results")


@dataclass
class Sample:
    at: float
    values: dict[Key, float]


class History:
    """Samples of the tag counters: their windows are differences."""

    def __init__(self) -> None:
        self.samples: deque[Sample] = deque()
        self.started = time.time()

    def take(self, values: dict[Key, float], now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.samples.append(Sample(now, {k: v for k, v in values.items() if _wanted(k[0])}))
        # thin out: one sample per COARSE_SECONDS past FINE_SECONDS, none past KEEP_SECONDS
        kept: deque[Sample] = deque()
        last_coarse = -math.inf
        for sample in self.samples:
            age = now - sample.at
            if age > KEEP_SECONDS:
                continue
            if age > FINE_SECONDS:
                if sample.at - last_coarse < COARSE_SECONDS:
                    continue
                last_coarse = sample.at
            kept.append(sample)
        self.samples = kept

    def at(self, when: float) -> Sample | None:
        """The latest sample taken at or before `when`, else the first one."""
        found = None
        for sample in self.samples:
            if sample.at <= when:
                found = sample
            else:
                break
        return found or (self.samples[0] if self.samples else None)

    def since(self, values: dict[Key, float], seconds: float, now: float) -> dict[Key, float]:
        base = self.at(now - seconds)
        old = base.values if base is not None else {}
        return {k: v - old.get(k, 0.0) for k, v in values.items() if _wanted(k[0])}

    def covers(self, now: float) -> float:
        return now - self.samples[0].at if self.samples else 0.0


def _label(key: Key, name: str) -> str:
    return dict(key[1]).get(name, "")


@dataclass
class OutboxFigures:
    """What the page reads from the outbox (every worker's and instance's)."""

    stats: list[dict[str, Any]] = field(default_factory=list)  # pending, oldest, dead letters
    dead: list[dict[str, Any]] = field(default_factory=list)  # the dead letters shown
    counts: dict[str, dict[str, Any]] = field(default_factory=dict)  # summarize(), by key
    error: str = ""


@dataclass
class Running:
    """What the board reads from the running server, asked at each request."""

    container: Callable[[], Container]
    report: Callable[[], dict[str, Any]]  # the container in force, refused reload, warnings
    problem: Callable[[], str | None]  # why hits cannot be stored (/healthz 503), or None
    lanes: Callable[[], list[dict[str, Any]]]  # this worker's lanes: key, failing, last error


class StatusBoard:
    """Builds the status page's figures; samples the counters while the server runs."""

    def __init__(self, settings: Settings, running: Running) -> None:
        self.settings = settings
        self.running = running
        self.history = History()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.history.take(await asyncio.to_thread(read_samples))
        self._task = asyncio.create_task(self._sample(), name="status-sampler")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_SECONDS)
            try:
                self.history.take(await asyncio.to_thread(read_samples))
            except Exception:
                log.exception("status: sampling the counters failed")

    # -- the outbox (through the same admin interface as `tagserver outbox …`)

    def _admin(self) -> OutboxAdmin:
        return open_admin(self.settings)

    def _outbox(self, now: float) -> OutboxFigures:
        found = OutboxFigures()
        try:
            admin = self._admin()
        except LookupError:  # no outbox file yet: nothing was ever stored
            return found
        except Exception as exc:
            found.error = f"the outbox cannot be read: {exc}"
            return found
        try:
            found.stats = admin.stats(now, in_flight=True)
            found.dead = admin.dead_letters(None, DEAD_LETTERS_SHOWN)
            found.counts = delivery_counts.summarize(
                admin.delivery_counts(*delivery_counts.read_range(now)), now
            )
        except Exception as exc:
            found.error = f"the outbox cannot be read: {type(exc).__name__}: {exc}"
        finally:
            admin.close()
        for row in found.dead:
            row.pop("payload", None)  # hashed personal data, IP, user agent: never shown
        return found

    async def retry(self, destination: str | None, ids: list[int]) -> dict[str, Any]:
        """`tagserver outbox retry` with the running container's routes: what it did."""
        container = self.running.container()

        def work() -> Retried:
            admin = self._admin()
            try:
                return retry_dead_letters(
                    admin, destination, ids, time.time(), container,
                    container_name=self.settings.container,
                )  # fmt: skip
            finally:
                admin.close()

        return (await asyncio.to_thread(work)).as_dict()

    # -- the figures

    async def figures(self) -> dict[str, Any]:
        now = time.time()
        values, outbox = await asyncio.gather(
            asyncio.to_thread(read_samples), asyncio.to_thread(self._outbox, now)
        )
        container = self.running.container()
        report = self.running.report()
        problem = self.running.problem()
        return {
            "time": now,
            "health": {
                "status": "ok" if problem is None else "unavailable",
                "reason": problem,
                "warnings": report.get("warnings", []),
                "outbox": outbox.error or None,
                # delivery windows: from the outbox (every worker and instance), each from
                # the start of the oldest bucket it sums
                "delivery_windows_since": delivery_counts.since(now),
                "outbox_shared": bool(self.settings.outbox_url.strip()),
                # the tags' windows: this worker's samples of this instance's counters
                "counting_since": self.history.started,
                "windows_cover_seconds": round(self.history.covers(now), 1),
            },
            "container": report.get("container", {}),
            "destinations": self._destinations(values, outbox, container, now),
            "tags": self._tags(values, container, now),
            "match_quality": match_quality(values),
            "dead_letters": outbox.dead,
        }

    def _destinations(
        self,
        values: dict[Key, float],
        outbox: OutboxFigures,
        container: Container,
        now: float,
    ) -> list[dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}

        def row(key: str, tag_type: str = "") -> dict[str, Any]:
            found = rows.get(key)
            if found is None:
                counts = outbox.counts.get(key) or delivery_counts.none(now)
                found = rows[key] = {
                    "destination": key, "tag_type": tag_type, "tags": [],
                    "delivered": counts["delivered"], "retried": counts["retried"],
                    "dead_lettered": counts["dead_lettered"],
                    "failed": {w: counts["retried"][w] + counts["dead_lettered"][w]
                               for w in WINDOWS},
                    "retries_last_hour": counts["retried"]["hour"], "pending": 0,
                    "in_flight": 0, "retrying": 0, "oldest_pending_seconds": None,
                    "dead_letters": 0,
                    "last_error": None, "failing": False, "errors_by_class": {},
                    "chart": counts["chart"],
                }  # fmt: skip
            if tag_type and not found["tag_type"]:
                found["tag_type"] = tag_type
            return found

        routes, _ = routes_now(container)
        for tag, (key, tag_type, _route) in routes.items():
            row(key, tag_type)["tags"].append(tag)
            rows[key]["in_use"] = True
        for key, counts in outbox.counts.items():
            row(key, counts["tag_type"])
        for s in outbox.stats:
            r = row(s["destination"], s.get("tag_type", ""))
            r["pending"] = s["pending"]
            r["in_flight"] = s.get("in_flight", 0)
            r["retrying"] = s.get("retrying", 0)
            retry = s.get("last_retry")
            if retry is not None:  # whichever worker or instance recorded it
                r["last_error"] = {**retry, "code": "", "dead_letter": False}
            r["oldest_pending_seconds"] = s["oldest_age_seconds"]
            r["dead_letters"] = s["dead_letters"]
        for d in reversed(outbox.dead):  # newest first: the last error a dead letter holds
            r = row(d["destination"], d.get("tag_type", ""))
            if d["tag"] and d["tag"] not in r["tags"]:
                r["tags"].append(d["tag"])
            if r["last_error"] is None or d["dead_at"] > r["last_error"]["time"]:
                r["last_error"] = {
                    "time": d["dead_at"], "status": d["status"], "code": d["code"],
                    "error": d["error"] or d["reason"], "dead_letter": True,
                }  # fmt: skip
        for lane in self.running.lanes():
            r = row(lane["destination"], lane["tag_type"])
            r["tags"].extend(t for t in lane.get("tags", []) if t and t not in r["tags"])
            r["failing"] = r["failing"] or lane["failing"]
            last = lane["last_error"]
            if last is not None and (
                r["last_error"] is None or _same_or_later(last, r["last_error"])
            ):
                # this worker saw it: with the vendor's code and the kind of error
                r["last_error"] = {**last, "dead_letter": last["outcome"] != "retry"}
        for (name, labels), value in values.items():
            labels_d = dict(labels)
            if name == "tagserver_destination_failing" and value >= 1:
                row(labels_d["destination"], labels_d.get("tag_type", ""))["failing"] = True
        for (name, labels), value in values.items():
            if name == "tagserver_delivery_errors_total" and value > 0:
                labels_d = dict(labels)
                errors = row(labels_d["destination"])["errors_by_class"]
                errors[labels_d["error_class"]] = errors.get(labels_d["error_class"], 0) + int(
                    value
                )
        for r in rows.values():
            r.setdefault("in_use", False)
            r["name"] = destination_name(r["tags"], r["tag_type"], r["destination"])
            r["state"] = destination_state(r)
        order = {"paused": 0, "failing": 1, "healthy": 2, "unused": 3}
        shown = [r for r in rows.values() if r["state"] != "unused" or _active(r, "day")]
        return sorted(shown, key=lambda r: (order[r["state"]], r["name"]))

    def _tags(
        self, values: dict[Key, float], container: Container, now: float
    ) -> list[dict[str, Any]]:
        hour = self.history.since(values, WINDOWS["hour"], now)
        day = self.history.since(values, WINDOWS["day"], now)
        rows: dict[str, dict[str, Any]] = {
            tag.name: {
                "tag": tag.name,
                "type": tag.type,
                "total": {},
                "hour": {},
                "day": {},
                "rejected_reasons": [],
            }  # fmt: skip
            for tag in container.tags
        }
        for source, field_name in ((values, "total"), (hour, "hour"), (day, "day")):
            for (name, labels), value in source.items():
                if name != "tagserver_tag_results_total":
                    continue
                labels_d = dict(labels)
                r = rows.get(labels_d["tag"])
                if r is not None and value > 0:
                    r[field_name][labels_d["status"]] = int(value)
        for (name, labels), value in values.items():
            if name == "tagserver_tag_rejections_total" and value > 0:
                labels_d = dict(labels)
                r = rows.get(labels_d["tag"])
                if r is not None:
                    r["rejected_reasons"].append(
                        {"reason": labels_d["reason"], "count": int(value)}
                    )
        for r in rows.values():
            r["rejected_reasons"].sort(key=lambda x: -x["count"])
            del r["rejected_reasons"][5:]
        return list(rows.values())


def _same_or_later(seen: dict[str, Any], stored: dict[str, Any]) -> bool:
    """This worker's last failure is newer than the outbox's last one, or is the same one
    (recorded a moment later, without the vendor's code)."""
    if seen["time"] > stored["time"]:
        return True
    same = (seen.get("status"), seen.get("error")) == (stored.get("status"), stored.get("error"))
    return same and stored["time"] - seen["time"] < 60


def _active(row: dict[str, Any], window: str) -> bool:
    return bool(row["delivered"][window] or row["failed"][window])


def destination_state(row: dict[str, Any]) -> str:
    """paused: its sends keep failing, so its lane waits between tries; unused: no tag sends
    there any more and nothing waits for it; failing: nothing got through in the last hour but
    something failed; healthy: otherwise."""
    if row["failing"]:
        return "paused"
    if not row.get("in_use", True) and not row["pending"] and not row["dead_letters"]:
        return "unused"  # no tag sends there now (a new token), and nothing waits for it
    if row["failed"]["hour"] and not row["delivered"]["hour"]:
        return "failing"
    return "healthy"


def destination_name(tags: list[str], tag_type: str, key: str) -> str:
    """A destination as people know it: by the tags that send to it (its key means little)."""
    if tags:
        return f"{', '.join(sorted(tags))} ({tag_type or 'tag'})"
    return f"{tag_type or 'destination'} {key}"


def match_quality(values: dict[Key, float]) -> list[dict[str, Any]]:
    """Every `…match_quality…` histogram: per vendor and labels, count, mean, distribution."""
    rows: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Any]] = {}
    for (name, labels), value in values.items():
        if "match_quality" not in name:
            continue
        base = name.rsplit("_", 1)[0] if name.endswith(("_bucket", "_sum", "_count")) else name
        if name.endswith("_created"):
            continue
        labels_d = dict(labels)
        le = labels_d.pop("le", None)
        vendor = (
            labels_d.pop("vendor", "")
            or base.removeprefix("tagserver_").split("_match_quality")[0]
            or "all"
        )
        key = (vendor, tuple(sorted(labels_d.items())))
        r = rows.setdefault(
            key,
            {"vendor": vendor, "metric": base, "labels": labels_d, "count": 0, "sum": 0.0,
             "buckets": {}},
        )  # fmt: skip
        if name.endswith("_bucket") and le is not None:
            r["buckets"][le] = value
        elif name.endswith("_sum"):
            r["sum"] = value
        elif name.endswith("_count"):
            r["count"] = int(value)
    out = []
    for r in rows.values():
        if not r["count"]:
            continue
        cumulative = sorted(
            ((math.inf if le == "+Inf" else float(le), v) for le, v in r["buckets"].items())
        )
        distribution, previous = [], 0.0
        for upper, total in cumulative:
            distribution.append({"le": upper if upper != math.inf else None,
                                 "count": int(total - previous)})  # fmt: skip
            previous = total
        out.append({
            "vendor": r["vendor"], "metric": r["metric"], "labels": r["labels"],
            "count": r["count"], "mean": round(r["sum"] / r["count"], 2),
            "distribution": distribution,
        })  # fmt: skip
    return sorted(out, key=lambda r: (r["vendor"], sorted(r["labels"].items())))
