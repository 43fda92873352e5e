"""The ``proxmox`` and ``vms`` sections of the lab config, and the role variables they become.

``proxmox`` says where the API is and how to reach it; ``vms`` maps each GPU host of the
inventory (by its inventory name) to the VM that carries it. The token secret is a
``SecretRef`` ({env: NAME} or {file: PATH}), never inline.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from hlctl.errors import ConfigError
from hlctl.secret import SecretRef
from hlctl.settingsmodel import StrictModel

TOKEN_ID = r"^[^@!\s]+@[^@!\s]+![A-Za-z][\w.-]*$"
PCI_ADDRESS = r"^([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}(\.[0-7])?$"


class ProxmoxSettings(StrictModel):
    endpoint: str = Field(pattern=r"^https://[^/:\s]+(:\d+)?/?$", description=(
        "the Proxmox API base, https://HOST:8006 (no /api2/json)"))
    node: str = Field("pve", min_length=1, description=(
        "the node that holds the template and the GPUs"))
    token_id: str = Field(pattern=TOKEN_ID, description=(
        "API token id, USER@REALM!TOKENNAME, e.g. hlctl@pve!provision"))
    token_secret: SecretRef = Field(description=(
        "the token's secret: {env: NAME} or {file: PATH} (mode 0600); never inline"))
    verify_tls: bool = Field(True, description=(
        "check the API's TLS certificate (install a real one or the host's CA rather than "
        "turning this off)"))
    template: str = Field("debian-12-cloudinit", min_length=1, description=(
        "name of the cloud-init template VM to clone"))
    storage: str = Field("local-lvm", min_length=1, description=(
        "storage for the VMs' disks and EFI disks"))
    full_clone: bool = Field(True, description="full clone rather than a linked clone")
    task_timeout_s: int = Field(300, ge=5, le=3600, description=(
        "how long to wait for one Proxmox task (clone, start, resize)"))

    @property
    def host(self) -> str:
        return self.endpoint.split("://", 1)[1].rstrip("/").split(":")[0]

    @property
    def port(self) -> int:
        rest = self.endpoint.split("://", 1)[1].rstrip("/")
        return int(rest.split(":")[1]) if ":" in rest else 8006

    @property
    def api_url(self) -> str:
        return f"https://{self.host}:{self.port}/api2/json"


class VmSettings(StrictModel):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]*$", description=(
        "VM name in Proxmox (default: the inventory host name)"))
    vmid: int | None = Field(None, ge=100, le=999_999_999, description=(
        "VM id (default: the VM's current id, or the next free one for a new VM)"))
    cores: int = Field(8, ge=1, le=512, description="vCPU cores (one socket, cpu type host)")
    memory_mb: int = Field(32768, ge=1024, description=(
        "memory in MiB; ballooning is off because passthrough pins guest memory"))
    disk_gb: int = Field(64, ge=8, description="boot disk size in GiB (grown, never shrunk)")
    disk: str = Field("scsi0", pattern=r"^(scsi|virtio|sata)\d+$", description=(
        "the template's boot disk, grown to disk_gb"))
    bridge: str = Field("vmbr0", min_length=1, description="bridge of the VM's NIC")
    vlan: int | None = Field(None, ge=1, le=4094, description="VLAN tag of the NIC")
    gpu_pci: str = Field(pattern=PCI_ADDRESS, description=(
        "the GPU's PCI address on the node: 0000:01:00 passes all its functions (VGA and "
        "audio), 0000:01:00.0 one"))
    gpu_mapping: str | None = Field(None, pattern=r"^[A-Za-z][\w.-]*$", description=(
        "PCI resource mapping the VM uses (default: NAME-gpu); created when missing unless "
        "create_mapping is false"))
    create_mapping: bool = Field(True, description=(
        "create the mapping when missing (the token then needs Mapping.Modify)"))
    user: str = Field("hlctl", pattern=r"^[a-z_][a-z0-9_-]*$", description=(
        "admin user cloud-init creates"))
    ssh_keys: list[str] = Field(default_factory=list, description=(
        "SSH public keys for the admin user"))
    ip: str = Field("dhcp", description="address as CIDR (192.168.1.50/24) or dhcp")
    gateway: str | None = Field(None, description="gateway for a static address")
    nameservers: list[str] = Field(default_factory=list, description="DNS servers for cloud-init")
    wait_for_ssh: bool = Field(True, description=(
        "after starting the VM, wait until its SSH port answers"))

    @field_validator("ip")
    @classmethod
    def _cidr(cls, value: str) -> str:
        if value != "dhcp":
            try:
                ipaddress.ip_interface(value)
            except ValueError:
                raise ValueError(f"{value!r} is neither dhcp nor an address/prefix like "
                                 "192.168.1.50/24") from None
            if "/" not in value:
                raise ValueError(f"{value!r} needs a prefix length, like {value}/24")
        return value

    @field_validator("gateway")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address") from None
        return value

    @field_validator("ssh_keys")
    @classmethod
    def _keys(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if not re.match(r"^(ssh-|ecdsa-|sk-)\S+ \S+", key.strip()):
                raise ValueError(f"{key[:30]!r}... is not an SSH public key line")
        return keys

    @model_validator(mode="after")
    def _gateway_needs_static(self) -> VmSettings:
        if self.gateway and self.ip == "dhcp":
            raise ValueError("gateway is set but ip is dhcp: give a static ip or drop gateway")
        return self


class ProvisionConfig(StrictModel):
    """The two top-level keys this module reads from hlctl.yaml."""

    proxmox: ProxmoxSettings | None = Field(None, description="the Proxmox API (see above)")
    vms: dict[str, VmSettings] = Field(default_factory=dict, description=(
        "inventory host name -> the VM that carries it"))

    @model_validator(mode="after")
    def _vms_need_proxmox(self) -> ProvisionConfig:
        if self.vms and self.proxmox is None:
            raise ValueError("vms are configured but the proxmox section is missing")
        return self


def vm_name(host: str, vm: VmSettings) -> str:
    return vm.name or host


def role_vars(proxmox: ProxmoxSettings, host: str, vm: VmSettings) -> dict[str, Any]:
    """The proxmox_vm role's variables for one host (the secret is not among them)."""
    name = vm_name(host, vm)
    return {
        "proxmox_vm_api_host": proxmox.host,
        "proxmox_vm_api_port": proxmox.port,
        "proxmox_vm_api_validate_certs": proxmox.verify_tls,
        "proxmox_vm_api_token_id": proxmox.token_id,
        "proxmox_vm_task_timeout": proxmox.task_timeout_s,
        "proxmox_vm_node": proxmox.node,
        "proxmox_vm_template": proxmox.template,
        "proxmox_vm_storage": proxmox.storage,
        "proxmox_vm_full_clone": proxmox.full_clone,
        "proxmox_vm_name": name,
        "proxmox_vm_vmid": vm.vmid or 0,
        "proxmox_vm_cores": vm.cores,
        "proxmox_vm_memory_mb": vm.memory_mb,
        "proxmox_vm_disk": vm.disk,
        "proxmox_vm_disk_size_gb": vm.disk_gb,
        "proxmox_vm_bridge": vm.bridge,
        "proxmox_vm_vlan_tag": vm.vlan or 0,
        "proxmox_vm_gpu_pci": vm.gpu_pci,
        "proxmox_vm_gpu_mapping": vm.gpu_mapping or f"{name}-gpu",
        "proxmox_vm_gpu_create_mapping": vm.create_mapping,
        "proxmox_vm_ciuser": vm.user,
        "proxmox_vm_ssh_keys": list(vm.ssh_keys),
        "proxmox_vm_ip": vm.ip,
        "proxmox_vm_gateway": vm.gateway or "",
        "proxmox_vm_nameservers": list(vm.nameservers),
        "proxmox_vm_wait_for_ssh": vm.wait_for_ssh,
    }


def parse_provision_config(data: Mapping[str, Any], source: Path | None = None
                           ) -> ProvisionConfig:
    """Validate the ``proxmox`` and ``vms`` keys of a raw lab config mapping."""
    from hlctl.config import describe_errors

    section = {k: data[k] for k in ("proxmox", "vms") if k in data and data[k] is not None}
    try:
        return ProvisionConfig.model_validate(section)
    except ValidationError as exc:
        problems = describe_errors(exc)
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}{problems[0]}" + (" ..." if len(problems) > 1 else ""),
                          problems=problems) from None


def load_provision_config(explicit: Path | None, environ: Mapping[str, str], *,
                          required: bool = True) -> ProvisionConfig:
    """The ``proxmox`` and ``vms`` sections of the effective lab config.

    With ``required``, a missing proxmox section is an error.
    """
    from hlctl.config import load_config

    loaded = load_config(explicit, environ=environ)
    config = ProvisionConfig(proxmox=loaded.config.proxmox, vms=loaded.config.vms)
    if config.proxmox is None and required:
        where = loaded.source or "hlctl.yaml"
        raise ConfigError(f"{where}: no proxmox section",
                          hint="add proxmox: and vms: (see hlctl.example.yaml)")
    return config
