"""One exchange with one upstream: non-streaming, or SSE passed through chunk by chunk.

The rule that makes failover safe: nothing reaches the client until the upstream has sent
its first chunk with ``choices`` (or, non-streaming, its whole answer). Any failure before
that raises ``UpstreamFailure`` and the caller may try the cloud; any failure after it ends
the stream with an in-band ``data: {"error": ...}`` frame and no ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from hlctl.router.http1 import Http1Client, Response, build_head
from hlctl.router.server import Sink
from hlctl.router.upstreams import Backend

# Byte strings that make an SSE batch worth parsing event by event ("error" stands for both
# the JSON key and the event field).
_MARKS = (b'"usage"', b'"timings"', b"error", b"[DONE]")
# With the stream's Content-Type (text/event-stream), which each Sink sets.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class SseResponse(web.StreamResponse):
    """A stream whose status and headers leave in the same write as its first frames.

    aiohttp's StreamResponse sends its headers in a write of their own at ``prepare()``;
    web.Response opts out of that with this class attribute, and so do we: the headers are
    only committed once the first chunk is in hand anyway, so one socket write carries both
    (a write to a loopback or LAN socket costs more than all the router's Python per chunk).
    """

    _send_headers_immediately = False


class UpstreamFailure(Exception):
    """The upstream failed before anything reached the client: failover is still possible."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(kind)
        self.kind = kind
        self.detail = detail


@dataclass
class Outcome:
    """What the exchange produced, for the ledger and the metrics."""

    status: int = 0
    model: str = ""
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    chunks: int = 0  # content chunks streamed; a token count when the stream was cut
    first_chunk_at: float | None = None  # perf_counter when the first chunk was committed
    # The last streamed chunks with usage and with timings, parsed once the answer is out.
    usage_chunk: bytes | None = None
    timings_chunk: bytes | None = None
    cut: str | None = None  # why a committed stream ended early
    client_gone: bool = False
    overhead_s: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)


def parse_kept_chunks(out: Outcome) -> None:
    """Usage and timings from the stream's kept chunks (after the answer has gone out)."""
    parsed: dict[int, Any] = {}
    for raw, key in ((out.usage_chunk, "usage"), (out.timings_chunk, "timings")):
        if raw is None:
            continue
        obj = parsed.get(id(raw))
        if obj is None:
            try:
                obj = parsed[id(raw)] = json.loads(raw)
            except ValueError:
                continue
        value = obj.get(key) if isinstance(obj, dict) else None
        if isinstance(value, dict):
            setattr(out, key, value)


def error_frame(message: str, code: str, type_: str = "upstream_error") -> bytes:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


# The fallback reason for a prompt longer than llama-server's context.
CONTEXT_OVERFLOW = "context-overflow"


def is_context_overflow(status: int, body: bytes) -> bool:
    """llama-server's answer to a prompt longer than its context (HTTP 400, error type
    exceed_context_size_error), which it counted exactly where the router only estimated:
    something the local model cannot do, not a failure of it."""
    return status == 400 and b"exceed_context_size_error" in body


def _failure_for_status(status: int, backend: Backend) -> UpstreamFailure | None:
    if status >= 500 or status == 429:
        return UpstreamFailure(f"status-{status}")
    if backend.kind == "cloud" and status in (401, 403):
        # The provider's own message may echo part of the key: never pass it through.
        return UpstreamFailure(f"status-{status}", "the provider refused the router's key")
    return None


_JSON_HEADERS = {"Content-Type": "application/json"}


def request_head(backend: Backend, path: str) -> bytes:
    """The request head for a POST to one backend's path, built once and kept."""
    head = backend.heads.get(path)
    if head is None:
        head = build_head("POST", backend.origin, path, {**_JSON_HEADERS, **backend.headers})
        backend.heads[path] = head
    return head


async def post_json(client: Http1Client, backend: Backend, path: str, data: bytes,
                    *, connect_s: float, total_s: float) -> tuple[int, bytes]:
    """POST and read the whole answer; connection trouble and 5xx/429 are failures."""
    deadline = asyncio.get_running_loop().time() + total_s
    try:
        resp = await client.request(backend.origin, request_head(backend, path), data,
                                    connect_s=connect_s, deadline=deadline)
        try:
            raw = await resp.read(deadline)
        finally:
            resp.close()
    except TimeoutError:
        raise UpstreamFailure("timeout") from None
    except OSError as exc:
        raise UpstreamFailure("connect", type(exc).__name__) from None
    failure = _failure_for_status(resp.status, backend)
    if failure is not None:
        raise failure
    return resp.status, raw


