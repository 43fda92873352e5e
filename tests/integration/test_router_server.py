"""The router's own HTTP/1.1 server (what `hlctl router serve` runs), on real sockets.

The router sits in front of the stub upstream (tests/fixtures/router_stub.py, a wire-level
simulator); the HTTP edge cases are sent as raw bytes, so what the server does with
pipelining, ``Expect: 100-continue``, chunked bodies and oversized heads is seen on the
wire. ``running_router`` is also what test_router_stub.py runs its cases through.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.router_env import USER_KEY, RunningRouter, router_settings, running_router
from tests.fixtures.router_stub import ServerThread, StubBehavior, StubUpstream


@pytest.fixture
def local() -> Iterator[tuple[StubUpstream, ServerThread]]:
    stub = StubUpstream(StubBehavior(chunks=5))
    server = ServerThread(stub.app).start()
    yield stub, server
    server.stop()


@pytest.fixture
def hl(local: tuple[StubUpstream, ServerThread], tmp_path: Path) -> Iterator[RunningRouter]:
    with running_router(router_settings([local[1].url], None, max_body_bytes=4096),
                        tmp_path) as running:
        yield running


def raw_exchange(hl: RunningRouter, data: bytes, *, answers: int = 1,
                 timeout: float = 5) -> bytes:
    """Send bytes on one socket; read until ``answers`` answers (or the close) came."""
    port = int(hl.server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        got = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            got += chunk
            if got.count(b"HTTP/1.1 ") - got.count(b"HTTP/1.1 100") >= answers and (
                    got.endswith(b"}") or got.endswith(b"0\r\n\r\n")):
                break
        return got


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {USER_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            ).encode() + body


BODY = json.dumps({"model": "local", "messages": [{"role": "user", "content": "hi"}]}).encode()


def test_pipelined_requests_are_answered_in_order(hl: RunningRouter) -> None:
    got = raw_exchange(hl, post("/v1/chat/completions", BODY) + b"GET /health HTTP/1.1\r\n"
                       b"Host: x\r\n\r\n" + post("/v1/nope", b"{}"), answers=3)
    answers = got.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"200", b"404"]
    assert b"stub answer" in answers[0] and b'"status": "ok"' in answers[1]
    assert b"X-HL-Routed-To: local" in answers[0] and b"X-HL-Overhead-Ms: " in answers[0]


def test_expect_continue_and_a_chunked_request_body(hl: RunningRouter) -> None:
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (BODY[:10], BODY[10:])) + b"0\r\n\r\n"
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {USER_KEY}"
            "\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n").encode()
    got = raw_exchange(hl, head + chunked)
    assert got.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert b"stub answer" in got


@pytest.mark.parametrize(("data", "status"), [
    (post("/v1/chat/completions", b"x" * 5000), b"413"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", b"431"),
    (b"NONSENSE\r\n\r\n", b"400"),
    (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked"
     b"\r\n\r\n{}", b"400"),
    ("POST /v1/chat/completions HTTP/1.1\r\nContent-Length: \u00b2\r\n\r\n{}".encode("latin-1"),
     b"400"),
    (b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"+2\r\n{}\r\n0\r\n\r\n", b"400"),
    (b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0_2\r\n{}\r\n0\r\n\r\n", b"400"),
])
def test_bad_requests_get_an_error_and_the_connection_closes(hl: RunningRouter, data: bytes,
                                                             status: bytes) -> None:
    got = raw_exchange(hl, data)
    assert got.startswith(b"HTTP/1.1 " + status)
    assert b"Connection: close" in got
    assert json.loads(got.split(b"\r\n\r\n", 1)[1])["error"]["message"]


def test_stream_and_keep_alive_with_httpx(hl: RunningRouter,
                                          local: tuple[StubUpstream, ServerThread]) -> None:
    headers = {"Authorization": f"Bearer {USER_KEY}"}
    with httpx.Client(base_url=hl.server.url, headers=headers, timeout=10) as http:
        for _ in range(3):  # one connection, answers of both framings in turn
            with http.stream("POST", "/v1/chat/completions",
                             json={"model": "local", "stream": True,
                                   "messages": [{"role": "user", "content": "hi"}]}) as resp:
                assert resp.headers["content-type"] == "text/event-stream"
                assert resp.headers["x-hl-routed-to"] == "local"
                events = [e for e in resp.read().split(b"\n\n") if e]
            assert events[-1] == b"data: [DONE]" and len(events) == 5 + 3
            assert not any(b'"usage"' in e for e in events)
            assert http.get("/v1/models").json()["data"]
            assert http.head("/health").status_code == 200
    assert len(hl.ledger_rows(wait_for=3)) == 3


def test_http10_stream_ends_with_the_connection(hl: RunningRouter) -> None:
    body = json.dumps({"model": "local", "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    got = raw_exchange(hl, post("/v1/chat/completions", body).replace(b"HTTP/1.1", b"HTTP/1.0",
                                                                      1), answers=99)
    head, _, rest = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in head
    assert b"Transfer-Encoding" not in head
    assert rest.startswith(b"data: {") and rest.endswith(b"data: [DONE]\n\n")
