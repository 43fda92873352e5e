"""Status of the machine hlctl runs on: GPUs, the Docker engine, the models directory.

Each part is gathered at its own edge and fails on its own: no GPU, no Docker or no config
is a line in the status, never an error of the command.

``hlctl status --json`` is also what the controller's ``hlctl status --all`` reads from each
host over SSH, so keys are only ever added (schema hlctl.status/1): ``health`` (the latest
recorded result with its age and a stale flag), ``containers``, ``models`` (against
models.lock, stat only) and ``router`` (today's requests and cost from the ledger).
"""

from __future__ import annotations

import re
import shutil
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hlctl.config import HealthThresholds
from hlctl.gpu.check import result_age_s
from hlctl.gpu.health import evaluate_health
from hlctl.gpu.snapshot import HostSnapshot

if TYPE_CHECKING:
    from hlctl.context import AppContext

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
class ContainerLine:
    name: str
    state: str          # running, exited, restarting ... (the engine's State)
    health: str | None  # healthy, unhealthy, starting, or None without a healthcheck
    image: str


@dataclass(frozen=True)
class HealthSummary:
    """The latest recorded `hlctl health` result, with how old it is."""

    state: str
    exit_code: int | None
    checked_at: str | None
    age_s: float | None
    stale: bool
    stale_after_s: float
    source: str | None
    findings: int


@dataclass(frozen=True)
class ModelsSummary:
    lock: str | None
    total: int          # files the lock lists
    ok: int
    states: dict[str, int]  # state -> count, unknown files included
    error: str | None = None


@dataclass(frozen=True)
class RouterToday:
    ledger: str
    requests: int
    local_requests: int
    cloud_requests: int
    cost_usd: float
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
    health: HealthSummary | None = None
    containers: list[ContainerLine] | None = None  # None: the engine did not answer
    models: ModelsSummary | None = None
    router: RouterToday | None = None

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


_HEALTH_IN_STATUS = re.compile(r"\((healthy|unhealthy|health: starting)\)")


def container_lines(raw: Sequence[Mapping[str, Any]]) -> list[ContainerLine]:
    """Containers from the engine's list (GET /containers/json): health from its Status text,
    which saves one inspect call per container."""
    lines = []
    for c in raw:
        names = c.get("Names") or [str(c.get("Id", "?"))[:12]]
        match = _HEALTH_IN_STATUS.search(str(c.get("Status") or ""))
        health = match.group(1).replace("health: ", "") if match else None
        lines.append(ContainerLine(name=str(names[0]).lstrip("/"), state=str(c.get("State")),
                                   health=health, image=str(c.get("Image"))))
    return sorted(lines, key=lambda line: line.name)


def probe_engine(environ: Mapping[str, str],
                 timeout_s: float = 3) -> tuple[DockerStatus, list[ContainerLine] | None]:
    """Ask the Docker engine through the docker SDK (DOCKER_HOST or the default socket)."""
    host = environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not Path(host[len("unix://"):]).exists():
        # No socket, no engine: skip importing the SDK (a fifth of status's run time).
        return DockerStatus(reachable=False, host=host,
                            error="no Docker engine is listening there"), None
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:
        return DockerStatus(reachable=False, host=host,
                            error="the docker SDK is not installed"), None
    try:
        client = docker.DockerClient(base_url=host, timeout=int(max(1, timeout_s)))
        try:
            client.ping()
            version = client.version().get("Version")
            # The low-level list avoids one inspect call per container.
            raw = client.api.containers(all=True)
        finally:
            client.close()
    except (DockerException, OSError) as exc:
        reason = str(exc).split("(")[0].strip().rstrip(":") or type(exc).__name__
        if "FileNotFoundError" in str(exc) or "No such file" in str(exc):
            reason = "no Docker engine is listening there"
        return DockerStatus(reachable=False, host=host, error=reason), None
    containers = container_lines(raw)
    running = sum(1 for c in containers if c.state == "running")
    return (DockerStatus(reachable=True, host=host, version=version, containers_running=running),
            containers)


def probe_docker(environ: Mapping[str, str], timeout_s: float = 3) -> DockerStatus:
    return probe_engine(environ, timeout_s)[0]


def health_summary(last: Mapping[str, Any] | None, now: datetime,
                   stale_after_s: float) -> HealthSummary | None:
    """The recorded result with its age; without a readable time it counts as stale."""
    if not last:
        return None
    age = result_age_s(last, now)
    code = last.get("exit_code")
    return HealthSummary(
        state=str(last.get("state") or "unknown"),
        exit_code=code if isinstance(code, int) else None,
        checked_at=str(last["checked_at"]) if last.get("checked_at") else None,
        age_s=round(age, 1) if age is not None else None,
        stale=age is None or age > stale_after_s, stale_after_s=stale_after_s,
        source=str(last["source"]) if last.get("source") else None,
        findings=len(last.get("findings") or []))


