"""The stack's Docker edges and `up` as a whole, without a Docker engine.

The compose CLI is tests/fixtures/compose_cli.py's recording stand-in (argv in, canned log
out); image inspect goes through the real docker SDK to tests/fixtures/compose_engine.py, the
engine simulator on a unix socket. So this proves the argv and the order of steps (the CUDA
check refuses before any compose call), not what compose itself does.
"""

from __future__ import annotations

import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from hlctl.errors import HlctlError
from hlctl.gpu.snapshot import GpuSnapshot, HostSnapshot
from hlctl.stack import runner
from hlctl.stack.service import StackEdges, StackError, down_local, logs_local, up_local
from tests.fixtures.compose_cli import FakeDocker, write_fake_docker
from tests.fixtures.compose_engine import CUDA_121_ENV, CUDA_128_ENV, engine_with_images
from tests.fixtures.compose_env import gemma_lock, settings
from tests.fixtures.compose_logs import CPU_BUILD_NGL_99, CUDA_FULL

REPO = Path(__file__).resolve().parents[2]
IMAGE = "hlctl/llama-server-cuda:b11434-cuda12.1.1-sm86"
SNAPSHOT = HostSnapshot(host="gpu01", taken_at="2026-11-29T06:00:00+00:00",
                        driver_version="530.30.02", cuda_driver_version=12010,
                        gpus=[GpuSnapshot(index=0, uuid=None, name="NVIDIA GeForce RTX 3090",
                                          pci_bus_id=None, memory_total_bytes=24 << 30)])


def test_compose_argv_pins_project_env_and_file() -> None:
    project = runner.ComposeProject(Path("/opt/hlctl/compose"),
                                    Path("/opt/hlctl/compose/.env"), "hlctl")
    base = ["docker", "compose", "--project-directory", "/opt/hlctl/compose",
            "--project-name", "hlctl", "--env-file", "/opt/hlctl/compose/.env",
            "--file", "/opt/hlctl/compose/compose.yaml"]
    assert runner.compose_argv(project, *runner.up_args(900)) == [
        *base, "up", "--detach", "--wait", "--wait-timeout", "900", "--no-build"]
    assert runner.up_args(60, recreate=True)[-1] == "--force-recreate"
    assert runner.compose_argv(project, *runner.down_args()) == [*base, "down", "--timeout",
                                                                 "30"]
    assert runner.logs_args("router", follow=True, tail=50) == [
        "logs", "--no-color", "--tail", "50", "--follow", "router"]
    assert runner.logs_args("llama-server", prefix=False) == [
        "logs", "--no-color", "--no-log-prefix", "llama-server"]


@pytest.fixture
def docker(tmp_path: Path) -> FakeDocker:
    return write_fake_docker(tmp_path / "bin")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[str]:
    sock = tmp_path / "docker.sock"
    with engine_with_images(sock, {IMAGE: CUDA_121_ENV,
                                   "ghcr.io/ggml-org/llama.cpp:server-cuda": CUDA_128_ENV}):
        yield f"unix://{sock}"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "compose"
    shutil.copytree(REPO / "compose", folder)
    return folder


def edges(docker: FakeDocker, engine: str) -> StackEdges:
    return StackEdges(docker=docker.path, docker_url=engine, snapshot=lambda: SNAPSHOT)


def test_run_compose_reports_compose_failures(docker: FakeDocker) -> None:
    docker.fail(1, "service \"llama-server\" didn't complete successfully: exit 1\n")
    with pytest.raises(runner.DockerError, match=r"exit 1.*didn't complete"):
        runner.run_compose([docker.path, "compose", "up"], timeout_s=10)
    docker.fail(1, "docker: unknown command: docker compose\n")
    with pytest.raises(runner.DockerError, match="compose plugin is not installed"):
        runner.run_compose([docker.path, "compose", "up"], timeout_s=10)
    with pytest.raises(runner.DockerError, match="is not installed"):
        runner.run_compose(["/nonexistent/docker", "compose"], timeout_s=10)


def test_image_inspect_through_the_sdk(engine: str) -> None:
    env = runner.image_env(runner.inspect_image(IMAGE, base_url=engine))
    assert any(e.startswith("NVIDIA_REQUIRE_CUDA=cuda>=12.1") for e in env)
    with pytest.raises(runner.DockerError, match="is not on this host"):
        runner.inspect_image("hlctl/llama-server-cuda:missing", base_url=engine)


