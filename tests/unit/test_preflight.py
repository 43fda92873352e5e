"""Preflight checks over Proxmox API facts, and the provision config they start from."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from hlctl.errors import ConfigError
from hlctl.provision.preflight import (
    ProxmoxFacts,
    VmPlan,
    explain_task_error,
    mapping_entry,
    run_checks,
)
from hlctl.provision.settings import parse_provision_config, role_vars

GIB = 2**30


def _dev(addr: str, group: int, cls: str = "0x030000", vendor: str = "0x10de",
         device: str = "0x2204") -> dict[str, Any]:
    return {"id": addr, "iommugroup": group, "class": cls, "vendor": vendor, "device": device}


PCI = [_dev("0000:00:00.0", 0, "0x060000", "0x8086", "0x9b33"),
       _dev("0000:00:01.0", 1, "0x060400", "0x8086", "0x1901"),
       _dev("0000:01:00.0", 12),
       _dev("0000:01:00.1", 12, "0x040300", "0x10de", "0x1aef")]
TEMPLATE = {"vmid": 9000, "name": "debian-12-cloudinit", "node": "pve", "template": 1,
            "type": "qemu"}
FACTS = ProxmoxFacts(
    nodes=[{"node": "pve", "status": "online"}],
    vms=[TEMPLATE],
    template_config={"name": "debian-12-cloudinit", "scsi0": "local-lvm:base-9000-disk-0,size=2G",
                     "ide2": "local-lvm:vm-9000-cloudinit,media=cdrom"},
    pci=PCI, vm_configs={}, mappings=[],
    storage={"avail": 400 * GIB, "total": 500 * GIB})
PLAN = VmPlan(name="gpu01", node="pve", template="debian-12-cloudinit", storage="local-lvm",
              gpu_pci="0000:01:00", gpu_mapping="gpu01-gpu", disk_gb=64)


def _messages(facts: ProxmoxFacts = FACTS, plan: VmPlan = PLAN) -> list[str]:
    return [f.message for f in run_checks(facts, plan).findings]


def test_a_good_host_passes() -> None:
    result = run_checks(FACTS, PLAN)
    assert result.ok and not result.vm_exists


@pytest.mark.parametrize(("facts", "plan", "expected"), [
    (replace(FACTS, nodes=[{"node": "pve2", "status": "online"}]), PLAN,
     ["node 'pve' is not in the cluster (nodes: pve2)", "set proxmox.node"]),
    (replace(FACTS, nodes=[{"node": "pve", "status": "offline"}]), PLAN,
     ["node 'pve' is offline"]),
    (replace(FACTS, vms=[]), PLAN,
     ["template 'debian-12-cloudinit' not found", "qm template"]),
    # The template's name may say cloudinit; only a drive counts.
    (replace(FACTS, template_config={"name": "debian-12-cloudinit",
                                     "scsi0": "local-lvm:base-9000-disk-0"}), PLAN,
     ["has no cloud-init drive", "qm set 9000 --ide2 local-lvm:cloudinit"]),
    (replace(FACTS, vms=[TEMPLATE, {"vmid": 120, "name": "nas", "node": "pve", "type": "qemu",
                                    "template": 0}]),
     replace(PLAN, vmid=120), ["VM id 120 is taken by 'nas'"]),
    (FACTS, replace(PLAN, gpu_pci="0000:02:00"),
     ["GPU 0000:02:00 is not on node pve", "display devices there: 0000:01:00.0",
      "lspci -nn"]),
    (replace(FACTS, pci=[{**d, "iommugroup": -1} for d in PCI]), PLAN,
     ["IOMMU is off on node pve", "intel_iommu=on", "amd_iommu=on", "vfio_pci",
      "update-initramfs"]),
    (replace(FACTS, pci=[*PCI, _dev("0000:02:00.0", 12, "0x010802", "0x144d", "0xa808")]),
     PLAN, ["shares IOMMU group 12 with 0000:02:00.0", "ACS"]),
    (replace(FACTS, storage={"avail": 10 * GIB}), PLAN,
     ["storage 'local-lvm' has 10.0 GiB free, the disk needs 64 GiB"]),
    (replace(FACTS, storage=None), PLAN, ["storage 'local-lvm' is not on node pve"]),
    (FACTS, replace(PLAN, create_mapping=False),
     ["PCI resource mapping 'gpu01-gpu' does not exist",
      "pvesh create /cluster/mapping/pci --id gpu01-gpu --map "
      "node=pve,path=0000:01:00,id=10de:2204,iommugroup=12"]),
    (replace(FACTS, mappings=[{"id": "gpu01-gpu", "map": ["node=pve,path=0000:03:00"]}]), PLAN,
     ["PCI resource mapping 'gpu01-gpu' does not point at 0000:01:00 on pve"]),
])
def test_each_problem_says_what_to_fix(facts: ProxmoxFacts, plan: VmPlan,
                                       expected: list[str]) -> None:
    messages = _messages(facts, plan)
    assert len(messages) == 1, messages
    for fragment in expected:
        assert fragment in messages[0]


def _with_vm(config: dict[str, Any], mappings: list[dict[str, Any]] | None = None
             ) -> ProxmoxFacts:
    other = {"vmid": 105, "name": "old-gpu", "node": "pve", "type": "qemu", "template": 0}
    return replace(FACTS, vms=[TEMPLATE, other], vm_configs={105: config},
                   mappings=mappings or [])


@pytest.mark.parametrize("config", [
    {"hostpci0": "0000:01:00,pcie=1"},
    {"hostpci1": "host=01:00.0,x-vga=1"},
    {"hostpci0": "mapping=gpu01-gpu,pcie=1"},
    {"hostpci0": "mapping=card,pcie=1"},  # another mapping naming the same slot
])
def test_a_gpu_another_vm_holds_is_refused(config: dict[str, Any]) -> None:
    facts = _with_vm(config, [{"id": "card", "map": ["node=pve,path=0000:01:00.0"]}])
    messages = _messages(facts)
    assert len(messages) == 1
    assert "already assigned to old-gpu (105, hostpci" in messages[0]


def test_other_devices_on_other_vms_are_fine() -> None:
    assert _messages(_with_vm({"hostpci0": "0000:02:00,pcie=1", "net0": "virtio"})) == []


def test_the_vm_itself_may_hold_its_gpu_on_a_rerun() -> None:
    mine = {"vmid": 100, "name": "gpu01", "node": "pve", "type": "qemu", "template": 0}
    facts = replace(FACTS, vms=[TEMPLATE, mine],
                    vm_configs={100: {"hostpci0": "mapping=gpu01-gpu,pcie=1"}},
                    mappings=[{"id": "gpu01-gpu", "map": ["node=pve,path=0000:01:00"]}],
                    storage={"avail": 0})  # an existing VM needs no new space
    result = run_checks(facts, PLAN)
    assert result.ok and result.vm_exists


def test_every_problem_is_reported_in_one_run() -> None:
    facts = replace(FACTS, vms=[], storage={"avail": 0},
                    pci=[{**d, "iommugroup": -1} for d in PCI])
    checks = [f.check for f in run_checks(facts, PLAN).findings]
    assert checks == ["template", "iommu", "storage"]


def test_a_single_function_address_and_short_form() -> None:
    assert run_checks(FACTS, replace(PLAN, gpu_pci="01:00.0")).ok
    assert mapping_entry(PCI, "01:00.0", "pve") == \
        "node=pve,path=0000:01:00.0,id=10de:2204,iommugroup=12"


@pytest.mark.parametrize(("status", "hint"), [
    ("PCI device '0000:01:00.0' already in use by VMID '105'", "another VM holds the GPU"),
    ("Cannot open iommu_group: No such file or directory", "intel_iommu=on"),
    ("vfio 0000:01:00.0: failed to open /dev/vfio/12", "vfio_iommu_type1"),
    ("Device or resource busy", "blacklist nouveau and nvidia"),
])
def test_failed_task_messages_gain_a_host_fix(status: str, hint: str) -> None:
    text = explain_task_error(status)
    assert text.startswith(status) and hint in text


def test_unknown_task_errors_pass_through() -> None:
    assert explain_task_error("disk full") == "disk full"


# --- the provision config that preflight and the role start from ---------------------------

GOOD = {"proxmox": {"endpoint": "https://pve.lan:8006", "token_id": "hlctl@pve!provision",
                    "token_secret": {"env": "PVE_TOKEN"}},
        "vms": {"gpu01": {"gpu_pci": "0000:01:00", "ip": "192.168.1.50/24",
                          "gateway": "192.168.1.1",
                          "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 me@desk"]}}}


def test_the_config_becomes_role_variables_without_the_secret() -> None:
    config = parse_provision_config(GOOD)
    assert config.proxmox is not None
    variables = role_vars(config.proxmox, "gpu01", config.vms["gpu01"])
    assert variables["proxmox_vm_api_host"] == "pve.lan"
    assert variables["proxmox_vm_api_port"] == 8006
    assert variables["proxmox_vm_gpu_mapping"] == "gpu01-gpu"
    assert variables["proxmox_vm_ip"] == "192.168.1.50/24"
    assert not any("secret" in key for key in variables)


@pytest.mark.parametrize(("patch", "fragment"), [
    ({"proxmox": {**GOOD["proxmox"], "token_secret": "abc"}},
     "proxmox.token_secret: secrets are never written inline"),
    ({"proxmox": {**GOOD["proxmox"], "token_id": "hlctl-provision"}}, "proxmox.token_id"),
    ({"proxmox": {**GOOD["proxmox"], "endpoint": "http://pve:8006"}}, "proxmox.endpoint"),
    ({"vms": {"gpu01": {"gpu_pci": "GPU0"}}}, "vms.gpu01.gpu_pci"),
    ({"vms": {"gpu01": {"gpu_pci": "01:00", "ip": "192.168.1.50"}}}, "needs a prefix length"),
    ({"vms": {"gpu01": {"gpu_pci": "01:00", "gateway": "192.168.1.1"}}}, "ip is dhcp"),
    ({"vms": {"gpu01": {"gpu_pci": "01:00", "ssh_keys": ["hunter2"]}}}, "not an SSH public key"),
    ({"vms": {"gpu01": {"gpu_pci": "01:00", "cpus": 4}}}, "vms.gpu01.cpus: unknown key"),
    ({"proxmox": None}, "vms are configured but the proxmox section is missing"),
])
def test_bad_provision_config_is_one_line_with_the_key_path(patch: dict[str, Any],
                                                             fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_provision_config({**GOOD, **patch})
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_the_example_snippet_validates() -> None:
    """The commented-out provisioning block of hlctl.example.yaml, uncommented, is valid."""
    import re

    import yaml

    from hlctl.config import build_config
    from hlctl.templates import example_config

    text = example_config()
    block = text[text.index("# --- Provisioning"):]
    uncommented = "\n".join(line[2:] if re.match(r"^# (\s|[a-z_]+:)", line) else line
                             for line in block.splitlines())
    data = yaml.safe_load(uncommented)
    build_config({**yaml.safe_load(text), **data})  # the whole lab config accepts it
    config = parse_provision_config(data)
    assert config.proxmox is not None and config.proxmox.api_url == \
        "https://pve.lan:8006/api2/json"
    assert config.vms["gpu01"].gpu_pci == "0000:01:00"
