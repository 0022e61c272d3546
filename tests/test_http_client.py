"""The shared vendor client: httpx on tagserver's asyncio network backend, without cookies."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fakes.vendor import Answer, FakeVendor
from support import free_port

from tagserver.http_client import HOLD_LIMIT, AsyncioBackend, vendor_client


@pytest.fixture
def vendor():
    with FakeVendor() as v:
        yield v


def run(coro):
    return asyncio.run(coro)


def test_the_client_runs_on_the_asyncio_backend(vendor):
    async def go():
        async with vendor_client(5.0) as client:
            assert isinstance(client._transport._pool._network_backend, AsyncioBackend)
            for i in range(3):  # one connection, kept alive
                r = await client.post(vendor.url + "/hook", json={"i": i})
                assert r.status_code == 200 and r.json() == {"ok": True}
            assert len(client._transport._pool.connections) == 1

    run(go())
    assert [r.json() for r in vendor.received] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert vendor.received[0].headers["user-agent"] == "tagserver"


@pytest.mark.parametrize("size", [0, 10, HOLD_LIMIT - 200, HOLD_LIMIT, 3 * HOLD_LIMIT + 7])
def test_bodies_of_every_size_arrive_whole(vendor, size):
    body = bytes(i % 251 for i in range(size))

    async def go():
        async with vendor_client(5.0) as client:
            r = await client.post(vendor.url + "/hook", content=body)
            assert r.status_code == 200

    run(go())
    assert vendor.received[0].body == body


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
                await client.get(vendor.url + "/reset")
            assert (await client.get(vendor.url + "/fine")).status_code == 200

    run(go())


def test_https_through_the_asyncio_backend(tmp_path):
    """TLS is started by the backend (start_tls), certificate checked as httpx would."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    seen: list[bytes] = []

    async def serve(reader, writer):
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            length = int(next(
                (line.split(b":")[1] for line in head.split(b"\r\n")
                 if line.lower().startswith(b"content-length:")), b"0",
            ))  # fmt: skip
            seen.append(await reader.readexactly(length))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    async def go():
        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        client_ctx = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(verify=client_ctx, timeout=5.0) as client:
            from tagserver.http_client import use_asyncio_backend

            assert use_asyncio_backend(client)
            for i in range(2):
                r = await client.post(f"https://127.0.0.1:{port}/hook", content=b"x" * i)
                assert (r.status_code, r.text) == (200, "ok")
            assert len(client._transport._pool.connections) == 1
        async with httpx.AsyncClient(timeout=5.0) as untrusting:
            use_asyncio_backend(untrusting)
            with pytest.raises(httpx.ConnectError):
                await untrusting.get(f"https://127.0.0.1:{port}/")
        server.close()

    run(go())
    assert seen == [b"", b"x"]