def test_up_renders_checks_starts_and_verifies(project: Path, docker: FakeDocker,
                                               engine: str, tmp_path: Path) -> None:
    docker.set_logs(CUDA_FULL)
    result = up_local(settings(project, n_gpu_layers=33), models_dir=tmp_path / "models",
                      lock=gemma_lock(), host="gpu01", edges=edges(docker, engine))
    assert result.ok and result.image == IMAGE
    assert result.cuda is not None and "supports CUDA 12.1" in result.cuda
    assert result.offload == "offloaded 33/33 layers (CUDA0 4095 MiB)"
    env_file = project / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert "LLAMA_N_GPU_LAYERS=33" in env_file.read_text()
    calls = docker.calls()
    assert [c[9] for c in calls] == ["up", "logs"]  # the subcommand after --file FILE
    assert calls[0][:9] == ["compose", "--project-directory", str(project), "--project-name",
                            "hlctl", "--env-file", str(env_file), "--file",
                            str(project / "compose.yaml")]
    assert result.llama_command[result.llama_command.index("--n-gpu-layers") + 1] == "33"


def test_cuda_mismatch_refuses_before_compose_runs(project: Path, docker: FakeDocker,
                                                   engine: str, tmp_path: Path) -> None:
    s = settings(project, n_gpu_layers=33, image_repo="ghcr.io/ggml-org/llama.cpp",
                 image_tag="server-cuda")
    with pytest.raises(StackError, match=re.escape(
            "needs CUDA 12.8 but the host's driver 530.30.02 supports CUDA 12.1")):
        up_local(s, models_dir=tmp_path, lock=gemma_lock(), host="gpu01",
                 edges=edges(docker, engine))
    assert docker.calls() == []
    assert not (project / ".env").exists()


def test_cpu_fallback_after_start_is_a_failure(project: Path, docker: FakeDocker,
                                               engine: str, tmp_path: Path) -> None:
    docker.set_logs(CPU_BUILD_NGL_99)
    with pytest.raises(StackError, match="fell back to the CPU"):
        up_local(settings(project, n_gpu_layers=99), models_dir=tmp_path, lock=gemma_lock(),
                 host="gpu01", edges=edges(docker, engine))


def test_dry_run_touches_nothing(project: Path, docker: FakeDocker, tmp_path: Path) -> None:
    result = up_local(settings(project, n_gpu_layers=5), models_dir=tmp_path,
                      lock=gemma_lock(), host="gpu01",
                      edges=StackEdges(docker=docker.path, docker_url="unix:///nonexistent"),
                      dry_run=True, image_tag="b11400-cuda12.1.1-sm86")
    assert result.image == "hlctl/llama-server-cuda:b11400-cuda12.1.1-sm86"
    assert docker.calls() == [] and not (project / ".env").exists()


def test_down_and_logs(project: Path, docker: FakeDocker, tmp_path: Path) -> None:
    s = settings(project)
    with pytest.raises(HlctlError, match="never brought up"):
        down_local(s, host="gpu01", edges=StackEdges(docker=docker.path))
    (project / ".env").write_text("A=1\n")
    down_local(s, host="gpu01", edges=StackEdges(docker=docker.path))
    docker.set_logs("line one\nline two\n")
    lines: list[str] = []
    logs_local(s, "router", follow=False, tail=10, on_line=lines.append,
               edges=StackEdges(docker=docker.path))
    assert lines == ["line one", "line two"]
    assert [c[9:] for c in docker.calls()] == [["down", "--timeout", "30"],
                                               ["logs", "--no-color", "--tail", "10", "router"]]


def test_no_compose_file_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(HlctlError, match="not installed on this host"):
        up_local(settings(tmp_path / "nowhere", n_gpu_layers=1), models_dir=tmp_path,
                 lock=gemma_lock(), host="gpu01", dry_run=True)


def test_check_only_checks_cuda_and_starts_nothing(project: Path, docker: FakeDocker,
                                                   engine: str, tmp_path: Path) -> None:
    result = up_local(settings(project, n_gpu_layers=33), models_dir=tmp_path,
                      lock=gemma_lock(), host="gpu01", edges=edges(docker, engine),
                      check_only=True)
    assert result.cuda is not None and "supports CUDA 12.1" in result.cuda
    assert result.env["LLAMA_IMAGE"] == IMAGE and result.offload is None
    assert docker.calls() == [] and not (project / ".env").exists()