class StreamRelay:
    """Pass one upstream SSE stream to the client, committing at the first real chunk."""

    def __init__(self, sink: Sink, backend: Backend, *, include_usage: bool,
                 connect_s: float, first_chunk_s: float, idle_s: float) -> None:
        self.sink = sink
        self.backend = backend
        self.include_usage = include_usage
        self.connect_s = connect_s
        self.first_chunk_s = first_chunk_s
        self.idle_s = idle_s
        self.outcome = Outcome()
        self.done = False

    async def run(self, client: Http1Client, path: str, data: bytes,
                  headers: dict[str, str], started: float) -> None:
        """``started`` is when the router began this request; headers carry the overhead."""
        out = self.outcome
        deadline = asyncio.get_running_loop().time() + self.first_chunk_s
        try:
            resp = await client.request(self.backend.origin, request_head(self.backend, path),
                                        data, connect_s=self.connect_s, deadline=deadline)
        except TimeoutError:
            raise UpstreamFailure("first-chunk-timeout") from None
        except OSError as exc:
            raise UpstreamFailure("connect", type(exc).__name__) from None
        try:
            reader, first, rest = await self._open(resp, deadline)
            received = time.perf_counter()
            headers = {**SSE_HEADERS, **headers}
            out.overhead_s += time.perf_counter() - received
            headers["X-HL-Overhead-Ms"] = f"{(out.overhead_s) * 1000:.3f}"
            out.status = 200
            out.first_chunk_at = time.perf_counter()
            await self._pump(headers, reader, first, rest)
        finally:
            # Closing (not pooling) a half-read answer drops the socket, so llama-server
            # sees the disconnect and frees the slot.
            resp.close()

    async def _open(self, resp: Response, deadline: float) -> tuple[SseReader, bytes, bytes]:
        """Up to the first chunk with choices, or an UpstreamFailure / PassThrough."""
        try:
            if resp.status != 200:
                failure = _failure_for_status(resp.status, self.backend)
                if failure is not None:
                    raise failure
                # A client error (400 and the like): hand it over as the upstream said it.
                raise PassThrough(resp.status, await resp.read(deadline))
            reader = SseReader(resp)
            first, rest = await self._first_chunk(reader, deadline)
            return reader, first, rest
        except TimeoutError:
            raise UpstreamFailure("first-chunk-timeout") from None
        except OSError as exc:
            raise UpstreamFailure("cut-before-first-chunk", type(exc).__name__) from None

    async def _first_chunk(self, reader: SseReader, deadline: float) -> tuple[bytes, bytes]:
        """Skip pings and progress objects up to the first chunk with choices.

        Returns its payload and the bytes of the events that arrived with it, still to be
        sent (looked at one by one only up to that first chunk: a fast upstream's whole
        answer may be in this read).
        """
        while (raw := await reader.batch(deadline)) is not None:
            start = 0
            while start < len(raw):
                stop = raw.find(b"\n\n", start)  # a batch ends with a blank line
                kind, payload = parse_event(raw[start:stop])
                start = stop + 2
                if kind == "error":
                    raise UpstreamFailure("in-band-error")
                if kind != "data":
                    continue
                if payload == b"[DONE]":
                    raise UpstreamFailure("empty-stream")
                try:
                    obj = json.loads(payload)
                except ValueError:
                    raise UpstreamFailure("bad-chunk") from None
                if not isinstance(obj, dict) or "error" in obj:
                    raise UpstreamFailure("in-band-error")
                if "choices" in obj:
                    self.outcome.model = str(obj.get("model") or "")
                    return payload, raw[start:]
        raise UpstreamFailure("empty-stream")

    def _filter(self, payload: bytes) -> bytes | None:
        """Keep usage and timings for the ledger; drop the usage the client did not ask for.

        Chunks are kept as bytes and parsed after the answer has gone out; only a chunk
        with both choices and usage (which must lose its usage on the way) is parsed now.
        """
        out = self.outcome
        if b'"timings"' in payload:
            out.timings_chunk = payload
        if b'"usage"' not in payload or b'"usage":null' in payload:
            return payload
        out.usage_chunk = payload
        if self.include_usage:
            return payload
        if b'"choices":[]' in payload:
            return None  # the extra usage-only chunk that we asked for, not the client
        try:
            obj = json.loads(payload)
        except ValueError:
            return payload
        if not isinstance(obj, dict) or obj.get("usage") is None:
            return payload
        if not obj.get("choices"):
            return None
        del obj["usage"]
        return json.dumps(obj).encode()

    def _frames(self, raw: bytes, out: list[bytes]) -> bool:
        """Append the client's frames for the events in ``raw``; True once the stream ended.

        Events with nothing to look at (no usage, timings, error or end) go to the client
        as the upstream's bytes, untouched and in one piece; only the rest are parsed.
        """
        first = -1
        for mark in _MARKS:  # one scan per mark, and none of them a JSON parse
            at = raw.find(mark)
            if at >= 0 and (first < 0 or at < first):
                first = at
        if first < 0:
            out.append(raw)
            return False
        cut = raw.rfind(b"\n\n", 0, first) + 2
        if cut > 2:
            out.append(raw[:cut])
            raw = raw[cut:]
        events = split_events(raw)
        for event in events:
            kind, payload = parse_event(event)
            if kind == "data":
                if payload == b"[DONE]":
                    out.append(b"data: [DONE]\n\n")
                    self.done = True
                    return True
                if payload.startswith(b'{"error"'):
                    self.outcome.cut = "in-band-error"
                    out.append(b"data: " + payload + b"\n\n")
                    return True
                chunk = self._filter(payload)
                if chunk is not None:
                    out.append(b"data: " + chunk + b"\n\n")
            elif kind == "error":
                self.outcome.cut = "in-band-error"
                out.append(b"data: " + payload + b"\n\n")
                return True
            elif kind == "comment":
                out.append(event + b"\n\n")  # keep-alives keep the client's proxies open
        return False

    async def _pump(self, headers: dict[str, str], reader: SseReader, first: bytes,
                    rest: bytes) -> None:
        """Send what the upstream sends as it arrives: one write per upstream read.

        The status and headers leave with the first frames, and the frames of the read
        that ends the stream with the end itself (a socket write costs more than all the
        router's Python per chunk).
        """
        out = self.outcome
        sink = self.sink
        committed = False
        loop = asyncio.get_running_loop()
        idle_s = self.idle_s
        frames: list[bytes] = []
        chunk = self._filter(first)
        if chunk is not None:
            frames.append(b"data: " + chunk + b"\n\n")
        ended = self._frames(rest, frames) if rest else False
        try:
            while not ended:
                if frames:
                    data = b"".join(frames)
                    try:
                        if committed:
                            await sink.write(data)
                        else:
                            await sink.start(200, headers, data)
                            committed = True
                    except (OSError, aiohttp.ClientError):
                        out.client_gone = True
                        return
                    # Counted once sent: a token estimate, for a stream cut before its usage.
                    out.chunks += data.count(b"data:")
                    frames = []
                raw = await reader.batch(loop.time() + idle_s)
                if raw is None:
                    out.cut = "stream-cut"
                    break
                ended = self._frames(raw, frames)
        except TimeoutError:
            out.cut = "idle-timeout"
        except OSError as exc:
            out.cut = f"stream-cut:{type(exc).__name__}"
        try:
            if out.cut is not None and out.cut != "in-band-error":
                frames.append(error_frame(
                    f"the {self.backend.kind} upstream stopped mid-stream ({out.cut})",
                    "stream_cut"))
            data = b"".join(frames)
            if committed:
                await sink.end(data)
            else:
                await sink.start(200, headers, data, end=True)
            out.chunks += data.count(b"data:") - 1  # less the [DONE] or the error frame
        except (OSError, aiohttp.ClientError):
            out.client_gone = True