def models_summary(lock_path: Path | None, states: Sequence[Any],
                   error: str | None = None) -> ModelsSummary:
    """Counts over ``store.scan``'s FileStates: ok of the files the lock lists."""
    counts: dict[str, int] = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    locked = [s for s in states if s.repo is not None]
    return ModelsSummary(lock=str(lock_path) if lock_path else None, total=len(locked),
                         ok=sum(1 for s in locked if s.state == "ok"), states=counts,
                         error=error)


def scan_models(models_dir: Path, lock_path: Path) -> ModelsSummary:
    """Stat-only scan (what `hlctl models list` does): no file is re-hashed here."""
    from hlctl.errors import HlctlError
    from hlctl.models.lock import read_lock
    from hlctl.models.store import scan

    try:
        return models_summary(lock_path, scan(models_dir, read_lock(lock_path)))
    except (HlctlError, OSError) as exc:
        return models_summary(lock_path, [], error=str(exc))


def router_today(state_dir: Path, now: datetime) -> RouterToday:
    """Today's (UTC) requests and cloud cost from the router ledger; no ledger is zero."""
    from datetime import UTC, timedelta

    from hlctl.router.ledger import LEDGER_FILE

    ledger = state_dir / LEDGER_FILE
    if not ledger.exists():
        # A host without the router: nothing served, and no need to load the usage module.
        return RouterToday(str(ledger), 0, 0, 0, 0.0)
    from hlctl.errors import HlctlError
    from hlctl.router.usage import Period, read_aggregates

    start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    try:
        rows = read_aggregates(ledger, Period(start, start + timedelta(days=1), "today"),
                               "route")
    except HlctlError as exc:
        return RouterToday(str(ledger), 0, 0, 0, 0.0, error=str(exc))
    return RouterToday(
        ledger=str(ledger), requests=sum(a.requests for a in rows),
        local_requests=sum(a.requests for a in rows if a.route == "local"),
        cloud_requests=sum(a.requests for a in rows if a.route == "cloud"),
        cost_usd=round(sum(a.cost_usd for a in rows), 6))


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
                        docker_probe: Callable[[], DockerStatus | tuple[
                            DockerStatus, list[ContainerLine] | None]],
                        last_health: dict[str, Any] | None,
                        health: HealthSummary | None = None,
                        models: ModelsSummary | None = None,
                        router: RouterToday | None = None) -> LocalStatus:
    probed = docker_probe()
    docker, containers = probed if isinstance(probed, tuple) else (probed, None)
    return LocalStatus(
        host=host, taken_at=taken_at, config_source=config_source, config_error=config_error,
        driver_version=snapshot.driver_version,
        cuda_driver_version=snapshot.cuda_driver_version,
        gpu_error=snapshot.error, gpus=gpu_lines(snapshot, thresholds),
        docker=docker,
        models_dir=models_dir_status(models_dir) if models_dir is not None else None,
        last_health=last_health, health=health, containers=containers, models=models,
        router=router)


def collect_local_status(app: AppContext) -> LocalStatus:
    """This machine's status under ``app``'s config and environment: what `hlctl status`
    prints, and what the resident agent answers for each request."""
    from hlctl.config import LabConfig
    from hlctl.errors import HlctlError
    from hlctl.gpu.check import read_last_result
    from hlctl.gpu.nvml import kernel_xids_for_peek, read_snapshot
    from hlctl.models.lock import lock_path_for

    config_error = None
    try:
        config = app.config
        source = app.loaded.source
    except HlctlError as exc:
        # Status still runs on a broken config: it is where people look first.
        config, source, config_error = LabConfig(), None, str(exc)
    now = app.clock()
    # Peek at the kernel log's XIDs: consuming them is the health timer's job.
    snapshot = read_snapshot(
        xid_source=kernel_xids_for_peek(config.state_dir) if config.health.xid.kernel_log
        else None)
    last = read_last_result(config.state_dir)
    return gather_local_status(
        host=socket.gethostname(), taken_at=now.isoformat(timespec="seconds"),
        snapshot=snapshot, thresholds=config.health,
        config_source=str(source) if source else None, config_error=config_error,
        models_dir=config.models_dir,
        docker_probe=lambda: probe_engine(app.environ),
        last_health=last,
        health=health_summary(last, now, config.fleet.stale_after_s),
        models=scan_models(config.models_dir, lock_path_for(source, config.models_dir)),
        router=router_today(config.state_dir, now))
