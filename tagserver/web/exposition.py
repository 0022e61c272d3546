"""`GET /metrics`: every metric in Prometheus' text format.

Counters and histograms live in `metrics.py`. With several workers, each keeps its own values,
so the CLI turns on prometheus-client's multiprocess mode (`PROMETHEUS_MULTIPROC_DIR` under the
data dir) before the workers start, and any worker answering a scrape sums them all. Outbox
gauges (depth, oldest age, dead letters per destination) are read from the shared SQLite file
at scrape time, so they are right whichever worker answers.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from .. import metrics
from ..settings import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess(settings: Settings) -> None:
    """Before starting several workers: an empty directory for their metric files."""
    path = settings.data_path / "prometheus"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(path)


class _Families:
    """A collector that yields families computed beforehand."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def outbox_families(stats: list[dict[str, Any]], available: bool = True) -> list[Metric]:
    pending = GaugeMetricFamily(
        "tagserver_outbox_pending", "Messages waiting for delivery", labels=["destination"]
    )
    oldest = GaugeMetricFamily(
        "tagserver_outbox_oldest_age_seconds",
        "Age of the oldest message waiting for delivery",
        labels=["destination"],
    )
    dead = GaugeMetricFamily(
        "tagserver_outbox_dead_letters", "Messages in the dead-letter table", labels=["destination"]
    )
    for row in stats:
        pending.add_metric([row["destination"]], row["pending"])
        oldest.add_metric([row["destination"]], row["oldest_age_seconds"] or 0.0)
        dead.add_metric([row["destination"]], row["dead_letters"])
    up = GaugeMetricFamily(
        "tagserver_outbox_available",
        "1 while hits can be stored (/healthz 200), 0 while they get 503 (/healthz says why)",
    )
    up.add_metric([], 1.0 if available else 0.0)
    return [pending, oldest, dead, up]


def render(stats: list[dict[str, Any]], available: bool = True) -> bytes:
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated
        base = generate_latest(registry)
    else:
        base = generate_latest(REGISTRY)
    extra = CollectorRegistry(auto_describe=False)
    extra.register(_Families(outbox_families(stats, available)))
    return base + generate_latest(extra)


async def metrics_endpoint(request: Request) -> Response:
    metrics.flush()  # what this worker counted since the last flush
    outbox = request.app.state.tagserver.outbox
    available = outbox.problem is None
    try:
        stats = await outbox.stats() if outbox.is_open else []
    except Exception:  # the outbox is down: say so rather than fail the scrape
        stats, available = [], False
    body = await asyncio.get_running_loop().run_in_executor(None, render, stats, available)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
