"""`hlctl status`: one screen for this machine (GPUs, Docker, models, last health check)."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import click

from hlctl.cli.output import console, print_json
from hlctl.context import AppContext

if TYPE_CHECKING:
    from hlctl.fleet.local_status import LocalStatus


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.1f} GiB"


def _val(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:g}{unit}"


def _print(status: LocalStatus) -> None:
    from rich.table import Table

    out = console()
    out.print(f"[bold]{status.host}[/]  {status.taken_at}")
    if status.config_error:
        out.print(f"config: [red]{status.config_error}[/] (defaults used)")
    else:
        out.print(f"config: {status.config_source or 'none found, defaults used'}")
    if status.gpu_error:
        out.print(f"GPUs: [yellow]none readable[/] ({status.gpu_error})")
    else:
        out.print(f"driver {status.driver_version or 'n/a'}")
        table = Table(box=None, pad_edge=False)
        for column in ("GPU", "name", "temp", "use", "memory", "power", "health"):
            table.add_column(column)
        colour = {"ok": "green", "warning": "yellow", "critical": "red", "unknown": "magenta"}
        for g in status.gpus:
            memory = (f"{_gib(g.memory_used_bytes)} / {_gib(g.memory_total_bytes)}"
                      if g.memory_total_bytes else "n/a")
            power = (f"{_val(g.power_draw_w, ' W')} / {_val(g.power_limit_w, ' W')}"
                     if g.power_draw_w is not None else "n/a")
            table.add_row(str(g.index), g.name or "?", _val(g.temperature_c, " C"),
                          _val(g.utilization_gpu_pct, "%"), memory, power,
                          f"[{colour.get(g.health, 'white')}]{g.health}[/]")
        out.print(table)
    d = status.docker
    if d.reachable:
        out.print(f"docker: [green]reachable[/] {d.version or ''}, "
                  f"{d.containers_running} container(s) running")
    else:
        out.print(f"docker: [yellow]not reachable[/] at {d.host} ({d.error})")
    m = status.models_dir
    if m is not None:
        if m.exists:
            out.print(f"models: {m.path}: {m.gguf_files} GGUF file(s), "
                      f"{_gib(m.free_bytes)} free of {_gib(m.total_bytes)}")
        else:
            out.print(f"models: {m.path} [yellow]does not exist[/]")
    last = status.last_health
    if last:
        out.print(f"last health check: {last.get('state', '?')} at {last.get('checked_at', '?')}")
    else:
        out.print("last health check: none recorded (run 'hlctl health')")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (schema hlctl.status/1).")
@click.pass_obj
def status(app: AppContext, as_json: bool) -> None:
    """One screen for this machine: GPUs, Docker engine, models directory, health.

    \b
    Example:
      hlctl status --json | jq '.gpus[].temperature_c'
    """
    from hlctl.config import LabConfig
    from hlctl.errors import HlctlError
    from hlctl.fleet.local_status import gather_local_status, probe_docker
    from hlctl.gpu.check import read_last_result
    from hlctl.gpu.nvml import kernel_xids_for_peek, read_snapshot

    config_error = None
    try:
        config = app.config
        source = str(app.loaded.source) if app.loaded.source else None
    except HlctlError as exc:
        # Status still runs on a broken config: it is where people look first.
        config, source, config_error = LabConfig(), None, str(exc)
    taken_at = app.clock().isoformat(timespec="seconds")
    host = socket.gethostname()
    # Peek at the kernel log's XIDs: consuming them is the health timer's job.
    snapshot = read_snapshot(
        xid_source=kernel_xids_for_peek(config.state_dir) if config.health.xid.kernel_log
        else None)
    result = gather_local_status(
        host=host, taken_at=taken_at, snapshot=snapshot, thresholds=config.health,
        config_source=source, config_error=config_error, models_dir=config.models_dir,
        docker_probe=lambda: probe_docker(app.environ),
        last_health=read_last_result(config.state_dir))
    if as_json:
        print_json(result.to_dict())
    else:
        _print(result)
