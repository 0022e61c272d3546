"""The internals of other libraries that tagserver relies on (`tagserver._compat`): pinned to
the versions they were checked against, and checked to behave like the public way."""

from __future__ import annotations

import asyncio
import gc
from importlib.metadata import version

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from tagserver import _compat, metrics
from tagserver.web.app import HitRequest


@pytest.mark.parametrize("library", sorted(_compat.CHECKED))
def test_the_installed_version_is_one_the_internals_were_checked_against(library):
    installed = version(library)
    assert installed in _compat.CHECKED[library], (
        f"{library} {installed}: re-check tagserver/_compat.py against it, then add it to CHECKED"
    )


def test_histogram_counts_added_at_once_equal_one_observe_each():
    values = [0.0004, 0.001, 0.0031, 0.0031, 0.2, 0.7, 3.0]
    buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
    one_by_one, at_once = CollectorRegistry(), CollectorRegistry()
    public = Histogram("t_seconds", "t", buckets=buckets, registry=one_by_one)
    batched = Histogram("t_seconds", "t", buckets=buckets, registry=at_once)
    for value in values:
        public.observe(value)
        metrics.observe(batched, value)  # no event loop here: flushed at once
    metrics.flush()

    def samples(registry):  # all but the creation time
        return [line for line in generate_latest(registry).splitlines() if b"_created" not in line]

    assert samples(at_once) == samples(one_by_one)
    assert b't_seconds_bucket{le="0.005"} 4.0' in generate_latest(at_once)


def test_a_released_response_is_freed_without_the_garbage_collector():
    async def requests(release: bool) -> int:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"ok": True}))
        async with httpx.AsyncClient(transport=transport) as client:
            gc.collect()
            gc.disable()
            try:
                for _ in range(50):
                    response = await client.post("http://vendor.test/x", json={"n": 1})
                    assert response.json() == {"ok": True}
                    if release:
                        _compat.release_response(response)
                        assert response.json() == {"ok": True}  # still readable
                    del response
                return gc.collect()
            finally:
                gc.enable()

    assert asyncio.run(requests(release=False)) > 0  # the cycle this works around
    assert asyncio.run(requests(release=True)) == 0


async def test_a_hit_request_gives_clients_the_body_it_has_read():
    async def receive():  # drained already by the hit path's read
        return {"type": "http.disconnect"}

    request = HitRequest({"type": "http", "method": "POST", "headers": []}, receive)
    request.received = b'{"a": 1}'
    assert await request.body() == b'{"a": 1}'
    assert await request.json() == {"a": 1}
    assert b"".join([chunk async for chunk in request.stream()]) == b'{"a": 1}'
