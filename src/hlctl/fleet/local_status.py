"""Status of the machine hlctl runs on: GPUs, the Docker engine, the models directory.

Each part is gathered at its own edge and fails on its own: no GPU, no Docker or no config
is a line in the status, never an error of the command.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hlctl.config import HealthThresholds
from hlctl.gpu.health import evaluate_health
from hlctl.gpu.snapshot import HostSnapshot

STATUS_SCHEMA = "hlctl.status/1"


@dataclass(frozen=True)
class GpuLine:
    index: int
    name: str | None
    temperature_c: float | None
    utilization_gpu_pct: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    power_draw_w: float | None
    power_limit_w: float | None
    health: str
    findings: list[str]


@dataclass(frozen=True)
class DockerStatus:
    reachable: bool
    host: str
    version: str | None = None
    containers_running: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class ModelsDirStatus:
    path: str
    exists: bool
    free_bytes: int | None = None
    total_bytes: int | None = None
    gguf_files: int | None = None


@dataclass(frozen=True)
class LocalStatus:
    host: str
    taken_at: str
    config_source: str | None
    config_error: str | None
    driver_version: str | None
    cuda_driver_version: int | None
    gpu_error: str | None
    gpus: list[GpuLine]
    docker: DockerStatus
    models_dir: ModelsDirStatus | None
    last_health: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": STATUS_SCHEMA, **asdict(self)}


def gpu_lines(snapshot: HostSnapshot, thresholds: HealthThresholds) -> list[GpuLine]:
    """One line per GPU with its own health state (worst of its checks)."""
    report = evaluate_health(snapshot, thresholds)
    lines = []
    for gpu in snapshot.gpus:
        own = [c for c in report.findings if c.gpu == gpu.index]
        worst = max((c.state for c in own), key=lambda s: s.severity, default=None)
        lines.append(GpuLine(
            index=gpu.index, name=gpu.name, temperature_c=gpu.temperature_c,
            utilization_gpu_pct=gpu.utilization_gpu_pct,
            memory_used_bytes=gpu.memory_used_bytes, memory_total_bytes=gpu.memory_total_bytes,
            power_draw_w=gpu.power_draw_w, power_limit_w=gpu.power_limit_w,
            health=worst.value if worst else "ok", findings=[c.message for c in own]))
    return lines


def probe_docker(environ: Mapping[str, str], timeout_s: float = 3) -> DockerStatus:
    """Ask the Docker engine through the docker SDK (DOCKER_HOST or the default socket)."""
    host = environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:
        return DockerStatus(reachable=False, host=host, error="the docker SDK is not installed")
    try:
        client = docker.DockerClient(base_url=host, timeout=int(max(1, timeout_s)))
        try:
            client.ping()
            version = client.version().get("Version")
            # The low-level list avoids one inspect call per container.
            running = len(client.api.containers())
        finally:
            client.close()
    except (DockerException, OSError) as exc:
        reason = str(exc).split("(")[0].strip().rstrip(":") or type(exc).__name__
        if "FileNotFoundError" in str(exc) or "No such file" in str(exc):
            reason = "no Docker engine is listening there"
        return DockerStatus(reachable=False, host=host, error=reason)
    return DockerStatus(reachable=True, host=host, version=version, containers_running=running)


def models_dir_status(path: Path) -> ModelsDirStatus:
    if not path.is_dir():
        return ModelsDirStatus(path=str(path), exists=False)
    usage = shutil.disk_usage(path)
    count = sum(1 for _ in path.rglob("*.gguf"))
    return ModelsDirStatus(path=str(path), exists=True, free_bytes=usage.free,
                           total_bytes=usage.total, gguf_files=count)


def gather_local_status(*, host: str, taken_at: str, snapshot: HostSnapshot,
                        thresholds: HealthThresholds, config_source: str | None,
                        config_error: str | None, models_dir: Path | None,
                        docker_probe: Callable[[], DockerStatus],
                        last_health: dict[str, Any] | None) -> LocalStatus:
    return LocalStatus(
        host=host, taken_at=taken_at, config_source=config_source, config_error=config_error,
        driver_version=snapshot.driver_version,
        cuda_driver_version=snapshot.cuda_driver_version,
        gpu_error=snapshot.error, gpus=gpu_lines(snapshot, thresholds),
        docker=docker_probe(),
        models_dir=models_dir_status(models_dir) if models_dir is not None else None,
        last_health=last_health)
