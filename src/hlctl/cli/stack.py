"""`hlctl up|down|restart|logs`: the llama-server + router stack, here or on inventory hosts.

Parses and prints only; the work is in hlctl.stack.service.
"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path
from typing import Any

import click

from hlctl.context import AppContext
from hlctl.errors import ExitStatus, UsageError

GPU_GROUP = "gpu_hosts"
_HOSTS = click.argument("hosts", nargs=-1, metavar="[HOST ...]")
_ALL = click.option("--all", "all_hosts", is_flag=True,
                    help=f"Every host of the inventory group {GPU_GROUP}.")
_INVENTORY = click.option("-i", "--inventory", "inventory_path",
                          type=click.Path(path_type=Path, dir_okay=False),
                          help="Inventory (default: $HLCTL_INVENTORY or ./inventory/hosts.yml).")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON (stable keys).")
_PROJECT = click.option("--project-dir", type=click.Path(path_type=Path, file_okay=False),
                        help="This host's compose/ folder (default: stack.project_dir).")


def _settings(app: AppContext, project_dir: Path | None = None) -> Any:
    settings = app.config.stack
    if project_dir is not None:
        settings = settings.model_copy(update={"project_dir": project_dir})
    return settings


def _hosts(app: AppContext, names: tuple[str, ...], all_hosts: bool,
           inventory_path: Path | None) -> list[Any] | None:
    """None: act on this machine. Else the inventory hosts named (or the whole GPU group)."""
    if not names and not all_hosts:
        return None
    if names and all_hosts:
        raise UsageError("give host names or --all, not both")
    from hlctl.inventory import find_inventory, load_inventory

    inventory = load_inventory(find_inventory(inventory_path, app.environ))
    if names:
        return inventory.select(names)
    hosts = inventory.group(GPU_GROUP)
    if not hosts:
        raise UsageError(f"--all: no hosts in group {GPU_GROUP} of {inventory.path}")
    return hosts


def _print_local(result: Any, as_json: bool) -> None:
    from hlctl.cli.output import print_json

    if as_json:
        print_json(result.to_json())
        return
    if result.dry_run or (result.env_changed is None and result.cuda):
        if result.cuda:
            click.echo(result.cuda)
        click.echo(f"Would run {result.image} with {result.model} "
                   f"(-ngl {result.n_gpu_layers} from {result.plan_source}, "
                   f"ctx {result.ctx}, {result.parallel} slots); .env: {result.env_file}")
        click.echo("llama-server: " + " ".join(result.llama_command))
        return
    if result.action == "down":
        click.echo(f"{result.host}: stack stopped")
        return
    click.echo(f"{result.host}: {result.action} ok: {result.image}, {result.model}")
    for line in (result.cuda, result.offload):
        if line:
            click.echo(f"  {line}")


def _print_remote(outcomes: list[Any], action: str, as_json: bool) -> None:
    from hlctl.cli.output import print_json

    if as_json:
        print_json({"action": action, "hosts": [o.to_json() for o in outcomes]})
    else:
        for o in outcomes:
            state = "ok" if o.ok else ("UNREACHABLE" if not o.reachable else "FAILED")
            click.echo(f"{o.host:<20} {state:<12} {o.seconds:6.1f}s  {o.message}")
    if not all(o.ok for o in outcomes):
        sys.exit(ExitStatus.FAILURE)


def _local_up(app: AppContext, *, image_tag: str | None, dry_run: bool, recreate: bool,
              project_dir: Path | None, check_only: bool = False) -> Any:
    from hlctl.models.lock import read_lock
    from hlctl.stack.service import lock_path, up_local

    settings = _settings(app, project_dir)
    models_dir = app.config.models_dir
    lock = read_lock(lock_path(app.loaded.source, models_dir))
    return up_local(settings, models_dir=models_dir, lock=lock, host=socket.gethostname(),
                    image_tag=image_tag, dry_run=dry_run, recreate=recreate,
                    check_only=check_only)


def _up_command(action: str) -> Any:
    @click.command(name=action)
    @_HOSTS
    @_ALL
    @click.option("--image-tag", metavar="TAG",
                  help="Run this llama-server image tag instead of the configured one "
                       "(a rollback is one flag).")
    @click.option("--dry-run", is_flag=True,
                  help="Render and check the plan; start nothing, write nothing.")
    @click.option("--check", "check_only", is_flag=True,
                  help="Like --dry-run, and check the image's CUDA against the driver.")
    @_INVENTORY
    @_PROJECT
    @_JSON
    @click.pass_obj
    def command(app: AppContext, hosts: tuple[str, ...], all_hosts: bool,
                image_tag: str | None, dry_run: bool, check_only: bool,
                inventory_path: Path | None, project_dir: Path | None,
                as_json: bool) -> None:
        if dry_run and check_only:
            raise UsageError("give --dry-run or --check, not both")
        selected = _hosts(app, hosts, all_hosts, inventory_path)
        if selected is None:
            result = _local_up(app, image_tag=image_tag, dry_run=dry_run,
                               recreate=action == "restart", project_dir=project_dir,
                               check_only=check_only)
            _print_local(result, as_json)
            return
        from hlctl.stack.service import remote_argv, run_remote

        settings = _settings(app)
        outcomes = run_remote(selected, remote_argv(action, image_tag=image_tag,
                                                    dry_run=dry_run, check_only=check_only),
                              timeout_s=settings.timeouts.remote_s,
                              reuse=app.ssh_reuse())
        _print_remote(outcomes, action, as_json)

    return command


up = _up_command("up")
up.help = """Start llama-server and the router (compose) here, or on inventory hosts.

    Renders .env from the lab config, models.lock and the fit; refuses an image whose CUDA
    the driver cannot run; waits for both healthchecks; fails if the model fell back to the
    CPU.

    \b
    Examples:
      hlctl up                       on this GPU host
      hlctl up gpu01 gpu02           on those hosts, in parallel, over SSH
      hlctl up --all --image-tag b11400-cuda12.1.1-sm86   roll every host back
      hlctl up --dry-run             show llama-server's exact command line
    """
restart = _up_command("restart")
restart.help = """Recreate the stack's containers with the current settings.

    \b
    Examples:
      hlctl restart                  on this host
      hlctl restart gpu01
    """


@click.command()
@_HOSTS
@_ALL
@_INVENTORY
@_PROJECT
@_JSON
@click.pass_obj
def down(app: AppContext, hosts: tuple[str, ...], all_hosts: bool,
         inventory_path: Path | None, project_dir: Path | None, as_json: bool) -> None:
    """Stop and remove the stack's containers (the router's ledger volume stays).

    \b
    Examples:
      hlctl down
      hlctl down --all
    """
    selected = _hosts(app, hosts, all_hosts, inventory_path)
    if selected is None:
        from hlctl.stack.service import down_local

        _print_local(down_local(_settings(app, project_dir), host=socket.gethostname()),
                     as_json)
        return
    from hlctl.stack.service import remote_argv, run_remote

    outcomes = run_remote(selected, remote_argv("down"),
                          timeout_s=_settings(app).timeouts.remote_s,
                          reuse=app.ssh_reuse())
    _print_remote(outcomes, "down", as_json)


@click.command()
@click.argument("service", type=click.Choice(["llama-server", "router"]))
@click.option("--host", "host", metavar="HOST", help="Read the logs on this inventory host.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--tail", type=click.IntRange(min=0), default=200, show_default=True,
              help="Lines from the end to start with.")
@_INVENTORY
@_PROJECT
@click.pass_obj
def logs(app: AppContext, service: str, host: str | None, follow: bool, tail: int,
         inventory_path: Path | None, project_dir: Path | None) -> None:
    """Print a stack service's logs, here or on one host.

    \b
    Examples:
      hlctl logs llama-server
      hlctl logs router --host gpu01 --follow
    """
    if host is None:
        from hlctl.stack.service import logs_local

        logs_local(_settings(app, project_dir), service, follow=follow, tail=tail,
                   on_line=click.echo)
        return
    import math

    from hlctl.stack.service import run_remote

    selected = _hosts(app, (host,), False, inventory_path) or []
    if len(selected) != 1:
        raise UsageError(f"--host {host!r} names {len(selected)} hosts; give one host")
    lock = threading.Lock()

    def echo(_host: str, line: str) -> None:
        with lock:
            click.echo(line)

    argv = ["hlctl", "logs", service, "--tail", str(tail)] + (["--follow"] if follow else [])
    outcome = run_remote(selected, argv, timeout_s=math.inf if follow else 120,
                         on_output=echo, expect_json=False, reuse=app.ssh_reuse())[0]
    if not outcome.ok:
        from hlctl.errors import HlctlError

        raise HlctlError(f"{outcome.host}: {outcome.message}")
