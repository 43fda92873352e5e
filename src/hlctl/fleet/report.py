"""What the fleet commands make of each host's answer: pure functions over HostRun.

``hlctl status --all`` runs ``hlctl agent status`` (the ``hlctl status --json`` document) on
every host and turns each answer into a FleetRow; ``hlctl health --all`` turns ``hlctl
health --json`` answers into HostHealth and the worst exit code; ``hlctl models pull
--host/--all`` turns pull answers into HostPull.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hlctl.errors import UsageError
from hlctl.fleet.local_status import ContainerLine, GpuLine
from hlctl.fleet.transport import HostRun
from hlctl.inventory import Inventory, InventoryHost

GPU_GROUP = "gpu_hosts"
FLEET_SCHEMA = "hlctl.fleet-status/1"
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
# Worst first. A CRITICAL host needs someone now; a host we cannot judge (UNKNOWN, an
# unreachable host included) is worse than one that only warns. Nagios' own host/service
# ordering for the "worst of several" (check_multi, check_cluster) is the same.
SEVERITY = {CRITICAL: 3, UNKNOWN: 2, WARNING: 1, OK: 0}
STATE_NAMES = {OK: "ok", WARNING: "warning", CRITICAL: "critical", UNKNOWN: "unknown"}


def select_hosts(inventory: Inventory, names: Sequence[str],
                 all_hosts: bool) -> list[InventoryHost]:
    """HOST names (hosts or groups, in order), or with ``--all`` the gpu_hosts group."""
    if names and all_hosts:
        raise UsageError("give host names or --all, not both")
    if names:
        return inventory.select(names)
    hosts = inventory.group(GPU_GROUP)
    if not hosts:
        raise UsageError(f"--all: no hosts in group {GPU_GROUP} of {inventory.path}",
                         hint=f"list the GPU hosts under all.children.{GPU_GROUP}.hosts")
    return hosts


def fleet_selection(environ: Mapping[str, str], inventory_path: Path | None,
                    names: Sequence[str], all_hosts: bool) -> list[InventoryHost] | None:
    """None: no fleet mode (this machine). Else the chosen inventory hosts."""
    if not names and not all_hosts:
        return None
    from hlctl.inventory import find_inventory, load_inventory

    return select_hosts(load_inventory(find_inventory(inventory_path, environ)), names,
                        all_hosts)


def _json_document(run: HostRun) -> tuple[dict[str, Any] | None, str | None]:
    """The JSON object a remote hlctl printed, or why there is none (one line)."""
    text = run.stdout.strip()
    if text:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            return data, None
    why = run.error or _last_line(run.stderr) or _last_line(run.stdout) or "no output"
    return None, f"remote hlctl exited {run.exit_code}: {why}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# -- status ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FleetRow:
    host: str
    reachable: bool
    error: str | None = None  # unreachable, or the remote status failed
    seconds: float = 0.0
    hostname: str | None = None
    gpus: list[GpuLine] = field(default_factory=list)
    gpu_error: str | None = None
    health: str | None = None  # latest recorded health state; None: none recorded
    health_exit_code: int | None = None
    health_checked_at: str | None = None
    health_age_s: float | None = None
    health_stale: bool | None = None
    docker_reachable: bool | None = None
    containers: list[ContainerLine] | None = None
    models_ok: int | None = None
    models_total: int | None = None
    router_requests: int | None = None
    router_cost_usd: float | None = None


def row_from_run(run: HostRun) -> FleetRow:
    """One table row from one host's status document (schema hlctl.status/1)."""
    seconds = round(run.seconds, 3)
    if not run.reachable:
        return FleetRow(run.host, False, error=run.error or "unreachable", seconds=seconds)
    data, problem = _json_document(run)
    if data is None or run.exit_code != 0 or not str(data.get("schema", "")).startswith(
            "hlctl.status/"):
        return FleetRow(run.host, True, error=problem or "not an hlctl status document",
                        seconds=seconds)
    # The host's own lines, read leniently: a host on another hlctl version may lack a key.
    gpus = [GpuLine(index=int(g.get("index", i)), name=g.get("name"),
                    temperature_c=g.get("temperature_c"),
                    utilization_gpu_pct=g.get("utilization_gpu_pct"),
                    memory_used_bytes=g.get("memory_used_bytes"),
                    memory_total_bytes=g.get("memory_total_bytes"),
                    power_draw_w=g.get("power_draw_w"), power_limit_w=g.get("power_limit_w"),
                    health=str(g.get("health", "unknown")),
                    findings=[str(f) for f in g.get("findings") or []])
            for i, g in enumerate(data.get("gpus") or [])]
    health: Mapping[str, Any] = data.get("health") or {}
    docker: Mapping[str, Any] = data.get("docker") or {}
    raw_containers = data.get("containers")
    containers = None if raw_containers is None else [
        ContainerLine(str(c.get("name")), str(c.get("state")), c.get("health"),
                      str(c.get("image"))) for c in raw_containers]
    models: Mapping[str, Any] = data.get("models") or {}
    router: Mapping[str, Any] = data.get("router") or {}
    return FleetRow(
        host=run.host, reachable=True, seconds=seconds, hostname=data.get("host"),
        gpus=gpus, gpu_error=data.get("gpu_error"),
        health=health.get("state"), health_exit_code=health.get("exit_code"),
        health_checked_at=health.get("checked_at"), health_age_s=health.get("age_s"),
        health_stale=health.get("stale") if health else None,
        docker_reachable=docker.get("reachable"), containers=containers,
        models_ok=models.get("ok"), models_total=models.get("total"),
        router_requests=router.get("requests"), router_cost_usd=router.get("cost_usd"))


