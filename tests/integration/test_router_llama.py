"""The router in front of real llama-servers (Gemma 3 270M), driven by the official openai client.

Local: a plain llama-server. Cloud: a second llama-server started with --api-key, so the
router's cloud key is checked by a real server. Builds llama-server on first use (cached).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.fixtures.llama_build import LlamaServer, start_llama_server
from tests.fixtures.router_env import (
    CLOUD_KEY,
    USER_KEY,
    RunningRouter,
    router_settings,
    running_router,
)
from tests.fixtures.router_llama import CLOUD_ARGS, LOCAL_ARGS, require_llama, slots_busy

pytestmark = pytest.mark.slow
MESSAGES = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def llamas() -> Iterator[tuple[LlamaServer, LlamaServer]]:
    binary, model = require_llama()
    local = start_llama_server(model, LOCAL_ARGS, binary=binary)
    try:
        cloud = start_llama_server(model, CLOUD_ARGS, binary=binary)
    except BaseException:
        local.stop()
        raise
    yield local, cloud
    cloud.stop()
    local.stop()


@pytest.fixture
def hl(llamas: tuple[LlamaServer, LlamaServer], tmp_path: Path) -> Iterator[RunningRouter]:
    settings = router_settings([llamas[0].url], llamas[1].url,
                               timeouts={"first_chunk_s": 60, "response_s": 60,
                                         "connect_s": 2})
    with running_router(settings, tmp_path) as running:
        yield running


def client(hl: RunningRouter, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=hl.url, api_key=USER_KEY, max_retries=0, timeout=60,
                         **kwargs)  # type: ignore[arg-type]


def test_non_streaming_local_records_timings(hl: RunningRouter) -> None:
    raw = client(hl).chat.completions.with_raw_response.create(
        model="auto", messages=MESSAGES, max_tokens=12)
    answer = raw.parse()
    assert answer.choices[0].message.content
    assert raw.headers["x-hl-routed-to"] == "local"
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    row = hl.ledger_rows(wait_for=1)[0]
    assert row["prompt_tokens"] == answer.usage.prompt_tokens
    assert row["completion_tokens"] == answer.usage.completion_tokens
    assert row["prompt_ms"] > 0 and row["predicted_ms"] > 0
    assert row["cost_usd"] > 0 and row["tokens_estimated"] == 0


def test_streaming_local_hides_usage_but_ledger_has_it(hl: RunningRouter) -> None:
    chunks = list(client(hl).chat.completions.create(
        model="auto", messages=MESSAGES, max_tokens=12, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert all(c.usage is None for c in chunks)
    row = hl.ledger_rows(wait_for=1)[0]
    assert row["completion_tokens"] > 0 and row["tokens_estimated"] == 0
    assert row["predicted_ms"] > 0 and row["ttft_ms"] > 0


def test_streaming_usage_when_asked(hl: RunningRouter) -> None:
    chunks = list(client(hl).chat.completions.create(
        model="auto", messages=MESSAGES, max_tokens=8, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_cloud_gets_the_key_and_a_real_server_checks_it(hl: RunningRouter) -> None:
    raw = client(hl).chat.completions.with_raw_response.create(
        model="cloud", messages=MESSAGES, max_tokens=8)
    assert raw.headers["x-hl-routed-to"] == "cloud"
    assert raw.parse().choices[0].message.content
    row = hl.ledger_rows(wait_for=1)[0]
    assert row["route"] == "cloud" and row["cost_usd"] > 0


def test_wrong_cloud_key_is_a_clean_502(llamas: tuple[LlamaServer, LlamaServer],
                                       tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("tests.fixtures.router_env", fromlist=["ENVIRON"]).ENVIRON,
                        "HL_CLOUD_KEY", "sk-wrong-key-7777")
    settings = router_settings([llamas[0].url], llamas[1].url)
    with running_router(settings, tmp_path) as hl, pytest.raises(openai.APIStatusError) as info:
        client(hl).chat.completions.create(model="cloud", messages=MESSAGES, max_tokens=4)
    assert info.value.status_code == 502
    assert "sk-wrong-key" not in str(info.value.body) and CLOUD_KEY not in str(info.value.body)


def test_client_disconnect_frees_the_llama_slot(hl: RunningRouter,
                                                llamas: tuple[LlamaServer, LlamaServer]) -> None:
    local = llamas[0]
    stream = client(hl).chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Write a long story."}],
        max_tokens=2000, stream=True)
    chunks = iter(stream)
    for _ in range(3):
        next(chunks)
    assert slots_busy(local.url) == 1
    stream.close()
    deadline = time.monotonic() + 10
    while slots_busy(local.url) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert slots_busy(local.url) == 0, "the slot kept generating for a client that left"
    assert hl.ledger_rows(wait_for=1)[0]["status"] == 499


def test_legacy_completions_local(hl: RunningRouter) -> None:
    raw = client(hl).completions.with_raw_response.create(model="local", prompt="Hello,",
                                                           max_tokens=6)
    assert raw.headers["x-hl-routed-to"] == "local"
    assert raw.parse().choices[0].text
    assert hl.ledger_rows(wait_for=1)[0]["completion_tokens"] > 0


def test_a_prompt_too_long_for_the_local_context_goes_to_the_cloud(
        llamas: tuple[LlamaServer, LlamaServer], tmp_path: Path) -> None:
    """The router's estimate lets the prompt through (the backend claims 8192 tokens), the
    real llama-server counts it and refuses (HTTP 400, exceed_context_size_error): auto
    traffic is answered by the cloud, streaming or not; a private request gets llama-server's
    own 400; the local backend is not marked down for it."""
    binary, model = require_llama()
    small = start_llama_server(model, ("-c", "256", "-np", "1", "-t", "1", "--no-warmup"),
                               binary=binary)
    try:
        settings = router_settings([small.url], llamas[1].url,
                                   timeouts={"first_chunk_s": 60, "response_s": 60,
                                             "connect_s": 2})
        # ~500 tokens: over the small server's 256, within the cloud's 1,024 per slot.
        long_prompt = [{"role": "user", "content": "Name the colours of the sea. " * 60}]
        with running_router(settings, tmp_path) as hl:
            for stream in (False, True):
                raw = client(hl).chat.completions.with_raw_response.create(
                    model="auto", messages=long_prompt, max_tokens=4, stream=stream)
                assert raw.headers["x-hl-routed-to"] == "cloud", raw.headers
                assert raw.headers["x-hl-route-reason"] == "fallback:context-overflow"
                answer = raw.parse()
                if stream:
                    assert "".join(c.choices[0].delta.content or "" for c in answer
                                   if c.choices)
                else:
                    assert answer.choices[0].message.content
            private = client(hl, default_headers={"X-HL-Private": "1"})
            with pytest.raises(openai.BadRequestError) as info:
                private.chat.completions.create(model="auto", messages=long_prompt,
                                                max_tokens=4)
            assert "exceeds the available context size" in str(info.value)
            rows = hl.ledger_rows(wait_for=3)
            assert [r["route"] for r in rows] == ["cloud", "cloud", "local"]
            assert hl.router.pool.pick_local() is not None  # still up
    finally:
        small.stop()
