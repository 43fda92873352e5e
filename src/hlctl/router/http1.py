"""A lean HTTP/1.1 client for the router's upstream calls, on asyncio protocols.

Why not aiohttp's client: at one client, the router's added latency is its CPU time per
request, and aiohttp's ClientSession spent most of it (request and response objects,
header multidicts, cookie and trace hooks, a StreamReader woken once per SSE chunk). The
router needs little of that: POST JSON or GET, keep-alive, Content-Length or chunked
bodies, timeouts. This client does just that, with one request head per upstream and path
built once, and a protocol whose ``data_received`` only queues the bytes.

Keep-alive: idle connections are reused newest first and closed after ``keepalive_s``
(below the upstream's own keep-alive), so a reused socket is rarely one the server has
closed; when one is (no byte of the answer arrived), the request is sent once more on a
new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from hlctl.router.chunked import ChunkedDecoder

# Buffered upstream bytes beyond which the socket is no longer read (the client is slow).
_HIGH_WATER = 1 << 20
_MAX_HEAD = 64 * 1024


class UpstreamClosed(ConnectionError):
    """The upstream closed the connection or broke HTTP/1.1 before the answer ended."""


class ConnectFailed(ConnectionError):
    """No connection to the upstream (refused, unreachable, TLS, or the connect timeout)."""


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int
    netloc: str  # the Host header
    prefix: str  # the URL's path before the endpoint path, e.g. "/v1"


def parse_url(url: str) -> Origin:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    netloc = parts.netloc.rpartition("@")[2]  # never user:password into the Host header
    return Origin(parts.scheme, parts.hostname, port, netloc, parts.path.rstrip("/"))


def build_head(method: str, origin: Origin, path: str, headers: Mapping[str, str]) -> bytes:
    """A request head up to the Content-Length value (callers keep it: it never changes)."""
    lines = [f"{method} {origin.prefix + path or '/'} HTTP/1.1", f"Host: {origin.netloc}",
             "Accept-Encoding: identity", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")


class Connection(asyncio.Protocol):
    """One upstream socket. ``data_received`` queues bytes and wakes the one reader."""

    def __init__(self, client: Http1Client, loop: asyncio.AbstractEventLoop,
                 key: tuple[str, str, int]) -> None:
        self.client = client
        self.loop = loop
        self.key = key
        self.counted = True  # in the client's count of open connections
        self.transport: asyncio.Transport | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.error: BaseException | None = None
        self.paused = False
        self.received = False  # any byte since the last request was sent
        self.expires = 0.0

    # -- protocol callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but act as one.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        self.received = True
        if self.size > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self._wake()
        self._uncount()

    def _uncount(self) -> None:
        if self.counted:
            self.counted = False
            self.client.open -= 1
            self.client.wake_one()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- for the response reader -----------------------------------------------------------

    def take(self) -> bytes:
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.size = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    async def read(self, deadline: float) -> bytes:
        """The bytes that came since the last read, waiting until ``deadline`` (loop time).

        b"" once the upstream has closed; TimeoutError past the deadline.
        """
        if self.chunks:
            return self.take()
        if self.closed:
            return b""
        waiter = self.loop.create_future()
        self.waiter = waiter
        timer = self.loop.call_at(deadline, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None
        return self.take() if self.chunks else b""

    def send(self, data: bytes | list[bytes]) -> None:
        assert self.transport is not None
        self.received = False
        if isinstance(data, list):
            self.transport.writelines(data)
        else:
            self.transport.write(data)

    def close(self, hard: bool = False) -> None:
        """Close the socket (``hard``: at once, with a reset); idempotent."""
        self.closed = True
        if self.transport is not None:
            if hard:
                self.transport.abort()
            else:
                self.transport.close()
        self._uncount()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Response:
    """An upstream answer: status, lower-cased headers, and a body read as it arrives."""

    def __init__(self, client: Http1Client, conn: Connection, status: int,
                 headers: dict[str, str], rest: bytes, no_body: bool) -> None:
        self.client = client
        self.conn = conn
        self.status = status
        self.headers = headers
        self.reusable = headers.get("connection", "").lower() != "close"
        self.chunked: ChunkedDecoder | None = None
        self.left: int | None = None  # Content-Length bytes still to come
        self.done = False
        self.pending = b""  # body bytes that came with the head
        if no_body:
            self.left = 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self.chunked = ChunkedDecoder()
        elif "content-length" in headers:
            try:
                self.left = int(headers["content-length"])
            except ValueError:
                raise UpstreamClosed("bad Content-Length") from None
        else:
            self.reusable = False  # the body ends when the connection does
        self.pending = rest
        if self.left == 0:
            self._finish(rest)

    def _finish(self, extra: bytes) -> None:
        self.done = True
        if self.reusable and not extra and not self.conn.closed:
            self.client.release(self.conn)
        else:
            self.conn.close()

    def _body(self, data: bytes) -> bytes:
        if self.chunked is not None:
            out = self.chunked.feed(data)
            if self.chunked.done:
                self._finish(self.chunked.extra)
            return out
        if self.left is not None:
            if len(data) >= self.left:
                out, extra = data[:self.left], data[self.left:]
                self.left = 0
                self._finish(extra)
                return out
            self.left -= len(data)
        return data

    async def read_some(self, deadline: float) -> bytes:
        """The next body bytes (at least one), or b"" at the body's end."""
        while not self.done:
            if self.pending:
                data, self.pending = self.pending, b""
            else:
                data = await self.conn.read(deadline)
                if not data:
                    if self.chunked is None and self.left is None:
                        self.done = True  # ended by the close, as it said it would
                        self.conn.close()
                        return b""
                    raise UpstreamClosed("the upstream closed the connection mid-answer")
            out = self._body(data)
            if out:
                return out
        return b""

    async def read(self, deadline: float) -> bytes:
        parts = []
        while data := await self.read_some(deadline):
            parts.append(data)
        return b"".join(parts)

    def close(self) -> None:
        """Drop the connection unless the answer was read to its end (then it is pooled).

        Dropping a half-read answer's socket is what tells llama-server to free the slot.
        """
        if not self.done:
            self.done = True
            self.conn.close(hard=True)