def split_events(raw: bytes) -> list[bytes]:
    """Whole events (each ending in a blank line) into single events without separators."""
    return raw[:-2].split(b"\n\n") if raw.endswith(b"\n\n") else raw.split(b"\n\n")


def parse_event(event: bytes) -> tuple[str, bytes]:
    """Classify one SSE event: ("data", payload), ("error", payload), ("comment", b"")..."""
    if event.startswith(b"data:"):
        if b"\n" not in event:
            return "data", event[5:].strip()
        # Several data lines make one payload, joined by newlines (the SSE rules).
        lines = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
        return "data", b"\n".join(lines)
    if event.startswith(b"error:"):
        # Older llama-server versions send errors as their own event field.
        return "error", event[6:].strip()
    if event.startswith(b":"):
        return "comment", b""
    if event.strip() == b"":
        return "empty", b""
    return "other", event


class SseReader:
    """Split an upstream SSE body into whole events, as many as each read brings."""

    def __init__(self, resp: Response) -> None:
        self.resp = resp
        self.buf = b""

    async def batch(self, deadline: float) -> bytes | None:
        """The next whole events as the bytes that came, each ending in a blank line.

        None at the end of the body (a partial last event is dropped, as SSE says);
        TimeoutError when nothing came by ``deadline`` (loop time).
        """
        while True:
            data = await self.resp.read_some(deadline)
            if not data:
                return None
            buf = self.buf + data
            if b"\r" in buf:
                buf = buf.replace(b"\r\n", b"\n")
            end = buf.rfind(b"\n\n")
            if end < 0:
                self.buf = buf
                continue
            self.buf = buf[end + 2:]
            return buf[:end + 2]


class PassThrough(Exception):
    """The upstream answered a client error before streaming; give it to the client as is."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
