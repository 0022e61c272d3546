"""The shared vendor client: one httpx.AsyncClient, keep-alive, timeouts, no cookies."""

from __future__ import annotations

import asyncio
import gc
import weakref

import httpx
import pytest
from fakes.vendor import Answer, FakeVendor
from support import free_port

from tagserver.delivery.http_client import forget_stream, vendor_client


@pytest.fixture
def vendor():
    with FakeVendor() as v:
        yield v


def run(coro):
    return asyncio.run(coro)


def test_requests_carry_the_user_agent_and_answers_are_read(vendor):
    async def go():
        async with vendor_client(5.0) as client:
            for i in range(3):
                r = await client.post(vendor.url + "/hook", json={"i": i})
                assert r.status_code == 200 and r.json() == {"ok": True}

    run(go())
    assert [r.json() for r in vendor.received] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert vendor.received[0].headers["user-agent"] == "tagserver"


@pytest.mark.parametrize("size", [0, 10, 65_536, 3 * 65_536 + 7])
def test_bodies_of_every_size_arrive_whole(vendor, size):
    body = bytes(i % 251 for i in range(size))

    async def go():
        async with vendor_client(5.0) as client:
            r = await client.post(vendor.url + "/hook", content=body)
            assert r.status_code == 200

    run(go())
    assert vendor.received[0].body == body


def test_answers_are_freed_without_the_garbage_collector(vendor):
    """A sender drops an answer: it is gone at once, not left in a cycle for the collector
    (which then pauses the event loop that answers hits)."""

    async def go():
        async with vendor_client(5.0) as client:
            read = await client.post(vendor.url + "/hook", json={"i": 1})
            assert read.json() == {"ok": True}  # the body stays readable
            streamed = await client.send(
                client.build_request("GET", vendor.url + "/s"), stream=True
            )
            assert await streamed.aread() == b'{"ok":true}'
            await streamed.aclose()
            forget_stream(streamed)
            return weakref.ref(read), weakref.ref(streamed)

    gc.collect()
    gc.disable()
    try:
        answers = run(go())
        assert [answer() for answer in answers] == [None, None]
    finally:
        gc.enable()


def test_no_cookie_is_kept_between_requests(vendor):
    vendor.default = Answer(headers={"Set-Cookie": "session=abc; Path=/"})

    async def go():
        async with vendor_client(5.0) as client:
            await client.get(vendor.url + "/a")
            await client.get(vendor.url + "/b")
            assert not client.cookies

    run(go())
    assert "cookie" not in vendor.received[1].headers


def test_a_connection_the_vendor_closed_is_not_reused(vendor):
    async def go():
        async with vendor_client(5.0) as client:
            assert (await client.get(vendor.url + "/a")).status_code == 200
            vendor.down().up()  # closes its side of the idle keep-alive connection
            await asyncio.sleep(0.2)
            assert (await client.get(vendor.url + "/b")).status_code == 200

    run(go())
    assert [r.path for r in vendor.received] == ["/a", "/b"]


def test_timeouts_and_refused_connections_are_httpx_errors(vendor):
    vendor.slow(2.0)

    async def go():
        async with vendor_client(0.3) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(vendor.url + "/slow")
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{free_port()}/closed")
            vendor.reset(1)
            with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
                await client.post(vendor.url + "/reset", json={})  # not idempotent: no retry
            assert (await client.get(vendor.url + "/fine")).status_code == 200

    run(go())
