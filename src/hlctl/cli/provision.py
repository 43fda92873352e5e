"""`hlctl provision`: create the GPU VMs on Proxmox, then configure them, with Ansible."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hlctl.cli.output import print_json
from hlctl.context import AppContext

if TYPE_CHECKING:
    from hlctl.inventory import Inventory, InventoryHost
    from hlctl.provision.runner import PlaybookRun, RunResult
    from hlctl.provision.settings import ProvisionConfig

GPU_GROUP = "gpu_hosts"
_STYLE = {"ok": "green", "changed": "yellow", "failed": "red", "unreachable": "red"}


def _progress_line(event: Mapping[str, Any]) -> None:
    if event.get("event") != "result" or event.get("status") == "skipped":
        return
    status = str(event.get("status"))
    label = click.style(f"{status:<8}", fg=_STYLE.get(status))
    click.echo(f"  {label} {event.get('host')}  {event.get('task')}")


def _print_summary(result: RunResult) -> None:
    click.echo(f"\n{result.playbook}:")
    click.echo(f"  {'host':<16} {'ok':>4} {'changed':>8} {'failed':>7} {'unreach':>8} "
               f"{'skipped':>8} {'time':>7}")
    for host, s in sorted(result.hosts.items()):
        click.echo(f"  {host:<16} {s.ok:>4} {s.changed:>8} {s.failed:>7} {s.unreachable:>8} "
                   f"{s.skipped:>8} {s.seconds:>6.1f}s")
    for failure in result.failures:
        click.echo(click.style(f"  FAILED {failure.host}: {failure.task}: {failure.message}",
                               fg="red"))


def _select_hosts(inventory: Inventory, names: tuple[str, ...]) -> list[InventoryHost]:
    from hlctl.errors import UsageError

    if names:
        return inventory.select(names)
    hosts = inventory.group(GPU_GROUP)
    if not hosts:
        raise UsageError(f"no hosts to provision: name them, or list them in group {GPU_GROUP} "
                         f"of {inventory.path}")
    return hosts


def _vm_run(app: AppContext, config: ProvisionConfig, inventory: Inventory,
            hosts: list[InventoryHost], strict: bool, ansible_dir: Path,
            check: bool, diff: bool) -> PlaybookRun | None:
    """Preflight every VM against the API, then describe the vm.yml run (None: no VMs).

    ``strict`` (hosts named with ``--only vm``): each must have a VM in the lab config.
    """
    from hlctl.errors import HlctlError, UsageError
    from hlctl.provision.preflight import VmPlan, run_checks
    from hlctl.provision.proxmox_api import ProxmoxClient, gather_facts
    from hlctl.provision.runner import PlaybookRun
    from hlctl.provision.settings import role_vars, vm_name

    missing = [h.name for h in hosts if h.name not in config.vms]
    if missing and strict:
        raise UsageError(f"host {missing[0]} has no entry under vms: in the lab config",
                         hint="add vms: {" + missing[0] + ": {gpu_pci: ...}}")
    vm_hosts = [h for h in hosts if h.name in config.vms]
    if not vm_hosts:
        return None  # hosts on bare metal: nothing to create
    proxmox = config.proxmox
    assert proxmox is not None
    secret = proxmox.token_secret.reveal(app.environ)
    problems: list[str] = []
    with ProxmoxClient(proxmox, secret) as client:
        for host in vm_hosts:
            vm = config.vms[host.name]
            name = vm_name(host.name, vm)
            plan = VmPlan(name=name, node=proxmox.node, template=proxmox.template,
                          storage=proxmox.storage, gpu_pci=vm.gpu_pci,
                          gpu_mapping=vm.gpu_mapping or f"{name}-gpu",
                          create_mapping=vm.create_mapping, vmid=vm.vmid, disk_gb=vm.disk_gb)
            result = run_checks(gather_facts(client, plan), plan)
            problems += [f"preflight {host.name}: {f.message}" for f in result.findings]
    if problems:
        if app.verbose:
            for problem in problems[1:]:
                click.echo(f"  {problem}", err=True)
        more = f" (+{len(problems) - 1} more; -v lists them)" if len(problems) > 1 else ""
        raise HlctlError(problems[0] + more)
    host_vars = {h.name: role_vars(proxmox, h.name, config.vms[h.name]) for h in vm_hosts}
    return PlaybookRun(playbook=ansible_dir / "playbooks" / "vm.yml", inventory=inventory.path,
                       limit=tuple(h.name for h in vm_hosts), host_vars=host_vars,
                       secret_env={"PROXMOX_TOKEN_SECRET": secret}, check=check, diff=diff,
                       verbose=app.verbose)


def _host_runs(app: AppContext, inventory: Inventory, selected: list[InventoryHost],
               ansible_dir: Path, only: str | None, wheel_path: Path | None, check: bool,
               diff: bool) -> list[PlaybookRun]:
    """gpu_host.yml (unless --only stack) and stack.yml (unless --only host), with the lab
    config, the hlctl wheel and, for the stack, the router's secrets as extra vars (0600 file)."""
    from hlctl.config import find_config_file, read_config_file
    from hlctl.errors import ConfigError, HlctlError, UsageError
    from hlctl.provision.runner import PlaybookRun
    from hlctl.provision.stack_vars import stack_vars
    from hlctl.provision.wheel import build_wheel, find_wheel, source_checkout
    from hlctl.secret import SecretRef

    names = (["gpu_host.yml"] if only in (None, "host") else []) + \
        (["stack.yml"] if only in (None, "stack") else [])
    for name in names:
        if not (ansible_dir / "playbooks" / name).is_file():
            raise HlctlError(f"{ansible_dir / 'playbooks' / name} is missing: the host roles "
                             "are not installed here", hint="use --only vm, or update hlctl")
    # The hosts get the lab config as written (secrets stay {env:}/{file:} references, the
    # router's pointing at the container's /run/secrets); the hlctl_agent role drops the
    # controller-only sections and validates the rest.
    source = find_config_file(app.config_path, app.environ)
    lab_config = read_config_file(source) if source is not None else {}

    def reveal(ref: Mapping[str, Any], where: str) -> str:
        try:
            return SecretRef.model_validate(dict(ref)).reveal(app.environ)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from None

    app.config  # noqa: B018 - validate the whole lab config before reading its secrets

    host_vars = stack_vars(lab_config, reveal if "stack.yml" in names else None)
    wheel = find_wheel(wheel_path, app.environ)
    checkout = source_checkout()
    if wheel is None and checkout is not None:
        wheel = build_wheel(checkout, app.state_dir / "build" / "wheel")
    if wheel is None and "stack.yml" in names:
        raise UsageError("the router image installs hlctl from a wheel: pass --wheel",
                         hint="pip wheel --no-deps -w dist hlctl")
    common: dict[str, Any] = {"hlctl_lab_config": host_vars.host_lab_config}
    if wheel is not None:
        common |= {"hlctl_agent_package_file": str(wheel), "hlctl_wheel": str(wheel)}
    runs = []
    for name in names:
        extra = dict(common)
        if name == "stack.yml":
            extra["hlctl_stack_secrets"] = host_vars.secret_files
        runs.append(PlaybookRun(playbook=ansible_dir / "playbooks" / name,
                                inventory=inventory.path,
                                limit=tuple(h.name for h in selected), check=check, diff=diff,
                                extra_vars=extra, verbose=app.verbose))
    return runs


