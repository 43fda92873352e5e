"""The router's HTTP/1.1 upstream client: chunked framing, keep-alive reuse, timeouts.

The servers here are real sockets on loopback (asyncio servers written for each case), so
the client's framing and pooling meet real reads of arbitrary sizes.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from hlctl.router.chunked import BadChunkedFraming, ChunkedDecoder
from hlctl.router.http1 import (
    ConnectFailed,
    Http1Client,
    build_head,
    parse_url,
)


def chunked(payloads: list[bytes], trailer: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in payloads) + b"0\r\n" + trailer + b"\r\n"


@pytest.mark.parametrize("seed", range(40))
def test_chunked_decoder_any_read_boundaries(seed: int) -> None:
    rnd = random.Random(seed)
    payloads = [rnd.randbytes(rnd.randrange(1, 300)) for _ in range(rnd.randrange(0, 20))]
    wire = chunked(payloads, rnd.choice([b"", b"X-Trailer: 1\r\n"]))
    if seed % 3 == 0:  # an extension on every size line
        wire = wire.replace(b"\r\n", b";ext=1\r\n", 1)
    decoder, got, pos = ChunkedDecoder(), [], 0
    while pos < len(wire) and not decoder.done:
        step = rnd.randrange(1, 80)
        got.append(decoder.feed(wire[pos:pos + step]))
        pos += step
    assert decoder.done
    assert b"".join(got) == b"".join(payloads)


@pytest.mark.parametrize("wire", [b"zz\r\nabc\r\n", b"3\r\nabcXY", b"-3\r\nabc\r\n",
                                  b"+3\r\nabc\r\n", b"0_3\r\nabc\r\n", b" 3\r\nabc\r\n"])
def test_chunked_decoder_rejects_bad_framing(wire: bytes) -> None:
    with pytest.raises(BadChunkedFraming):
        ChunkedDecoder().feed(wire)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1"


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return head, await reader.readexactly(length)


def run_on(loop_kind: str, main: Callable[[], Awaitable[None]]) -> None:
    if loop_kind == "asyncio":
        asyncio.run(main())  # type: ignore[arg-type]
        return
    uvloop = pytest.importorskip("uvloop")
    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_post_reuses_the_connection_and_decodes_both_framings(loop_kind: str) -> None:
    """On asyncio and on uvloop (what `router serve` runs on)."""

    async def main() -> None:
        connections: list[int] = []
        heads: list[bytes] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(1)
            while True:
                try:
                    head, body = await read_request(reader)
                except asyncio.IncompleteReadError:
                    break
                heads.append(head)
                if b"/chunked" in head:
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 + chunked([b"data: 1\n\n", body]))
                else:
                    writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))
                await writer.drain()
            writer.close()

        server, url = await serve(handler)
        client = Http1Client(limit=4, keepalive_s=5)
        origin = parse_url(url)
        loop = asyncio.get_running_loop()
        for path, want in (("/plain", (201, b"hello")), ("/chunked", (200, b"data: 1\n\nhello")),
                           ("/plain", (201, b"hello"))):
            resp = await client.request(origin, build_head("POST", origin, path,
                                                           {"Authorization": "Bearer k"}),
                                        b"hello", connect_s=1, deadline=loop.time() + 5)
            assert (resp.status, await resp.read(loop.time() + 5)) == want
        assert connections == [1]  # one socket for all three
        assert heads[0].startswith(b"POST /v1/plain HTTP/1.1\r\n")
        assert b"Authorization: Bearer k\r\n" in heads[0] and b"Content-Length: 5" in heads[0]
        client.close()
        server.close()
        await server.wait_closed()

    run_on(loop_kind, main)


def test_a_socket_the_server_closed_while_idle_is_retried_once() -> None:
    async def main() -> None:
        served = 0

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal served
            await read_request(reader)
            served += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()  # no keep-alive, without saying so

        server, url = await serve(handler)
        client = Http1Client(limit=4, keepalive_s=5)
        origin = parse_url(url)
        head = build_head("POST", origin, "/x", {})
        loop = asyncio.get_running_loop()
        for _ in range(3):
            resp = await client.request(origin, head, b"{}", connect_s=1,
                                        deadline=loop.time() + 5)
            assert await resp.read(loop.time() + 5) == b"ok"
            await asyncio.sleep(0.05)  # the server's close arrives while the socket is idle
        assert served == 3
        assert client.open <= 1
        client.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_timeouts_and_connect_failures() -> None:
    async def main() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            await asyncio.sleep(5)

        server, url = await serve(silent)
        client = Http1Client(limit=4, keepalive_s=5)
        origin = parse_url(url)
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            await client.request(origin, build_head("POST", origin, "/x", {}), b"{}",
                                 connect_s=1, deadline=loop.time() + 0.2)
        assert client.open == 0  # the timed-out socket was dropped
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectFailed):
            await client.request(origin, build_head("POST", origin, "/x", {}), b"{}",
                                 connect_s=1, deadline=loop.time() + 2)
        assert client.open == 0
        client.close()

    asyncio.run(main())


def test_pool_limit_waits_for_a_free_connection() -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                try:
                    await read_request(reader)
                except asyncio.IncompleteReadError:
                    break
                await asyncio.sleep(0.05)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()

        server, url = await serve(handler)
        client = Http1Client(limit=2, keepalive_s=5)
        origin = parse_url(url)
        head = build_head("POST", origin, "/x", {})
        loop = asyncio.get_running_loop()

        async def one() -> bytes:
            resp = await client.request(origin, head, b"{}", connect_s=1,
                                        deadline=loop.time() + 5)
            return await resp.read(loop.time() + 5)

        assert await asyncio.gather(*(one() for _ in range(6))) == [b"ok"] * 6
        assert client.open <= 2
        client.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_closing_a_half_read_answer_drops_the_socket() -> None:
    async def main() -> None:
        gone = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await writer.drain()
            if not await reader.read(100):  # the client's close reaches the server
                gone.set()

        server, url = await serve(handler)
        client = Http1Client(limit=2, keepalive_s=5)
        origin = parse_url(url)
        loop = asyncio.get_running_loop()
        resp = await client.request(origin, build_head("POST", origin, "/x", {}), b"{}",
                                    connect_s=1, deadline=loop.time() + 5)
        assert await resp.read_some(loop.time() + 5) == b"hello"
        resp.close()
        await asyncio.wait_for(gone.wait(), 5)
        assert client.open == 0 and not client.idle
        client.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_build_head_and_parse_url() -> None:
    origin = parse_url("https://user:pw@api.example.com/v1/")
    assert (origin.host, origin.port, origin.netloc, origin.prefix) == (
        "api.example.com", 443, "api.example.com", "/v1")
    assert build_head("GET", parse_url("http://h:8080/health"), "", {}).startswith(
        b"GET /health HTTP/1.1\r\nHost: h:8080\r\n")
    with pytest.raises(ValueError):
        parse_url("ftp://h/")


@pytest.mark.parametrize("seed", range(20))
def test_reads_of_whole_chunks_decode_in_one_pass(seed: int) -> None:
    """The fast path for reads that end on a chunk boundary gives the exact decoder's result."""
    rnd = random.Random(seed)
    payloads = [rnd.randbytes(rnd.randrange(1, 50)) for _ in range(rnd.randrange(1, 10))]
    if seed % 4 == 0:
        payloads[0] = b"a\r\n3\r\nxyz"  # CRLFs inside a payload: the split is not the framing
    last = seed % 2 == 0
    wire = chunked(payloads)[:None if last else -5]  # without "0\r\n\r\n" when not the last
    decoder = ChunkedDecoder()
    assert decoder.feed(wire) == b"".join(payloads)
    assert decoder.done == last


@pytest.mark.parametrize("wire", [b"3\r\nabc\r\n00\r\n\r\n", b"3\r\nabc\r\n0\r\nX: 1\r\n\r\n"])
def test_last_chunk_spellings_end_the_body(wire: bytes) -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(wire) == b"abc" and decoder.done
