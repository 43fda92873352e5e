"""The router end to end with the official openai client, in front of stub upstreams.

The upstreams here are tests/fixtures/router_stub.py, a simulator at the wire boundary in
llama-server's shape: it makes the failures that a real server cannot be made to produce on
demand (in-band errors, cut streams, slow first chunks, 5xx). The same behaviour against the
real llama-server is in test_router_llama.py. Every case runs on both front ends: the
router's own HTTP server (what `router serve` runs) and aiohttp.web (``Router.web_app``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import openai
import pytest

from tests.fixtures.router_env import (
    CLOUD_KEY,
    KIDS_KEY,
    USER_KEY,
    RunningRouter,
    router_settings,
    running_aiohttp_router,
    running_router,
)
from tests.fixtures.router_stub import ServerThread, StubBehavior, StubUpstream

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
def local() -> Iterator[tuple[StubUpstream, ServerThread]]:
    stub = StubUpstream(StubBehavior(chunks=20, model="gemma-stub"))
    server = ServerThread(stub.app).start()
    yield stub, server
    server.stop()


@pytest.fixture
def cloud() -> Iterator[tuple[StubUpstream, ServerThread]]:
    stub = StubUpstream(StubBehavior(chunks=5, api_key=CLOUD_KEY, model="cloud-model"))
    server = ServerThread(stub.app).start()
    yield stub, server
    server.stop()


Runner = Callable[..., AbstractContextManager[RunningRouter]]


@pytest.fixture(params=["own-server", "aiohttp"])
def serve(request: pytest.FixtureRequest) -> Runner:
    return running_router if request.param == "own-server" else running_aiohttp_router


@pytest.fixture
def hl(local: tuple[StubUpstream, ServerThread], cloud: tuple[StubUpstream, ServerThread],
       tmp_path: Path, serve: Runner) -> Iterator[RunningRouter]:
    settings = router_settings([local[1].url], cloud[1].url)
    with serve(settings, tmp_path) as running:
        yield running


def client(hl: RunningRouter, key: str = USER_KEY, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=hl.url, api_key=key, max_retries=0, timeout=20,
                         **kwargs)  # type: ignore[arg-type]


def test_non_streaming_goes_local_with_headers(hl: RunningRouter, local, cloud) -> None:
    raw = client(hl).chat.completions.with_raw_response.create(model="auto",
                                                                messages=MESSAGES)
    answer = raw.parse()
    assert answer.choices[0].message.content == "stub answer"
    assert raw.headers["x-hl-routed-to"] == "local"
    assert raw.headers["x-hl-route-reason"] == "default-local"
    assert float(raw.headers["x-hl-overhead-ms"]) < 50
    assert len(local[0].state.requests) == 1 and not cloud[0].state.requests
    rows = hl.ledger_rows(wait_for=1)
    assert rows[0]["route"] == "local" and rows[0]["key_name"] == "user"
    assert rows[0]["prompt_tokens"] == 5 and rows[0]["completion_tokens"] == 2
    assert rows[0]["prompt_ms"] == 2.0 and rows[0]["predicted_ms"] == 20.0
    assert rows[0]["cost_usd"] == pytest.approx(350 * 22 / 3.6e9 * 0.12)


def test_streaming_passes_every_chunk_and_hides_usage(hl: RunningRouter, local) -> None:
    chunks = list(client(hl).chat.completions.create(model="auto", messages=MESSAGES,
                                                     stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(f"tok{i} " for i in range(20))
    assert all(c.usage is None for c in chunks), "the client did not ask for usage"
    assert local[0].state.requests[0]["stream_options"] == {"include_usage": True}
    row = hl.ledger_rows(wait_for=1)[0]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (5, 20)
    assert row["ttft_ms"] is not None and row["stream"] == 1 and row["status"] == 200


def test_streaming_usage_kept_when_asked(hl: RunningRouter) -> None:
    chunks = list(client(hl).chat.completions.create(
        model="auto", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20


def test_auth_is_required(hl: RunningRouter) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        client(hl, key="wrong").chat.completions.create(model="auto", messages=MESSAGES)
    assert info.value.code == "invalid_api_key"
    response = httpx.get(hl.url + "/models")
    assert response.status_code == 401 and response.json()["error"]["code"] == "missing_api_key"


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{not json", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_json"),
    (json.dumps({"model": "gpt-17", "messages": MESSAGES}).encode(), 404, "model_not_found"),
    (b"{" + b" " * (5 * 1024 * 1024) + b"}", 413, "request_too_large"),
])
def test_bad_requests_get_openai_errors(hl: RunningRouter, body: bytes, status: int,
                                        code: str) -> None:
    response = httpx.post(hl.url + "/chat/completions", content=body,
                          headers={"Authorization": f"Bearer {USER_KEY}",
                                   "Content-Type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


def test_local_5xx_falls_back_to_cloud_with_its_key(hl: RunningRouter, local, cloud) -> None:
    local[0].behavior.status = 503
    raw = client(hl).chat.completions.with_raw_response.create(model="auto",
                                                                messages=MESSAGES)
    assert raw.headers["x-hl-routed-to"] == "cloud"
    assert raw.headers["x-hl-route-reason"] == "fallback:status-503"
    assert cloud[0].state.requests[0]["model"] == "cloud-model"
    assert cloud[0].state.headers[0]["Authorization"] == f"Bearer {CLOUD_KEY}"
    row = hl.ledger_rows(wait_for=1)[0]
    assert row["route"] == "cloud"
    assert row["cost_usd"] == pytest.approx((5 * 3.0 + 2 * 15.0) / 1e6)
    assert CLOUD_KEY not in json.dumps(hl.ledger_rows())
    metrics = httpx.get(hl.server.url + "/metrics",
                        headers={"Authorization": f"Bearer {USER_KEY}"}).text
    assert 'hlctl_router_fallbacks_total{failure="status-503"} 1.0' in metrics
    assert CLOUD_KEY not in metrics


def test_private_never_goes_to_cloud(hl: RunningRouter, local, cloud) -> None:
    local[0].behavior.status = 500
    for kwargs in ({"key": KIDS_KEY}, {"default_headers": {"X-HL-Private": "1"}}):
        with pytest.raises(openai.APIStatusError) as info:
            client(hl, **kwargs).chat.completions.create(model="auto", messages=MESSAGES)
        assert info.value.status_code == 503
        assert info.value.body["code"] == "local_unavailable"  # type: ignore[index]
    assert cloud[0].state.requests == []


def test_streaming_fallback_before_first_chunk(hl: RunningRouter, local, cloud) -> None:
    local[0].behavior.transcript = "error_first.sse"
    chunks = list(client(hl).chat.completions.create(model="auto", messages=MESSAGES,
                                                     stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3 tok4 "  # only the cloud's answer
    assert len(cloud[0].state.requests) == 1


def test_first_chunk_timeout_falls_back(local, cloud, tmp_path: Path, serve: Runner) -> None:
    local[0].behavior.first_chunk_delay_s = 5
    local[0].behavior.pings_first = 2  # pings do not count as a first chunk
    settings = router_settings([local[1].url], cloud[1].url,
                               timeouts={"first_chunk_s": 0.5, "connect_s": 1})
    with serve(settings, tmp_path) as hl:
        started = time.monotonic()
        raw = client(hl).chat.completions.with_raw_response.create(
            model="auto", messages=MESSAGES, stream=True)
        list(raw.parse())
        assert time.monotonic() - started < 3
        assert raw.headers["x-hl-route-reason"] == "fallback:first-chunk-timeout"


@pytest.mark.parametrize("transcript", ["inband_error.sse", "cut.sse"])
def test_failure_after_first_chunk_is_an_inband_error(hl: RunningRouter, local,
                                                      transcript: str) -> None:
    local[0].behavior.transcript = transcript
    received = []
    started = time.monotonic()
    with pytest.raises(openai.APIError):
        for chunk in client(hl).chat.completions.create(model="auto", messages=MESSAGES,
                                                        stream=True):
            received.append(chunk)
    assert time.monotonic() - started < 5, "a cut stream must not hang"
    assert len(received) >= 3  # what came before the failure was passed through
    row = hl.ledger_rows(wait_for=1)[0]
    assert row["status"] == 502 and row["tokens_estimated"] == 1
    assert row["completion_tokens"] >= 3


def test_client_disconnect_closes_the_upstream(hl: RunningRouter, local) -> None:
    local[0].behavior.chunk_delay_s = 0.05
    stream = client(hl).chat.completions.create(model="auto", messages=MESSAGES, stream=True)
    next(iter(stream))
    stream.close()
    deadline = time.monotonic() + 5
    while local[0].state.disconnects == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert local[0].state.disconnects == 1
    assert local[0].state.completed_streams == 0
    assert hl.ledger_rows(wait_for=1)[0]["status"] == 499


def test_budget_spent_gives_429_for_cloud(local, cloud, tmp_path: Path, serve: Runner) -> None:
    settings = router_settings([local[1].url], cloud[1].url,
                               monthly_cloud_budget_usd=0.00001)
    with serve(settings, tmp_path) as hl:
        first = client(hl).chat.completions.create(model="cloud", messages=MESSAGES)
        assert first.model == "cloud-model"
        with pytest.raises(openai.RateLimitError) as info:
            client(hl).chat.completions.create(model="cloud", messages=MESSAGES)
        assert info.value.code == "budget_exceeded"
        raw = client(hl).chat.completions.with_raw_response.create(
            model="auto", messages=MESSAGES, reasoning_effort="high")
        assert raw.headers["x-hl-route-reason"] == "budget-spent"


def test_models_health_embeddings(hl: RunningRouter, local) -> None:
    names = {m.id for m in client(hl).models.list()}
    assert {"auto", "local", "cloud"} <= names
    health = httpx.get(hl.server.url + "/health").json()
    assert health["status"] == "ok"
    assert {u["name"]: u["state"] for u in health["upstreams"]} == {"local0": "up",
                                                                  "cloud": "configured"}
    vector = client(hl).embeddings.create(model="auto", input="hi")
    assert vector.data[0].embedding == [0.1, 0.2, 0.3]


def test_down_backend_is_probed_back(hl: RunningRouter, local) -> None:
    local[0].behavior.status = 500
    local[0].behavior.health_status = 503  # llama-server loading: starting, not routable
    for _ in range(2):
        client(hl).chat.completions.create(model="auto", messages=MESSAGES)
    time.sleep(0.8)
    backend = hl.router.pool.local[0]
    assert backend.state == "starting"
    local[0].behavior.status = 200
    local[0].behavior.health_status = 200
    time.sleep(1.0)
    raw = client(hl).chat.completions.with_raw_response.create(model="auto",
                                                                messages=MESSAGES)
    assert raw.headers["x-hl-routed-to"] == "local"


def test_metrics_by_route(hl: RunningRouter) -> None:
    client(hl).chat.completions.create(model="auto", messages=MESSAGES)
    list(client(hl).chat.completions.create(model="auto", messages=MESSAGES, stream=True))
    client(hl).chat.completions.create(model="cloud", messages=MESSAGES)
    assert httpx.get(hl.server.url + "/metrics").status_code == 401
    text = httpx.get(hl.server.url + "/metrics",
                     headers={"Authorization": f"Bearer {USER_KEY}"}).text
    for line in ('hlctl_router_requests_total{route="local",status="200"} 2.0',
                 'hlctl_router_requests_total{route="cloud",status="200"} 1.0',
                 'hlctl_router_tokens_total{kind="completion",route="local"} 22.0',
                 'hlctl_router_time_to_first_token_seconds_count{route="local"} 1.0',
                 'hlctl_router_upstream_up{kind="local",upstream="local0"} 1.0',
                 'hlctl_router_upstream_up{kind="cloud",upstream="cloud"} 1.0'):
        assert line in text, line
    assert 'hlctl_router_cost_usd_total{route="cloud"}' in text
    assert "hlctl_router_overhead_seconds_count 3.0" in text


@pytest.mark.parametrize(("transcript", "usage_in_ledger"), [
    ("llama_normal.sse", False), ("llama_usage_chunk.sse", True),
    ("normal.sse", False), ("usage_chunk.sse", True)])
def test_recorded_llama_transcripts_replay(hl: RunningRouter, local, transcript: str,
                                          usage_in_ledger: bool) -> None:
    local[0].behavior.transcript = transcript
    chunks = list(client(hl).chat.completions.create(model="auto", messages=MESSAGES,
                                                     stream=True))
    assert all(c.choices for c in chunks), "the usage-only chunk reached the client"
    assert "".join(c.choices[0].delta.content or "" for c in chunks)
    row = hl.ledger_rows(wait_for=1)[0]
    assert row["status"] == 200 and row["predicted_ms"] > 0
    assert row["tokens_estimated"] == (0 if usage_in_ledger else 1)


def test_silence_after_first_chunk_ends_with_inband_error(local, tmp_path: Path,
                                                         serve: Runner) -> None:
    """stream_idle_s bounds each wait after the first chunk (the router's own timer)."""
    local[0].behavior.chunk_delay_s = 2
    settings = router_settings([local[1].url], None,
                               timeouts={"first_chunk_s": 5, "stream_idle_s": 0.3})
    with serve(settings, tmp_path) as hl:
        received = []
        started = time.monotonic()
        with pytest.raises(openai.APIError) as info:
            for chunk in client(hl).chat.completions.create(model="auto", messages=MESSAGES,
                                                            stream=True):
                received.append(chunk)
        assert time.monotonic() - started < 1.5
        assert "idle-timeout" in str(info.value)
        assert len(received) == 1
        row = hl.ledger_rows(wait_for=1)[0]
        assert row["status"] == 502 and row["reason"].endswith(";idle-timeout")
