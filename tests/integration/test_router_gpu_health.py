"""Health-aware routing end to end: `hlctl health` records a result, the router acts on it.

The health result is written by the real `hlctl health --from <recorded snapshot>` console
script (what the gpu_healthcheck timer runs, with a recorded snapshot instead of live NVML);
the upstreams are tests/fixtures/router_stub.py (a wire-level simulator of llama-server and
of an OpenAI-compatible cloud, see test_router_stub.py); the client is the openai package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import pytest

from tests.fixtures.router_env import (
    KIDS_KEY,
    USER_KEY,
    RunningRouter,
    router_settings,
    running_router,
)
from tests.fixtures.router_stub import ServerThread, StubBehavior, StubUpstream

SNAPSHOTS = Path(__file__).parents[1] / "fixtures" / "snapshots"
HLCTL = str(Path(sys.executable).with_name("hlctl"))
MESSAGES = [{"role": "user", "content": "hello"}]
RECHECK_S = 0.1


def record_health(tmp: Path, snapshot: str) -> Path:
    """Run `hlctl health --from` as the timer would; return the result file it recorded."""
    env = {**os.environ, "XDG_STATE_HOME": str(tmp / "state"), "HLCTL_CONFIG": "",
           "XDG_CONFIG_HOME": str(tmp)}
    env.pop("HLCTL_DEBUG", None)
    subprocess.run([HLCTL, "health", "--from", str(SNAPSHOTS / f"{snapshot}.json")],
                   capture_output=True, text=True, env=env, cwd=tmp, timeout=60, check=False)
    found = list((tmp / "state").rglob("health/last.json"))
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
def local() -> Iterator[tuple[StubUpstream, ServerThread]]:
    stub = StubUpstream(StubBehavior(chunks=5, model="gemma-stub"))
    server = ServerThread(stub.app).start()
    yield stub, server
    server.stop()


@pytest.fixture
def cloud() -> Iterator[tuple[StubUpstream, ServerThread]]:
    from tests.fixtures.router_env import CLOUD_KEY

    stub = StubUpstream(StubBehavior(chunks=5, api_key=CLOUD_KEY, model="cloud-model"))
    server = ServerThread(stub.app).start()
    yield stub, server
    server.stop()


@pytest.fixture
def health_file(tmp_path: Path) -> Path:
    return tmp_path / "state" / "hlctl" / "health" / "last.json"


@pytest.fixture
def hl(local: tuple[StubUpstream, ServerThread], cloud: tuple[StubUpstream, ServerThread],
       tmp_path: Path) -> Iterator[RunningRouter]:
    # The path is found after the first `hlctl health`; point the router at its directory.
    path = tmp_path / "state"
    settings = router_settings([local[1].url], cloud[1].url, gpu_health={
        "path": str(path / "hlctl" / "health" / "last.json"), "recheck_s": RECHECK_S,
        "stale_after_s": 120})
    (tmp_path / "router").mkdir()
    with running_router(settings, tmp_path / "router") as running:
        yield running


def ask(hl: RunningRouter, key: str = USER_KEY, stream: bool = False,
        **headers: str) -> tuple[str, str]:
    client = openai.OpenAI(base_url=hl.url, api_key=key, max_retries=0, timeout=20,
                           default_headers=headers)
    if stream:
        with client.chat.completions.with_streaming_response.create(
                model="auto", messages=MESSAGES, stream=True) as raw:
            assert any(chunk.choices for chunk in raw.parse())
            return raw.headers["x-hl-routed-to"], raw.headers["x-hl-route-reason"]
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=MESSAGES)
    assert raw.parse().choices[0].message.content
    return raw.headers["x-hl-routed-to"], raw.headers["x-hl-route-reason"]


def metrics(hl: RunningRouter) -> str:
    return httpx.get(hl.server.url + "/metrics",
                     headers={"Authorization": f"Bearer {USER_KEY}"}).text


def settle() -> None:
    time.sleep(RECHECK_S * 3)  # past the router's recheck interval


def test_critical_diverts_auto_to_cloud_private_stays_local(
        hl: RunningRouter, local, cloud, tmp_path: Path) -> None:
    assert ask(hl) == ("local", "default-local")  # no result yet: unknown, no diversion
    assert "hlctl_router_local_gpu_health 3.0" in metrics(hl)

    path = record_health(tmp_path, "thermal_slowdown")
    assert json.loads(path.read_text())["exit_code"] == 2
    settle()
    assert ask(hl) == ("cloud", "local_unhealthy")
    assert ask(hl, stream=True) == ("cloud", "local_unhealthy")
    # Private (header or local-only key) and explicit local stay on the CRITICAL GPU,
    # and are still served there.
    local_before = len(local[0].state.requests)
    assert ask(hl, **{"X-HL-Private": "1"}) == ("local", "private")
    assert ask(hl, key=KIDS_KEY) == ("local", "private")
    assert ask(hl, **{"X-HL-Route": "local"}) == ("local", "override")
    assert len(local[0].state.requests) == local_before + 3
    assert len(cloud[0].state.requests) == 2
    text = metrics(hl)
    assert "hlctl_router_local_gpu_health 2.0" in text
    assert 'hlctl_router_fallbacks_total{failure="local_unhealthy"} 2.0' in text
    rows = hl.ledger_rows(wait_for=5)
    assert [r["reason"] for r in rows if r["route"] == "cloud"] == ["local_unhealthy"] * 2
    health = httpx.get(hl.server.url + "/health").json()
    assert health["local_gpu_health"]["state"] == "critical"

    # The timer's next run finds the GPU healthy: traffic returns home.
    record_health(tmp_path, "healthy_3090")
    settle()
    assert ask(hl) == ("local", "default-local")
    assert "hlctl_router_local_gpu_health 0.0" in metrics(hl)


def test_stale_critical_result_is_ignored(hl: RunningRouter, tmp_path: Path) -> None:
    path = record_health(tmp_path, "xid79")
    result = json.loads(path.read_text())
    assert result["exit_code"] == 2
    result["checked_at"] = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    path.write_text(json.dumps(result))
    settle()
    assert ask(hl) == ("local", "default-local")
    assert "hlctl_router_local_gpu_health 3.0" in metrics(hl)
    assert httpx.get(hl.server.url + "/health").json()["local_gpu_health"]["state"] == "stale"


def test_garbage_result_is_ignored(hl: RunningRouter, health_file: Path) -> None:
    health_file.parent.mkdir(parents=True)
    health_file.write_text('{"exit_code": 2, "checked_at": "yesterday-ish"')
    settle()
    assert ask(hl) == ("local", "default-local")


def test_divert_off_keeps_auto_local(local, cloud, tmp_path: Path) -> None:
    path = record_health(tmp_path, "lost")
    settings = router_settings([local[1].url], cloud[1].url, gpu_health={
        "path": str(path), "divert": False})
    (tmp_path / "router").mkdir()
    with running_router(settings, tmp_path / "router") as running:
        assert ask(running) == ("local", "default-local")