@click.command()
@click.argument("hosts", nargs=-1)
@click.option("--check", is_flag=True, help="Dry run: report what would change, change nothing.")
@click.option("--diff", is_flag=True, help="Show the differences Ansible applies.")
@click.option("--only", type=click.Choice(["vm", "host", "stack"]),
              help="vm: only create/update the VMs on Proxmox; host: only configure the hosts "
                   "(driver, Docker, storage, agent, health timer); stack: only build and start "
                   "llama-server and the router (playbooks/stack.yml).")
@click.option("--wheel", "wheel_path", type=click.Path(path_type=Path, dir_okay=False),
              help="The hlctl wheel the hosts install (default: $HLCTL_WHEEL, or one built from "
                   "this source checkout).")
@click.option("-i", "--inventory", "inventory_path", type=click.Path(path_type=Path),
              help="Inventory (default: $HLCTL_INVENTORY or ./inventory/hosts.yml).")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON summary (schema hlctl.provision/1), no progress.")
@click.pass_obj
def provision(app: AppContext, hosts: tuple[str, ...], check: bool, diff: bool,
              only: str | None, wheel_path: Path | None, inventory_path: Path | None,
              as_json: bool) -> None:
    """Create the GPU VMs on Proxmox and configure them (idempotent).

    HOST names inventory hosts or groups (default: the gpu_hosts group). Preflight checks
    the Proxmox API first; each problem says what to fix on the host.

    \b
    Examples:
      hlctl provision gpu01             VM, then driver, Docker, storage, agent, stack
      hlctl provision --only vm --check what would change on Proxmox
      hlctl provision -v gpu01          with Ansible's own output
    """
    from hlctl.errors import ExitStatus, UsageError
    from hlctl.inventory import find_inventory, load_inventory
    from hlctl.provision.runner import find_ansible_dir, run_playbook
    from hlctl.provision.settings import load_provision_config

    inventory = load_inventory(find_inventory(inventory_path, app.environ))
    selected = _select_hosts(inventory, hosts)
    ansible_dir = find_ansible_dir(app.environ)
    runs: list[PlaybookRun] = []
    if only in (None, "vm"):
        # Without --only, a lab with no Proxmox (hosts on bare metal) just skips the VM step.
        config = load_provision_config(app.config_path, app.environ, required=only == "vm")
        vm_run = (_vm_run(app, config, inventory, selected, bool(hosts) and only == "vm",
                          ansible_dir, check, diff) if config.proxmox is not None else None)
        if vm_run is not None:
            runs.append(vm_run)
        elif only == "vm":
            raise UsageError("no host has a VM in the lab config (vms:)",
                             hint="see hlctl.example.yaml")
    if only in (None, "host", "stack"):
        runs += _host_runs(app, inventory, selected, ansible_dir, only, wheel_path, check, diff)
    results: list[RunResult] = []
    for run in runs:
        if not as_json and not app.verbose:
            click.echo(f"{run.playbook.name}{' (check mode)' if check else ''}:")
        result = run_playbook(
            run, ansible_dir=ansible_dir, environ=app.environ,
            on_event=_progress_line if not as_json and not app.verbose else lambda _: None,
            raw_output=sys.stdout if app.verbose and not as_json else None)
        results.append(result)
        if not as_json:
            _print_summary(result)
        if not result.ok:
            break
    ok = all(r.ok for r in results)
    if as_json:
        print_json({"schema": "hlctl.provision/1", "ok": ok, "check": check,
                    "runs": [r.to_dict() for r in results]})
    if not ok:
        raise click.exceptions.Exit(ExitStatus.FAILURE)
