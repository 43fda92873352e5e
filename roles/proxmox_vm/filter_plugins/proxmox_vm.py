"""Filters for the proxmox_vm role: compare a VM's Proxmox config with the wanted one.

The role talks to the API with ``uri``; deciding what differs needs Proxmox's value syntax
(``net0: virtio=MAC,bridge=vmbr0``, ``efidisk0: STORAGE:VOLUME,opt=...``, url-encoded SSH keys),
which is clearer in Python than in Jinja. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

_SIZE = re.compile(r"(?:^|,)size=(\d+)([KMGT])")
_UNIT_GIB = {"K": 1 / 2**20, "M": 1 / 1024, "G": 1, "T": 1024}


def _options(value: Any) -> dict[str, str]:
    """``virtio=AA:BB,bridge=vmbr0`` -> {"virtio": "AA:BB", "bridge": "vmbr0"}."""
    out: dict[str, str] = {}
    for part in str(value or "").split(","):
        if part:
            key, _, val = part.partition("=")
            out[key] = val
    return out


def pci_slot(address: str) -> str:
    """``01:00.0`` or ``0000:01:00`` -> ``0000:01:00`` (the slot, all functions)."""
    address = address.strip().lower()
    if address.count(":") == 1:
        address = "0000:" + address
    return address.split(".")[0]


def pci_functions(devices: list[dict[str, Any]], address: str) -> list[dict[str, Any]]:
    """The PCI functions that ``address`` names: one function, or every one of a slot."""
    address = address.strip().lower()
    full = ("0000:" + address) if address.count(":") == 1 else address
    if "." in full:
        return [d for d in devices if str(d.get("id", "")).lower() == full]
    return [d for d in devices if str(d.get("id", "")).lower().startswith(full + ".")]


def iommu_strangers(devices: list[dict[str, Any]], address: str) -> list[str]:
    """Devices sharing the GPU's IOMMU group that are not functions of the GPU's own slot."""
    funcs = pci_functions(devices, address)
    if not funcs:
        return []
    group = funcs[0].get("iommugroup", -1)
    slot = pci_slot(address)
    return sorted(str(d["id"]) for d in devices
                  if d.get("iommugroup") == group and not str(d["id"]).startswith(slot + "."))


def mapping_entry(devices: list[dict[str, Any]], address: str, node: str) -> str:
    """The ``map`` entry of a PCI resource mapping for this GPU on this node."""
    funcs = pci_functions(devices, address)
    first = funcs[0]
    vendor = str(first.get("vendor", "")).removeprefix("0x")
    device = str(first.get("device", "")).removeprefix("0x")
    path = address if address.count(":") == 2 else "0000:" + address
    return (f"node={node},path={path},id={vendor}:{device},"
            f"iommugroup={first.get('iommugroup')}")


def mapping_paths(mapping: dict[str, Any] | None, node: str) -> list[str]:
    """The PCI paths a mapping gives for ``node``."""
    paths = []
    for entry in (mapping or {}).get("map", []) or []:
        opts = _options(entry)
        if opts.get("node") == node and opts.get("path"):
            paths.append(opts["path"])
    return paths


def hostpci_users(configs: list[dict[str, Any]], address: str, mapping: str) -> list[str]:
    """Names (vmid) of VMs whose hostpciN takes this GPU by address or by our mapping.

    ``configs`` items are ``{"vmid": int, "name": str, "config": {...}}`` or the results of a
    looped ``uri`` task over ``/cluster/resources`` entries.
    """
    slot = pci_slot(address)
    users = []
    for item in configs:
        if "json" in item:  # a result of a looped uri task
            source = item.get("item") or {}
            item = {"vmid": source.get("vmid"), "name": source.get("name"),
                    "config": (item.get("json") or {}).get("data")}
        for key, value in (item.get("config") or {}).items():
            if not re.fullmatch(r"hostpci\d+", str(key)):
                continue
            first = str(value).split(",")[0]
            if first.startswith("mapping="):
                taken = first[len("mapping="):] == mapping
            else:
                taken = pci_slot(first.removeprefix("host=")) == slot
            if taken:
                users.append(f"{item.get('name')} ({item.get('vmid')}, {key})")
    return users


def disk_gib(value: Any) -> float:
    """The ``size=`` of a Proxmox disk string in GiB (0 when absent)."""
    match = _SIZE.search(str(value or ""))
    return int(match.group(1)) * _UNIT_GIB[match.group(2)] if match else 0


def encode_sshkeys(keys: list[str]) -> str:
    """Proxmox wants ``sshkeys`` url-encoded, spaces and newlines included."""
    return quote("\n".join(k.strip() for k in keys if k.strip()), safe="")


def config_changes(current: dict[str, Any], desired: dict[str, Any],
                   efi_storage: str) -> dict[str, Any]:
    """The keys to send so that ``current`` becomes ``desired``; {} when nothing differs.

    ``desired`` uses plain values except: ``net0`` as ``MODEL,bridge=BR[,tag=N]`` (the MAC
    Proxmox chose is kept), and ``efidisk0`` as ``{"efitype": "4m", "pre_enrolled_keys": 0}``.
    """
    changes: dict[str, Any] = {}
    for key, want in desired.items():
        have = current.get(key)
        if key == "efidisk0":
            opts = _options(have)
            if have is None:
                changes[key] = (f"{efi_storage}:1,efitype={want.get('efitype', '4m')},"
                                f"pre-enrolled-keys={int(bool(want.get('pre_enrolled_keys')))}")
            elif opts.get("pre-enrolled-keys", "0") != str(int(bool(
                    want.get("pre_enrolled_keys")))):
                raise ValueError(
                    "efidisk0 has pre-enrolled Secure Boot keys, which reject the unsigned "
                    "DKMS nvidia module: remove the EFI disk in the Proxmox UI (Hardware > EFI "
                    "Disk > Remove) and run again")
        elif re.fullmatch(r"net\d+", key):
            want_opts = _options(want)
            model = str(want).split(",")[0]
            have_opts = _options(have)
            have_model = next(iter(have_opts), "")
            differs = have is None or have_model != model or any(
                have_opts.get(k) != v for k, v in want_opts.items() if k != model)
            if differs:
                mac = have_opts.get(have_model, "") if have_model == model else ""
                rest = ",".join(f"{k}={v}" for k, v in want_opts.items() if k != model)
                changes[key] = f"{model}={mac},{rest}" if mac else f"{model},{rest}"
        elif want is None or want == "":
            continue
        elif str(have) != str(want):
            changes[key] = want
    return changes


COLD_KEYS = ("machine", "bios", "cpu", "cores", "sockets", "memory", "balloon", "efidisk0",
             "hostpci0", "ciuser", "sshkeys", "ipconfig0", "nameserver")


def needs_restart(changes: dict[str, Any]) -> bool:
    """Whether Proxmox keeps some of these changes pending until the VM restarts."""
    return any(key in COLD_KEYS for key in changes)


_TASK_HINTS = (
    (r"already in use by VMID", "another VM holds the GPU: stop it or remove its hostpci "
     "entry"),
    (r"iommu|IOMMU", "enable IOMMU on the Proxmox host: add intel_iommu=on (or amd_iommu=on) "
     "iommu=pt to the kernel command line, run update-grub or proxmox-boot-tool refresh, "
     "reboot"),
    (r"vfio|VFIO", "load the vfio modules on the host (vfio, vfio_iommu_type1, vfio_pci in "
     "/etc/modules), run update-initramfs -u -k all, reboot"),
    (r"Device or resource busy|nouveau|nvidia", "a host driver holds the GPU: blacklist "
     "nouveau and nvidia on the host (/etc/modprobe.d/blacklist-gpu.conf), bind the card to "
     "vfio-pci, update-initramfs -u -k all, reboot"),
)


def explain_task_error(exitstatus: Any) -> str:
    """A failed task's exit status with what to do about it on the host, when known."""
    text = str(exitstatus or "")
    for pattern, hint in _TASK_HINTS:
        if re.search(pattern, text):
            return f"{text} ({hint})"
    return text


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "proxmox_vm_pci_functions": pci_functions,
            "proxmox_vm_iommu_strangers": iommu_strangers,
            "proxmox_vm_mapping_entry": mapping_entry,
            "proxmox_vm_mapping_paths": mapping_paths,
            "proxmox_vm_hostpci_users": hostpci_users,
            "proxmox_vm_disk_gib": disk_gib,
            "proxmox_vm_encode_sshkeys": encode_sshkeys,
            "proxmox_vm_config_changes": config_changes,
            "proxmox_vm_needs_restart": needs_restart,
            "proxmox_vm_explain_task_error": explain_task_error,
        }
