"""The stack's command lines for real: llama-server exactly as compose.yaml starts it, the router
as compose.yaml starts it, and a chat completion through both with the official openai client.

No Docker engine runs here, so the containers' processes run on this machine: llama-server is
the real binary (CPU build, tests/fixtures/llama_build.py) on the real Gemma 3 270M model, and
the router is `hlctl router serve`. Their argv and environment come from compose/compose.yaml
resolved against a .env written by hlctl's own renderer (plus the test's LLAMA_PORT and
LLAMA_THREADS, which are .env variables too). What differs from a container is substituted and
nothing else: the image's /app/llama-server -> the built binary, /models -> the models dir,
/run/secrets and /etc/hlctl and /var/lib/hlctl -> temp paths, the service name llama-server ->
127.0.0.1, and the router's container port 8088 -> a free port (no network namespace here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import openai
import pytest

from hlctl.errors import ConfigError
from hlctl.stack.envfile import choose_model, launch_plan, render_env, write_env
from hlctl.stack.interpolate import llama_command, load_compose, parse_env_text, resolve_service
from hlctl.stack.offload import check_offload, parse_offload
from hlctl.stack.service import StackEdges, plan
from tests.fixtures.compose_env import GEMMA_FILE, GEMMA_REPO, gemma_lock, settings
from tests.fixtures.llama_build import (
    LlamaServer,
    free_port,
    start_llama_server,
    start_rpc_server,
)
from tests.fixtures.router_llama import require_llama

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ROUTER_KEY = "hl-stack-test-key-31337"
MESSAGES = [{"role": "user", "content": "Name three colours."}]


@dataclass
class Stack:
    llama: LlamaServer
    router_url: str
    argv: list[str]
    compose_argv: list[str]
    env: dict[str, str]


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n"
                               f"{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not healthy within {timeout:.0f}s")


def _substitute(argv: tuple[str, ...], binary: Path, models_dir: Path) -> list[str]:
    out = [str(binary) if arg == "/app/llama-server" else arg for arg in argv]
    return [str(models_dir) + arg[len("/models"):] if arg.startswith("/models/") else arg
            for arg in out]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary, model = require_llama()
    tmp = tmp_path_factory.mktemp("stack")
    models_dir = tmp / "models"
    (models_dir / GEMMA_REPO).mkdir(parents=True)
    (models_dir / GEMMA_REPO / GEMMA_FILE).symlink_to(model)
    secrets = tmp / "secrets"
    secrets.mkdir()
    (secrets / "router_key").write_text(ROUTER_KEY + "\n")
    (secrets / "router_key").chmod(0o600)

    # The .env as hlctl up renders it (CPU build: -ngl 0), plus two test-only variables.
    s = settings(tmp / "compose", n_gpu_layers=0, ctx=4096, parallel=2)
    chosen = choose_model(s, gemma_lock())
    env = render_env(s, models_dir=models_dir, model=chosen, plan=launch_plan(s, None),
                     hlctl_version="0.1.0")
    env["LLAMA_PORT"] = str(free_port())
    env["LLAMA_THREADS"] = "1"
    write_env(tmp / ".env", env)
    env = parse_env_text((tmp / ".env").read_text())  # read back as compose reads it

    compose = load_compose(REPO / "compose" / "compose.yaml")
    in_container = llama_command(compose, env)
    argv = _substitute(in_container, binary, models_dir)
    llama_log = tmp / "llama.log"
    with open(llama_log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    llama = LlamaServer(process=proc, port=int(env["LLAMA_PORT"]), log_path=llama_log, args=argv)
    router_proc = None
    try:
        _wait_healthy(f"{llama.url}/health", proc, llama_log, 180)

        # The router as compose runs it: its environment and command from compose.yaml.
        router = resolve_service(compose, "router", env)
        # The host's health dir appears inside the router's state dir (a read-only bind
        # mount over the state volume in compose; a symlink here), with a fresh OK result.
        host_health = tmp / "host-health"
        host_health.mkdir()
        (host_health / "last.json").write_text(json.dumps({
            "schema": "hlctl.health/1", "state": "OK", "exit_code": 0, "checks": [],
            "checked_at": datetime.now(UTC).isoformat(timespec="seconds")}))
        mounts = {target: source for source, target, _ in router.mounts}
        assert mounts["/var/lib/hlctl/health"] == env["HLCTL_HEALTH_DIR"]
        (tmp / "state").mkdir()
        (tmp / "state" / "health").symlink_to(host_health)
        config = tmp / "hlctl.yaml"
        config.write_text(
            "router:\n"
            f"  keys: [{{name: user, secret: {{file: {secrets / 'router_key'}}}}}]\n"
            "  timeouts: {first_chunk_s: 60, response_s: 60}\n")
        router_env = dict(router.raw["environment"])
        router_env["HLCTL_ROUTER__LOCAL"] = router_env["HLCTL_ROUTER__LOCAL"].replace(
            "http://llama-server:", "http://127.0.0.1:")
        router_env["HLCTL_CONFIG"] = str(config)
        router_env["HLCTL_STATE_DIR"] = str(tmp / "state")
        port = free_port()
        command = [str(c) for c in router.raw["command"]]
        command[command.index("--port") + 1] = str(port)
        router_log = tmp / "router.log"
        with open(router_log, "wb") as out:
            router_proc = subprocess.Popen(
                [sys.executable, "-m", "hlctl.cli.main", *command],
                env={**os.environ, **router_env}, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        _wait_healthy(f"http://127.0.0.1:{port}/health", router_proc, router_log, 30)
        yield Stack(llama, f"http://127.0.0.1:{port}/v1", argv, list(in_container), env)
    finally:
        if router_proc is not None and router_proc.poll() is None:
            router_proc.terminate()
            router_proc.wait(10)
        llama.stop()


def test_llama_server_runs_exactly_the_compose_command_line(stack: Stack) -> None:
    assert stack.compose_argv[0] == "/app/llama-server"
    changed = [(a, b) for a, b in zip(stack.compose_argv, stack.argv, strict=True) if a != b]
    assert [a for a, _ in changed] == ["/app/llama-server",
                                       f"/models/{GEMMA_REPO}/{GEMMA_FILE}"]
    for flag, value in (("--n-gpu-layers", "0"), ("--ctx-size", "4096"), ("--parallel", "2"),
                        ("--host", "0.0.0.0")):
        assert stack.argv[stack.argv.index(flag) + 1] == value
    assert "--metrics" in stack.argv
    with urllib.request.urlopen(f"{stack.llama.url}/metrics", timeout=5) as response:
        assert b"llamacpp:" in response.read()


def test_chat_completion_through_llama_server_and_the_router(stack: Stack) -> None:
    direct = openai.OpenAI(base_url=f"{stack.llama.url}/v1", api_key="unused", max_retries=0,
                           timeout=60)
    assert direct.chat.completions.create(model="local", messages=MESSAGES,
                                          max_tokens=8).choices[0].message.content
    routed = openai.OpenAI(base_url=stack.router_url, api_key=ROUTER_KEY, max_retries=0,
                           timeout=60)
    raw = routed.chat.completions.with_raw_response.create(model="auto", messages=MESSAGES,
                                                           max_tokens=8)
    assert raw.headers["x-hl-routed-to"] == "local"
    answer = raw.parse()
    assert answer.choices[0].message.content
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    with urllib.request.urlopen(stack.router_url.removesuffix("/v1") + "/health",
                                timeout=5) as response:
        health = json.load(response)
    # The router read the host's health result where compose mounts it.
    assert health["local_gpu_health"]["state"] == "ok"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=stack.router_url, api_key="wrong", max_retries=0).models.list()


def test_offload_check_on_the_real_server_log(stack: Stack) -> None:
    report = parse_offload(stack.llama.log_text())
    assert report.seen, stack.llama.log_text()[-2000:]
    assert report.device_bytes == {}  # the CPU build has no GPU buffer
    assert check_offload(report, 0).ok  # configured 0: the CPU is what was asked for
    verdict = check_offload(report, 19)  # configured >0, nothing on a GPU: the failure line
    assert not verdict.ok
    assert verdict.message.startswith("llama-server fell back to the CPU: offloaded 0/")


def test_offload_check_passes_on_a_real_offload_device(tmp_path: Path) -> None:
    """ggml's rpc-server is a real offload device: llama-server puts the layers' buffers on it
    ("RPC0[127.0.0.1:PORT] model buffer size") as it would on CUDA0."""
    binary, model = require_llama()
    with start_rpc_server(threads=1) as rpc, start_llama_server(
            model, ["--rpc", rpc.endpoint, "-ngl", "99", "-c", "1024", "-np", "1", "-t", "1",
                    "--no-warmup", "--log-verbosity", "4"], binary=binary,
            log_path=tmp_path / "llama.log") as server:
        report = parse_offload(server.log_text())
    assert report.offloaded == report.total == 19
    assert [name.split("[")[0] for name in report.device_bytes] == ["RPC0"]
    verdict = check_offload(report, 99)
    assert verdict.ok and verdict.message.startswith("offloaded 19/19 layers (RPC0[")


def test_auto_layers_come_from_the_fit_of_the_real_model(tmp_path: Path) -> None:
    _, model = require_llama()
    models_dir = tmp_path / "models"
    (models_dir / GEMMA_REPO).mkdir(parents=True)
    (models_dir / GEMMA_REPO / GEMMA_FILE).symlink_to(model)
    s = settings(tmp_path, n_gpu_layers="auto", vram_gib=24, ctx=4096, parallel=2)
    _, launch, env = plan(s, models_dir=models_dir, lock=gemma_lock(), edges=StackEdges(),
                          snapshot=None)
    assert launch.source == "fit" and launch.n_gpu_layers == 19  # 18 blocks + output layer
    assert env["LLAMA_N_GPU_LAYERS"] == "19"
    tight = settings(tmp_path, n_gpu_layers="auto", vram_gib=0.7, ctx=4096, parallel=2)
    _, partial, _ = plan(tight, models_dir=models_dir, lock=gemma_lock(), edges=StackEdges(),
                         snapshot=None)
    assert 0 < partial.n_gpu_layers < 19  # a partial offload: some layers stay in RAM
    tiny = settings(tmp_path, n_gpu_layers="auto", vram_gib=0.25, ctx=4096, parallel=2)
    with pytest.raises(ConfigError, match="does not fit"):
        plan(tiny, models_dir=models_dir, lock=gemma_lock(), edges=StackEdges(), snapshot=None)