class Http1Client:
    """Keep-alive connections per origin, at most ``limit`` open in all."""

    def __init__(self, *, limit: int, keepalive_s: float,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.limit = limit
        self.keepalive_s = keepalive_s
        self._ssl = ssl_context
        self.idle: dict[tuple[str, str, int], list[Connection]] = {}
        self.open = 0  # connections open or opening
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(self, origin: Origin, head: bytes, body: bytes, *, connect_s: float,
                      deadline: float) -> Response:
        """Send one request and read the answer's head; the body is read from the Response.

        ``head`` comes from ``build_head``. Raises ConnectFailed, TimeoutError past
        ``deadline`` (loop time), or another OSError (UpstreamClosed, a reset).
        """
        data = [head, b"%d\r\n\r\n" % len(body), body]
        no_body = head.startswith(b"HEAD ")
        for attempt in (0, 1):
            conn, reused = await self._acquire(origin, connect_s, deadline)
            try:
                conn.send(data)
                return await self._read_head(conn, no_body, deadline)
            except TimeoutError:
                conn.close(hard=True)
                raise
            except OSError:
                conn.close(hard=True)
                if attempt == 0 and reused and not conn.received:
                    continue  # the server had closed the idle socket: once more, on a new one
                raise
            except BaseException:
                conn.close(hard=True)
                raise
        raise AssertionError("unreachable")

    async def _read_head(self, conn: Connection, no_body: bool,
                         deadline: float) -> Response:
        buf = b""
        while True:
            data = await conn.read(deadline)
            if not data:
                raise UpstreamClosed("the upstream closed the connection before answering")
            buf += data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise UpstreamClosed("the upstream's answer head is too long")
                continue
            lines = buf[:end].decode("latin-1").split("\r\n")
            version, _, rest = lines[0].partition(" ")
            try:
                status = int(rest[:3])
            except ValueError:
                raise UpstreamClosed("not an HTTP answer") from None
            if not version.startswith("HTTP/1."):
                raise UpstreamClosed("not an HTTP/1.x answer")
            if 100 <= status < 200:
                buf = buf[end + 4:]  # 100 Continue and the like: the answer follows
                continue
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
                headers["connection"] = "close"
            return Response(self, conn, status, headers, buf[end + 4:],
                            no_body or status in (204, 304))

    async def _acquire(self, origin: Origin, connect_s: float,
                       deadline: float) -> tuple[Connection, bool]:
        key = (origin.scheme, origin.host, origin.port)
        idle = self.idle.get(key)
        now = None
        while idle:
            conn = idle.pop()  # the newest: the least likely to have been closed
            if now is None:
                now = conn.loop.time()
            if not conn.closed and conn.expires > now:
                return conn, True
            conn.close()
        while self.open >= self.limit:
            if not self._close_oldest_idle():
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                try:
                    async with asyncio.timeout_at(deadline):
                        await waiter
                except BaseException:
                    if not waiter.cancelled() and waiter.done():
                        self.wake_one()  # pass the turn on
                    raise
        loop = asyncio.get_running_loop()
        conn = Connection(self, loop, key)
        self.open += 1
        try:
            ssl_context: ssl.SSLContext | None = None
            if origin.scheme == "https":
                if self._ssl is None:
                    self._ssl = ssl.create_default_context()
                ssl_context = self._ssl
            async with asyncio.timeout_at(min(deadline, loop.time() + connect_s)):
                transport, _ = await loop.create_connection(
                    lambda: conn, origin.host, origin.port, ssl=ssl_context,
                    server_hostname=origin.host if ssl_context else None)
        except (OSError, ssl.SSLError) as exc:  # TimeoutError included
            conn.close(hard=True)
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from None
        except BaseException:
            conn.close(hard=True)
            raise
        # uvloop may call connection_made only after create_connection has returned.
        conn.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, False

    def release(self, conn: Connection) -> None:
        """Pool a connection whose answer was read to its end."""
        if self._closed or conn.closed or self._waiters:
            # Someone may wait for a free slot, perhaps for another origin: this connection
            # closes and its slot goes to them.
            conn.close()
            return
        conn.expires = conn.loop.time() + self.keepalive_s
        self.idle.setdefault(conn.key, []).append(conn)
        if self._sweep is None:
            self._sweep = conn.loop.call_later(self.keepalive_s, self._sweep_idle)

    def wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _close_oldest_idle(self) -> bool:
        oldest: Connection | None = None
        for conns in self.idle.values():
            if conns and (oldest is None or conns[0].expires < oldest.expires):
                oldest = conns[0]
        if oldest is None:
            return False
        self.idle[oldest.key].remove(oldest)
        oldest.close()
        return True

    def _sweep_idle(self) -> None:
        self._sweep = None
        now = asyncio.get_event_loop().time()
        for key, conns in list(self.idle.items()):
            keep = [c for c in conns if not c.closed and c.expires > now]
            for conn in conns:
                if conn not in keep:
                    conn.close()
            if keep:
                self.idle[key] = keep
            else:
                del self.idle[key]
        if self.idle:
            self._sweep = asyncio.get_event_loop().call_later(self.keepalive_s,
                                                              self._sweep_idle)

    def close(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        self.idle.clear()
