"""Kill the local llama-server during 200 requests; then the cloud too; then bring local back.

Real parts: two llama-servers (Gemma 3 270M; the "cloud" one checks --api-key), hlctl's
router, the official openai client. Every non-private request must still succeed (through
the cloud), every private one after the kill must get the 503, nothing private may reach the
cloud, and the ledger must hold one row per request.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from tests.fixtures.llama_build import LlamaServer, start_llama_server
from tests.fixtures.router_env import (
    KIDS_KEY,
    USER_KEY,
    RunningRouter,
    router_settings,
    running_router,
)
from tests.fixtures.router_llama import CLOUD_ARGS, LOCAL_ARGS, require_llama

pytestmark = pytest.mark.slow
TOTAL = 200
KILL_AT = 60
PROBE_S = 0.5


@dataclass
class Outcome:
    index: int
    private: bool
    stream: bool
    ok: bool
    routed_to: str | None
    status: int | None
    seconds: float


def one(hl: RunningRouter, index: int, max_tokens: int = 4) -> Outcome:
    private = index % 4 == 0  # every 4th request comes from the local-only key
    stream = index % 3 == 0
    api = openai.OpenAI(base_url=hl.url, api_key=KIDS_KEY if private else USER_KEY,
                        max_retries=0, timeout=60)
    started = time.monotonic()
    messages = [{"role": "user", "content": f"Say the number {index}."}]
    try:
        if stream:
            raw = api.chat.completions.with_raw_response.create(
                model="auto", messages=messages, max_tokens=4, stream=True)
            chunks = list(raw.parse())
            assert any(c.choices for c in chunks)
        else:
            # ignore_eos (llama-server) keeps a long request long, whatever the model says.
            raw = api.chat.completions.with_raw_response.create(
                model="auto", messages=messages, max_tokens=max_tokens,
                extra_body={"ignore_eos": True} if max_tokens > 4 else None)
            assert raw.parse().choices
        return Outcome(index, private, stream, True, raw.headers["x-hl-routed-to"], 200,
                       time.monotonic() - started)
    except openai.APIStatusError as exc:
        return Outcome(index, private, stream, False,
                       exc.response.headers.get("x-hl-routed-to"), exc.status_code,
                       time.monotonic() - started)


def run_batch(hl: RunningRouter, indices: range) -> list[Outcome]:
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda i: one(hl, i), indices))


def test_kill_local_then_cloud_then_bring_local_back(tmp_path: Path) -> None:
    binary, model = require_llama()
    local = start_llama_server(model, LOCAL_ARGS, binary=binary)
    cloud = start_llama_server(model, CLOUD_ARGS, binary=binary)
    revived: LlamaServer | None = None
    try:
        settings = router_settings(
            [local.url], cloud.url, probe_interval_s=PROBE_S,
            timeouts={"connect_s": 1, "first_chunk_s": 30, "response_s": 30})
        with running_router(settings, tmp_path) as hl:
            before = run_batch(hl, range(KILL_AT))
            assert all(o.ok and o.routed_to == "local" for o in before), before

            # A non-streaming request in flight when local dies falls back: nothing had
            # reached the client yet.
            inflight: list[Outcome] = []
            # 1001 is public and non-streaming; 512 tokens keep it busy well past the kill.
            thread = threading.Thread(
                target=lambda: inflight.append(one(hl, 1001, max_tokens=512)))
            thread.start()
            time.sleep(0.3)
            os.kill(local.process.pid, signal.SIGKILL)
            local.process.wait()
            thread.join(60)
            assert inflight and inflight[0].ok and inflight[0].routed_to == "cloud"

            after = run_batch(hl, range(KILL_AT, TOTAL - 1))
            public = [o for o in after if not o.private]
            private = [o for o in after if o.private]
            assert public and all(o.ok and o.routed_to == "cloud" for o in public), public
            assert private and all(o.status == 503 and o.routed_to == "none"
                                   for o in private), private

            rows = hl.ledger_rows(wait_for=TOTAL)
            assert len(rows) == TOTAL
            assert not [r for r in rows if r["private"] and r["route"] == "cloud"]

            # Cloud down too: clean errors, well within the connect timeout, no hang.
            cloud.stop()
            down = run_batch(hl, range(2000, 2008))
            assert all(not o.ok and o.status in (502, 503) and o.seconds < 5 for o in down)

            # Local back on the same port: traffic returns within the probe interval.
            revived = start_llama_server(model, LOCAL_ARGS, port=local.port, binary=binary)
            healthy_at = time.monotonic()
            while True:
                back = one(hl, 3000 + 1)
                if back.routed_to == "local":
                    break
                assert time.monotonic() - healthy_at < PROBE_S + 2, "local never came back"
                time.sleep(0.05)
            assert back.ok
    finally:
        for server in (local, cloud, revived):
            if server is not None:
                server.stop()
