"""Preflight checks over facts read from the Proxmox API: pure, one finding per problem.

Each message says what is wrong and what to do on the Proxmox host; ``run_checks`` stops at
nothing, so one run lists every problem. The proxmox_vm role repeats these checks in
Ansible for people who run its playbook without hlctl.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

GIB = 2**30
IOMMU_FIX = ("enable IOMMU on the host: add intel_iommu=on (AMD: amd_iommu=on) iommu=pt to the "
             "kernel command line (GRUB_CMDLINE_LINUX_DEFAULT in /etc/default/grub, or "
             "/etc/kernel/cmdline), run update-grub or proxmox-boot-tool refresh, and reboot")
VFIO_FIX = ("load the vfio modules on the host: add vfio, vfio_iommu_type1 and vfio_pci to "
            "/etc/modules, run update-initramfs -u -k all, and reboot")
BLACKLIST_FIX = ("keep host drivers off the GPU: blacklist nouveau and nvidia in "
                 "/etc/modprobe.d/blacklist-gpu.conf, bind the card to vfio-pci "
                 "(options vfio-pci ids=VENDOR:DEVICE), update-initramfs -u -k all, reboot")


@dataclass(frozen=True)
class VmPlan:
    """What the lab config asks for one VM, as far as preflight cares."""

    name: str
    node: str
    template: str
    storage: str
    gpu_pci: str
    gpu_mapping: str
    create_mapping: bool = True
    vmid: int | None = None
    disk_gb: int = 64


@dataclass(frozen=True)
class ProxmoxFacts:
    """What the API said; None where it could not be read."""

    nodes: Sequence[Mapping[str, Any]]
    vms: Sequence[Mapping[str, Any]]  # /cluster/resources?type=vm
    template_config: Mapping[str, Any] | None
    pci: Sequence[Mapping[str, Any]]
    vm_configs: Mapping[int, Mapping[str, Any]]  # the other VMs' configs, by vmid
    mappings: Sequence[Mapping[str, Any]]
    storage: Mapping[str, Any] | None


@dataclass(frozen=True)
class Finding:
    check: str
    message: str


@dataclass(frozen=True)
class PreflightResult:
    findings: list[Finding] = field(default_factory=list)
    vm_exists: bool = False

    @property
    def ok(self) -> bool:
        return not self.findings


def full_pci(address: str) -> str:
    """``01:00.0`` -> ``0000:01:00.0``; lower case."""
    address = address.strip().lower()
    return "0000:" + address if address.count(":") == 1 else address


def gpu_functions(pci: Sequence[Mapping[str, Any]], address: str) -> list[Mapping[str, Any]]:
    """The functions ``address`` names: one (with ``.N``) or every function of the slot."""
    full = full_pci(address)
    if "." in full:
        return [d for d in pci if str(d.get("id", "")).lower() == full]
    return [d for d in pci if str(d.get("id", "")).lower().startswith(full + ".")]


def slot(address: str) -> str:
    return full_pci(address).split(".")[0]


def iommu_strangers(pci: Sequence[Mapping[str, Any]], address: str) -> list[str]:
    """Devices in the GPU's IOMMU group that are not functions of the GPU's own slot."""
    funcs = gpu_functions(pci, address)
    if not funcs:
        return []
    group = funcs[0].get("iommugroup")
    return sorted(str(d["id"]) for d in pci if d.get("iommugroup") == group
                  and not str(d["id"]).lower().startswith(slot(address) + "."))


def _options(value: Any) -> dict[str, str]:
    out = {}
    for part in str(value or "").split(","):
        if part:
            key, _, val = part.partition("=")
            out[key] = val
    return out


def hostpci_takes(value: Any, address: str, mapping: str,
                  mappings: Sequence[Mapping[str, Any]], node: str) -> bool:
    """Whether one ``hostpciN`` value takes this GPU, by raw address or by any mapping."""
    first = str(value).split(",")[0]
    if first.startswith("mapping="):
        name = first[len("mapping="):]
        if name == mapping:
            return True
        paths = mapping_paths(next((m for m in mappings if m.get("id") == name), None), node)
        return any(slot(p) == slot(address) for p in paths)
    return slot(first.removeprefix("host=")) == slot(address)


def mapping_paths(mapping: Mapping[str, Any] | None, node: str) -> list[str]:
    return [_options(e).get("path", "") for e in (mapping or {}).get("map", []) or []
            if _options(e).get("node") == node]


def mapping_entry(pci: Sequence[Mapping[str, Any]], address: str, node: str) -> str:
    """The ``--map`` value that makes a mapping for this GPU (vendor:device of function 0)."""
    first = gpu_functions(pci, address)[0]
    ident = (f"{str(first.get('vendor', '')).removeprefix('0x')}:"
             f"{str(first.get('device', '')).removeprefix('0x')}")
    return f"node={node},path={full_pci(address)},id={ident},iommugroup={first.get('iommugroup')}"


def _check_node(facts: ProxmoxFacts, plan: VmPlan) -> list[Finding]:
    node = next((n for n in facts.nodes if n.get("node") == plan.node), None)
    names = ", ".join(str(n.get("node")) for n in facts.nodes) or "none"
    if node is None:
        return [Finding("node", f"node {plan.node!r} is not in the cluster (nodes: {names}): "
                                "set proxmox.node")]
    if node.get("status") != "online":
        return [Finding("node", f"node {plan.node!r} is {node.get('status')}: bring it online")]
    return []


def _qemu(facts: ProxmoxFacts) -> list[Mapping[str, Any]]:
    return [v for v in facts.vms if v.get("type", "qemu") == "qemu"]


def _check_template(facts: ProxmoxFacts, plan: VmPlan) -> list[Finding]:
    template = next((v for v in _qemu(facts) if v.get("name") == plan.template
                     and v.get("template") == 1), None)
    if template is None:
        return [Finding("template", f"template {plan.template!r} not found: make the cloud-init "
                                    "template on the host (qm template VMID) or set "
                                    "proxmox.template")]
    config = facts.template_config or {}
    drives = [str(v) for k, v in config.items() if re.fullmatch(r"(ide|sata|scsi|virtio)\d+", k)]
    if not any("cloudinit" in d for d in drives):  # the volume is named vm-ID-cloudinit
        vmid = template.get("vmid")
        return [Finding("template", f"template {plan.template!r} ({vmid}) has no cloud-init "
                                    f"drive: add one on the host (qm set {vmid} --ide2 "
                                    f"{plan.storage}:cloudinit)")]
    return []


def _check_vmid(facts: ProxmoxFacts, plan: VmPlan) -> list[Finding]:
    same_name = [v for v in _qemu(facts) if v.get("name") == plan.name and v.get("template") != 1]
    if len(same_name) > 1:
        ids = ", ".join(str(v.get("vmid")) for v in same_name)
        return [Finding("vmid", f"several VMs are named {plan.name!r} ({ids}): rename or "
                                "remove the extra ones")]
    if plan.vmid is not None:
        holder = next((v for v in _qemu(facts) if v.get("vmid") == plan.vmid), None)
        if holder is not None and holder.get("name") != plan.name:
            return [Finding("vmid", f"VM id {plan.vmid} is taken by {holder.get('name')!r}: "
                                    "choose another vmid or leave it out")]
        if same_name and same_name[0].get("vmid") != plan.vmid:
            return [Finding("vmid", f"VM {plan.name!r} exists with id "
                                    f"{same_name[0].get('vmid')}, not {plan.vmid}: fix vmid "
                                    "or leave it out")]
    return []


def _check_gpu(facts: ProxmoxFacts, plan: VmPlan) -> list[Finding]:
    funcs = gpu_functions(facts.pci, plan.gpu_pci)
    if not funcs:
        displays = ", ".join(str(d.get("id")) for d in facts.pci
                             if str(d.get("class", "")).startswith("0x03")) or "none"
        return [Finding("gpu", f"GPU {plan.gpu_pci} is not on node {plan.node} (display "
                               f"devices there: {displays}): check the address with lspci -nn "
                               "on the host")]
    if int(funcs[0].get("iommugroup", -1)) < 0:
        return [Finding("iommu", f"IOMMU is off on node {plan.node}: {IOMMU_FIX}; then "
                                 f"{VFIO_FIX}")]
    strangers = iommu_strangers(facts.pci, plan.gpu_pci)
    if strangers:
        return [Finding("iommu", f"GPU {plan.gpu_pci} shares IOMMU group "
                                 f"{funcs[0].get('iommugroup')} with {', '.join(strangers)}: "
                                 "move the card to a slot wired to the CPU or enable ACS in the "
                                 "firmware; passthrough needs the group to itself")]
    return []


def _check_users(facts: ProxmoxFacts, plan: VmPlan, own: int | None) -> list[Finding]:
    names = {v.get("vmid"): v.get("name") for v in _qemu(facts)}
    users = []
    for vmid, config in sorted(facts.vm_configs.items()):
        if vmid == own:
            continue
        for key, value in config.items():
            if re.fullmatch(r"hostpci\d+", key) and hostpci_takes(
                    value, plan.gpu_pci, plan.gpu_mapping, facts.mappings, plan.node):
                users.append(f"{names.get(vmid, '?')} ({vmid}, {key})")
    if users:
        return [Finding("gpu", f"GPU {plan.gpu_pci} is already assigned to {', '.join(users)}: "
                               "remove that hostpci entry first; one GPU serves one VM")]
    return []


def _check_mapping(facts: ProxmoxFacts, plan: VmPlan) -> list[Finding]:
    mapping = next((m for m in facts.mappings if m.get("id") == plan.gpu_mapping), None)
    if mapping is None:
        if plan.create_mapping or not gpu_functions(facts.pci, plan.gpu_pci):
            return []
        entry = mapping_entry(facts.pci, plan.gpu_pci, plan.node)
        return [Finding("mapping", f"PCI resource mapping {plan.gpu_mapping!r} does not exist: "
                                   "create it (Datacenter > Resource Mappings, or pvesh create "
                                   f"/cluster/mapping/pci --id {plan.gpu_mapping} --map {entry})"
                                   " or let hlctl create it (create_mapping: true)")]
    paths = mapping_paths(mapping, plan.node)
    if full_pci(plan.gpu_pci) not in [full_pci(p) for p in paths]:
        shown = "; ".join(mapping.get("map", []) or []) or "no entries"
        return [Finding("mapping", f"PCI resource mapping {plan.gpu_mapping!r} does not point "
                                   f"at {full_pci(plan.gpu_pci)} on {plan.node} ({shown}): fix "
                                   "it in Datacenter > Resource Mappings or name another "
                                   "mapping")]
    return []


def _check_storage(facts: ProxmoxFacts, plan: VmPlan) -> list[Finding]:
    if facts.storage is None:
        return [Finding("storage", f"storage {plan.storage!r} is not on node {plan.node}: "
                                   "set proxmox.storage")]
    avail = int(facts.storage.get("avail", 0))
    if avail < plan.disk_gb * GIB:
        return [Finding("storage", f"storage {plan.storage!r} has {avail / GIB:.1f} GiB free, "
                                   f"the disk needs {plan.disk_gb} GiB: free space or choose "
                                   "another storage")]
    return []


def run_checks(facts: ProxmoxFacts, plan: VmPlan) -> PreflightResult:
    """Every preflight check for one VM; no I/O."""
    findings = _check_node(facts, plan)
    if findings:  # the rest reads the node's hardware and storage
        return PreflightResult(findings)
    findings += _check_template(facts, plan)
    findings += _check_vmid(facts, plan)
    mine = next((v for v in _qemu(facts) if v.get("name") == plan.name
                 and v.get("template") != 1), None)
    findings += _check_gpu(facts, plan)
    findings += _check_users(facts, plan, mine.get("vmid") if mine else None)
    findings += _check_mapping(facts, plan)
    if mine is None:
        findings += _check_storage(facts, plan)
    return PreflightResult(findings, vm_exists=mine is not None)


_TASK_HINTS = (
    (r"already in use by VMID", "another VM holds the GPU: stop it or remove its hostpci entry"),
    (r"iommu|IOMMU", IOMMU_FIX),
    (r"vfio|VFIO", VFIO_FIX),
    (r"Device or resource busy|nouveau|nvidia", BLACKLIST_FIX),
)


def explain_task_error(exitstatus: str) -> str:
    """A failed Proxmox task's exit status, with what to do on the host when it is known."""
    for pattern, hint in _TASK_HINTS:
        if re.search(pattern, exitstatus):
            return f"{exitstatus} ({hint})"
    return exitstatus
