"""`hlctl vm`: the lab's VMs on Proxmox: list them, destroy one."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from hlctl.cli.output import console, print_json
from hlctl.context import AppContext

if TYPE_CHECKING:
    from hlctl.provision.proxmox_api import ProxmoxClient
    from hlctl.provision.settings import ProvisionConfig


def _client(app: AppContext) -> tuple[ProvisionConfig, ProxmoxClient]:
    from hlctl.provision.proxmox_api import ProxmoxClient
    from hlctl.provision.settings import load_provision_config

    config = load_provision_config(app.config_path, app.environ)
    assert config.proxmox is not None
    return config, ProxmoxClient(config.proxmox,
                                 config.proxmox.token_secret.reveal(app.environ))


@click.group()
def vm() -> None:
    """The lab's VMs on Proxmox.

    \b
    Examples:
      hlctl vm list
      hlctl vm destroy gpu01 --yes
    """


@vm.command("list")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: a list of {vmid, name, node, status, gpu, in_lab}.")
@click.pass_obj
def list_(app: AppContext, as_json: bool) -> None:
    """List the VMs on the cluster with state and passed-through GPU.

    \b
    Example:
      hlctl vm list --json | jq '.[] | select(.in_lab)'
    """
    from rich.table import Table

    from hlctl.provision.proxmox_api import list_vms
    from hlctl.provision.settings import vm_name

    config, client = _client(app)
    with client:
        rows = list_vms(client, {vm_name(h, v) for h, v in config.vms.items()})
    if as_json:
        print_json([r.to_dict() for r in rows])
        return
    table = Table(box=None, pad_edge=False)
    for column in ("vmid", "name", "node", "status", "gpu", "lab"):
        table.add_column(column)
    for r in rows:
        colour = "green" if r.status == "running" else "white"
        table.add_row(str(r.vmid), r.name, r.node, f"[{colour}]{r.status}[/]",
                      "; ".join(r.gpu) or "-", "yes" if r.in_lab else "")
    console().print(table)


@vm.command()
@click.argument("name")
@click.option("--yes", is_flag=True, help="Really destroy it (its disks are deleted).")
@click.pass_obj
def destroy(app: AppContext, name: str, yes: bool) -> None:
    """Stop and delete a VM and its disks. NAME is the VM's or the inventory host's name.

    \b
    Example:
      hlctl vm destroy gpu01 --yes
    """
    from hlctl.errors import UsageError
    from hlctl.provision.proxmox_api import destroy_vm
    from hlctl.provision.settings import vm_name

    if not yes:
        raise UsageError(f"refusing to destroy VM {name} without --yes (its disks are deleted)")
    config, client = _client(app)
    assert config.proxmox is not None
    target = vm_name(name, config.vms[name]) if name in config.vms else name
    with client:
        vmid = destroy_vm(client, target, timeout_s=config.proxmox.task_timeout_s,
                          progress=lambda line: click.echo(line, err=True))
    click.echo(f"destroyed {target} ({vmid})")
