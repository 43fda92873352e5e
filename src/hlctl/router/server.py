"""The router's HTTP/1.1 server: an asyncio protocol that parses requests and writes answers.

Why not aiohttp.web: at one client the router's added latency is its CPU time per request,
and aiohttp's server spent about twice what this does (a request object with a payload
stream, a task per request on Python < 3.12, a writer per response, dispatcher and
middleware machinery). The router serves seven fixed paths with JSON bodies, so the server
needs little: keep-alive, Content-Length or chunked request bodies, ``Expect:
100-continue``, a body size limit, answers with Content-Length or chunked (SSE), and a
client that disconnects cancelling its handler (which closes the upstream stream).
``Router.web_app()`` keeps an aiohttp.web front end over the same handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus

from hlctl.router.chunked import BadChunkedFraming, ChunkedDecoder

log = logging.getLogger(__name__)

_MAX_HEAD = 64 * 1024
_REASONS = {s.value: s.phrase for s in HTTPStatus}


@dataclass
class Inbound:
    """One request as the router's handlers see it (headers: lower-case names)."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes | None  # None: over the size limit, not read
    content_length: int | None = None


@dataclass
class Reply:
    """A whole answer."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


class Sink:
    """Where a streamed (text/event-stream) answer goes.

    The status and headers leave with the first bytes; ``end=True`` also ends the answer.
    """

    async def start(self, status: int, headers: Mapping[str, str], data: bytes,
                    end: bool = False) -> None:
        raise NotImplementedError

    async def write(self, data: bytes) -> None:
        raise NotImplementedError

    async def end(self, data: bytes) -> None:
        raise NotImplementedError


Handler = Callable[[Inbound, Sink], Awaitable[Reply | None]]


class _Date:
    """The Date header, formatted once a second."""

    def __init__(self) -> None:
        self.second = 0
        self.value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.value = formatdate(now, usegmt=True).encode()
        return self.value


_date = _Date()


def response_head(status: int, headers: Mapping[str, str], content_type: str,
                  length: int | None, close: bool) -> bytes:
    """Status line and headers; ``length`` None: a chunked body, -1: ended by the close."""
    lines = [b"HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: %s\r\n"
             % (status, _REASONS.get(status, "Unknown").encode(), _date(),
                content_type.encode("latin-1"))]
    if length is None:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    elif length >= 0:
        lines.append(b"Content-Length: %d\r\n" % length)
    if close:
        lines.append(b"Connection: close\r\n")
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    lines.append(b"\r\n")
    return b"".join(lines)


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Pending:
    """A request whose head is parsed and whose body is still arriving."""

    inbound: Inbound
    keep_alive: bool
    http10: bool = False
    length: int | None = None  # Content-Length
    chunked: ChunkedDecoder | None = None
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    too_large: bool = False


class HttpProtocol(asyncio.Protocol, Sink):
    """One client connection: requests one after another, each handled by a task."""

    def __init__(self, server: FastServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.pending: _Pending | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.keep_alive = True
        self.last_active = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused_writing = False
        self._reading = True

    # -- connection --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        self.last_active = self.loop.time()
        self._timer = self.loop.call_later(self.server.keepalive_s, self._idle_check)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self.task is not None and not self.task.done():
            # The client went away: its handler is cancelled, which closes the upstream.
            self.task.cancel()
        self._wake_drain()

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._wake_drain()

    def _wake_drain(self) -> None:
        waiter = self._drain
        if waiter is not None:
            self._drain = None
            if not waiter.done():
                waiter.set_result(None)

    def _idle_check(self) -> None:
        self._timer = None
        if self.closed:
            return
        idle = self.loop.time() - self.last_active
        if self.task is None and idle >= self.server.keepalive_s:
            self.close()
            return
        self._timer = self.loop.call_later(max(0.5, self.server.keepalive_s - idle),
                                           self._idle_check)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- requests ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        if self.task is None:
            self._next()
        elif len(self.buf) > _MAX_HEAD and self._reading and self.transport is not None:
            # A client pipelining far ahead of the answers: stop reading until we catch up.
            self._reading = False
            self.transport.pause_reading()

    def _next(self) -> None:
        """Parse what is buffered; start the handler once a request is complete."""
        try:
            if self.pending is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > _MAX_HEAD:
                        raise _BadRequest(431, "the request head is too large")
                    return
                if end > _MAX_HEAD:
                    raise _BadRequest(431, "the request head is too large")
                head, self.buf = self.buf[:end], self.buf[end + 4:]
                self.pending = self._parse_head(head)
            pending = self.pending
            if not self._body(pending):
                return
        except _BadRequest as exc:
            self.pending = None
            self.keep_alive = False
            self._reply_now(Reply(exc.status, self.server.error_body(exc.status, str(exc))))
            return
        except BadChunkedFraming:  # the request body's framing
            self.pending = None
            self.keep_alive = False
            self._reply_now(Reply(400, self.server.error_body(400, "bad chunked body")))
            return
        self.pending = None
        self.keep_alive = pending.keep_alive and not pending.too_large
        if not pending.too_large:
            pending.inbound.body = (pending.parts[0] if len(pending.parts) == 1
                                    else b"".join(pending.parts))
        self._head_only = pending.inbound.method == "HEAD"
        self._http10 = pending.http10
        self.task = self.loop.create_task(self._run(pending.inbound))

    def _parse_head(self, head: bytes) -> _Pending:
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
            raise _BadRequest(400, "bad request head") from None
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, "bad request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or " " in name:
                raise _BadRequest(400, "bad header line")
            key = name.lower()
            value = value.strip()
            if key in headers:
                if key in ("content-length", "transfer-encoding", "host"):
                    raise _BadRequest(400, f"repeated {name} header")
                value = f"{headers[key]}, {value}"
            headers[key] = value
        connection = headers.get("connection", "").lower()
        keep_alive = ("close" not in connection if version == "HTTP/1.1"
                      else "keep-alive" in connection)
        path = target.partition("?")[0]
        pending = _Pending(Inbound(method, path, headers, None), keep_alive,
                           http10=version == "HTTP/1.0")
        coding = headers.get("transfer-encoding")
        if coding is not None:
            if "content-length" in headers:
                raise _BadRequest(400, "both Content-Length and Transfer-Encoding")
            if coding.lower() != "chunked":
                raise _BadRequest(501, f"transfer coding {coding!r} is not supported")
            pending.chunked = ChunkedDecoder()
        elif "content-length" in headers:
            raw = headers["content-length"]
            # ASCII digits only: str.isdigit() also takes "²" and other digits int() refuses.
            if not (raw.isascii() and raw.isdigit()):
                raise _BadRequest(400, "bad Content-Length")
            pending.length = int(raw)
            pending.inbound.content_length = pending.length
            if pending.length > self.server.max_body:
                pending.too_large = True
        else:
            pending.length = 0
        if (headers.get("expect", "").lower() == "100-continue" and not pending.too_large
                and self.transport is not None):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return pending

    def _body(self, pending: _Pending) -> bool:
        """Move the buffered body into ``pending``; True once it is all there."""
        if pending.too_large and pending.chunked is None:
            self.buf = b""  # not read: the connection closes after the 413
            return True
        if pending.chunked is not None:
            data, self.buf = self.buf, b""
            if data:
                out = pending.chunked.feed(data)
                pending.size += len(out)
                if pending.size > self.server.max_body:
                    pending.too_large = True
                    pending.parts = []
                elif out:
                    pending.parts.append(out)
            if not pending.chunked.done:
                return False
            self.buf = pending.chunked.extra
            return True
        assert pending.length is not None
        need = pending.length - pending.size
        if len(self.buf) < need:
            if self.buf:
                pending.parts.append(self.buf)
                pending.size += len(self.buf)
                self.buf = b""
            return False
        pending.parts.append(self.buf[:need])
        pending.size += need
        self.buf = self.buf[need:]
        return True

    async def _run(self, inbound: Inbound) -> None:
        try:
            reply = await self.server.handler(inbound, self)
            if reply is not None:
                self._reply_now(reply)
        except asyncio.CancelledError:
            self.keep_alive = False
            if self.closed:
                return  # the client went away: nothing more to do
            raise
        except Exception:
            log.exception("request failed inside the router's server")
            self.keep_alive = False
            if not self._started and not self.closed:
                self._reply_now(Reply(500, self.server.error_body(500, "internal error")))
        finally:
            self.task = None
            self._started = False
            self.last_active = self.loop.time()
            if not self.keep_alive:
                self.close()
            elif self.buf and not self.closed:
                self._next()
            if not self._reading and not self.closed and self.transport is not None:
                self._reading = True
                self.transport.resume_reading()

    _started = False  # a streamed answer's head has been sent
    _head_only = False  # a HEAD request: the answer's head without its body
    _http10 = False  # an HTTP/1.0 request: no chunked answers

    def _reply_now(self, reply: Reply) -> None:
        if self.closed or self.transport is None:
            return
        body = b"" if self._head_only else reply.body
        self.transport.write(response_head(reply.status, reply.headers, reply.content_type,
                                           len(reply.body), not self.keep_alive) + body)
        if not self.keep_alive:
            self.close()

    # -- the streamed answer (Sink) ------------------------------------------------------

    async def start(self, status: int, headers: Mapping[str, str], data: bytes,
                    end: bool = False) -> None:
        if self.closed or self.transport is None:
            raise ConnectionResetError("the client went away")
        self._started = True
        if self._http10:
            # No chunked framing for HTTP/1.0: the body ends when the connection does.
            self.keep_alive = False
            self.transport.write(response_head(status, headers, "text/event-stream", -1, True)
                                 + data)
        else:
            head = response_head(status, headers, "text/event-stream", None,
                                 not self.keep_alive)
            chunk = b"%x\r\n%s\r\n" % (len(data), data) if data else b""
            self.transport.write(head + chunk + b"0\r\n\r\n" if end else head + chunk)
        await self._drained()

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise ConnectionResetError("the client went away")
        if data:
            self.transport.write(data if self._http10 else b"%x\r\n%s\r\n" % (len(data), data))
            await self._drained()

    async def end(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise ConnectionResetError("the client went away")
        if self._http10:
            self.transport.write(data)
            return
        self.transport.write((b"%x\r\n%s\r\n" % (len(data), data) if data else b"")
                             + b"0\r\n\r\n")

    async def _drained(self) -> None:
        if self._paused_writing and not self.closed:
            waiter = self.loop.create_future()
            self._drain = waiter
            await waiter
        if self.closed:
            raise ConnectionResetError("the client went away")


class FastServer:
    """Listens, and hands each complete request to ``handler``."""

    def __init__(self, handler: Handler, *, max_body: int,
                 error_body: Callable[[int, str], bytes], keepalive_s: float = 75.0) -> None:
        self.handler = handler
        self.max_body = max_body
        self.error_body = error_body
        self.keepalive_s = keepalive_s
        self.connections: set[HttpProtocol] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int, backlog: int = 1024) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: HttpProtocol(self), host, port,
                                                backlog=backlog, reuse_address=True)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop listening; let running requests finish for ``grace_s``, then drop them."""
        if self._server is not None:
            self._server.close()
        deadline = asyncio.get_running_loop().time() + grace_s
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()
        while any(c.task is not None for c in self.connections):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
