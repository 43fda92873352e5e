"""`hlctl status`: one screen for this machine, or with --all / HOST... for the whole lab."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from hlctl.cli.output import console, print_json
from hlctl.context import AppContext

if TYPE_CHECKING:
    from hlctl.fleet.local_status import LocalStatus
    from hlctl.fleet.report import FleetRow
    from hlctl.inventory import InventoryHost


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.1f} GiB"


def _val(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:g}{unit}"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h" if seconds < 172800 else f"{seconds / 86400:.0f}d"


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
    for c in status.containers or []:
        out.print(f"  {c.name}: {c.state}{f' ({c.health})' if c.health else ''}  {c.image}")
    if status.models is not None and (status.models.total or status.models.error):
        ms = status.models
        out.print(f"models.lock: {ms.ok} of {ms.total} file(s) ok"
                  + (f" [red]({ms.error})[/]" if ms.error else ""))
    if status.router is not None and status.router.requests:
        r = status.router
        out.print(f"router today: {r.requests} request(s) ({r.local_requests} local, "
                  f"{r.cloud_requests} cloud), ${r.cost_usd:.2f}")
    last = status.last_health
    if last:
        h = status.health
        age = (f", {_age(h.age_s)} ago" if h and h.age_s is not None else "")
        stale = " [yellow](stale)[/]" if h and h.stale else ""
        out.print(f"last health check: {last.get('state', '?')} at "
                  f"{last.get('checked_at', '?')}{age}{stale}")
    else:
        out.print("last health check: none recorded (run 'hlctl health')")


def _fleet_table(rows: list[FleetRow]) -> None:
    from rich.table import Table

    colour = {"ok": "green", "warning": "yellow", "critical": "red", "unknown": "magenta"}
    table = Table(title="lab status", pad_edge=False)
    for column in ("host", "reach", "GPUs (temp / use / memory)", "health", "containers",
                   "models", "router today"):
        table.add_column(column)
    for r in rows:
        if not r.reachable:
            table.add_row(r.host, "[red]unreachable[/]", f"[red]{r.error}[/]", "", "", "", "")
            continue
        if r.error:
            table.add_row(r.host, "[yellow]error[/]", f"[yellow]{r.error}[/]", "", "", "", "")
            continue
        gpus = "\n".join(
            f"{g.index}: {_val(g.temperature_c, ' C')} / {_val(g.utilization_gpu_pct, '%')} / "
            f"{_gib(g.memory_used_bytes)} of {_gib(g.memory_total_bytes)}" for g in r.gpus) \
            or f"[yellow]none readable[/]{f' ({r.gpu_error})' if r.gpu_error else ''}"
        if r.health is None:
            health = "[magenta]none recorded[/]"
        else:
            age = f", {_age(r.health_age_s)} ago" if r.health_age_s is not None else ""
            health = (f"[{colour.get(r.health, 'white')}]{r.health}[/]{age}"
                      + (" [yellow]stale[/]" if r.health_stale else ""))
        if r.containers is None:
            containers = "[yellow]no engine[/]"
        else:
            containers = "\n".join(
                f"{c.name} {c.state}{f' ({c.health})' if c.health else ''}"
                for c in r.containers) or "none"
        models = "n/a" if r.models_total is None else f"{r.models_ok}/{r.models_total} ok"
        router = ("n/a" if r.router_requests is None
                  else f"{r.router_requests} req, ${r.router_cost_usd or 0:.2f}")
        table.add_row(r.host, "[green]yes[/]", gpus, health, containers, models, router)
    console().print(table)


def _fleet(app: AppContext, hosts: list[InventoryHost], timeout: float | None,
           as_json: bool) -> None:
    from hlctl.fleet.report import fleet_status_json, row_from_run, status_exit_code
    from hlctl.fleet.transport import run_on_hosts

    timeout_s = timeout if timeout is not None else app.config.fleet.timeout_s
    # `hlctl agent status` prints what `hlctl status --json` does, from the host's resident
    # agent when one listens (a socket read instead of a CLI start on each host).
    runs = run_on_hosts(hosts, ["hlctl", "agent", "status"], timeout_s=timeout_s,
                        reuse=app.ssh_reuse())
    rows = [row_from_run(run) for run in runs]
    if as_json:
        print_json(fleet_status_json(rows))
    else:
        _fleet_table(rows)
    raise click.exceptions.Exit(status_exit_code(rows))


@click.command()
@click.argument("hosts", nargs=-1, metavar="[HOST]...")
@click.option("--all", "all_hosts", is_flag=True,
              help="Every host of the inventory's gpu_hosts group.")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: this machine's (schema hlctl.status/1), or with hosts a list "
                   "with one object per host (schema hlctl.fleet-status/1).")
@click.option("--timeout", type=click.FloatRange(min=0.5), metavar="SECONDS",
              help="Wait at most this long for each host (default: fleet.timeout_s, 20).")
@click.option("-i", "--inventory", "inventory_path",
              type=click.Path(path_type=Path, dir_okay=False),
              help="Inventory (default: $HLCTL_INVENTORY or ./inventory/hosts.yml).")
@click.pass_obj
def status(app: AppContext, hosts: tuple[str, ...], all_hosts: bool, as_json: bool,
           timeout: float | None, inventory_path: Path | None) -> None:
    """One screen: this machine, or with --all / HOST... the whole lab in one table.

    Without hosts: GPUs, Docker engine, models, router traffic and the last health check of
    this machine. With --all or HOST names (inventory hosts or groups): the same from every
    host at once over SSH (`hlctl agent status` on each, answered by its resident agent), one
    row per host; a host that does not answer within --timeout is a row saying unreachable
    and slows no other.
    Exit 0, or 1 when a host is unreachable or its status failed; 2 on a usage, config or
    inventory error.

    \b
    Examples:
      hlctl status --json | jq '.gpus[].temperature_c'
      hlctl status --all
      hlctl status gpu01 gpu02 --json --timeout 5
    """
    if hosts or all_hosts:
        from hlctl.fleet.report import fleet_selection

        selected = fleet_selection(app.environ, inventory_path, hosts, all_hosts)
        assert selected is not None
        _fleet(app, selected, timeout, as_json)
        return
    from hlctl.fleet.local_status import collect_local_status

    result = collect_local_status(app)
    if as_json:
        print_json(result.to_dict())
    else:
        _print(result)