def status_exit_code(rows: Iterable[FleetRow]) -> int:
    """0 when every host answered with its status, 1 otherwise."""
    return 0 if all(r.reachable and r.error is None for r in rows) else 1


def fleet_status_json(rows: Sequence[FleetRow]) -> list[dict[str, Any]]:
    return [{"schema": FLEET_SCHEMA, **asdict(r)} for r in rows]


# -- health ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HostHealth:
    host: str
    reachable: bool
    exit_code: int  # Nagios: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN
    state: str
    summary: str  # one line: the findings, or why UNKNOWN
    findings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def health_from_run(run: HostRun) -> HostHealth:
    """A host's ``hlctl health --json`` answer; an unreachable host is UNKNOWN."""
    seconds = round(run.seconds, 3)
    if not run.reachable:
        return HostHealth(run.host, False, UNKNOWN, "unknown",
                          f"unreachable: {run.error or 'no answer'}", seconds=seconds)
    code = run.exit_code if run.exit_code in STATE_NAMES else UNKNOWN
    data, problem = _json_document(run)
    if data is None:
        # `hlctl health` prints "GPU UNKNOWN - <why>" when it cannot even evaluate.
        line = _last_line(run.stdout) or problem or "no answer"
        return HostHealth(run.host, True, UNKNOWN, "unknown", line, seconds=seconds)
    checks = {c.get("key"): c for c in data.get("checks") or [] if isinstance(c, dict)}
    findings = [f"{str(checks.get(k, {}).get('state', '?')).upper()} "
                f"{checks.get(k, {}).get('message', k)}" for k in data.get("findings") or []]
    state = str(data.get("state") or STATE_NAMES[code])
    summary = "; ".join(findings) if findings else "all checks OK"
    return HostHealth(run.host, True, code, state, summary, findings, seconds)


def worst_exit_code(codes: Iterable[int]) -> int:
    """CRITICAL beats UNKNOWN beats WARNING beats OK; no hosts at all is UNKNOWN."""
    seen = [c if c in SEVERITY else UNKNOWN for c in codes]
    return max(seen, key=lambda c: SEVERITY[c]) if seen else UNKNOWN


# -- models pull ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class HostPull:
    host: str
    ok: bool
    models: int = 0
    files: int = 0
    downloaded_bytes: int = 0
    seconds: float = 0.0
    error: str | None = None


def pull_from_run(run: HostRun) -> HostPull:
    """A host's ``hlctl models pull ... --json`` answer."""
    seconds = round(run.seconds, 3)
    if not run.reachable:
        return HostPull(run.host, False, seconds=seconds,
                        error=f"unreachable: {run.error or 'no answer'}")
    data, problem = _json_document(run)
    if run.exit_code != 0 or data is None:
        why = _last_line(run.stderr) or problem or f"exit {run.exit_code}"
        return HostPull(run.host, False, seconds=seconds, error=why)
    models = [m for m in data.get("models") or [] if isinstance(m, dict)]
    files = [f for m in models for f in m.get("files") or [] if isinstance(f, dict)]
    return HostPull(run.host, True, models=len(models), files=len(files),
                    downloaded_bytes=sum(int(f.get("downloaded") or 0) for f in files),
                    seconds=seconds)


def pull_exit_code(results: Iterable[HostPull]) -> int:
    return 0 if all(r.ok for r in results) else 1
