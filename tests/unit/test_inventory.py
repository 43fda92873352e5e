"""The inventory reader: Ansible's YAML format, and one clear line for each kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from hlctl.errors import ConfigError, UsageError
from hlctl.inventory import find_inventory, load_inventory

GOOD = """\
all:
  vars:
    ansible_user: admin
  children:
    proxmox:
      hosts:
        pve01:
          ansible_host: 192.0.2.10
    gpu_hosts:
      vars:
        ansible_user: hlctl
        gpu_vendor: nvidia
      hosts:
        gpu01:
          ansible_host: 192.0.2.21
        gpu[02:03]:
      children:
        big_gpus:
          hosts:
            gpu01:
              gpu_vendor: nvidia-a6000
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hosts.yml"
    path.write_text(text)
    return path


def test_hosts_groups_and_variables(tmp_path: Path) -> None:
    inventory = load_inventory(_write(tmp_path, GOOD))
    assert sorted(inventory.hosts) == ["gpu01", "gpu02", "gpu03", "pve01"]
    gpu01 = inventory.hosts["gpu01"]
    assert set(gpu01.groups) == {"all", "gpu_hosts", "big_gpus"}
    assert gpu01.address == "192.0.2.21"
    # all < gpu_hosts < big_gpus (child) < host vars
    assert gpu01.vars["ansible_user"] == "hlctl"
    assert gpu01.vars["gpu_vendor"] == "nvidia-a6000"
    assert inventory.hosts["gpu02"].vars["gpu_vendor"] == "nvidia"
    assert inventory.hosts["gpu02"].address == "gpu02"
    assert inventory.hosts["pve01"].vars["ansible_user"] == "admin"
    assert [h.name for h in inventory.group("gpu_hosts")] == ["gpu01", "gpu02", "gpu03"]


def test_select_by_host_or_group_in_order(tmp_path: Path) -> None:
    inventory = load_inventory(_write(tmp_path, GOOD))
    assert [h.name for h in inventory.select(["gpu03", "big_gpus"])] == ["gpu03", "gpu01"]
    assert [h.name for h in inventory.select(["gpu01", "gpu01"])] == ["gpu01"]


def test_an_unknown_host_is_one_line_naming_the_known_ones(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    with pytest.raises(UsageError) as info:
        load_inventory(path).select(["gpu09"])
    assert str(info.value) == (f"unknown host 'gpu09': not in {path} "
                               "(hosts: gpu01, gpu02, gpu03, pve01)")


def test_a_missing_inventory_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_inventory(tmp_path / "nope.yml")
    assert "does not exist" in str(info.value) and "hlctl init" in str(info.value)


@pytest.mark.parametrize(("text", "fragment"), [
    ("all:\n  hosts: [gpu01]\n", "all.hosts: must be a mapping of host names"),
    ("all:\n  children:\n    gpu_hosts:\n      host:\n        gpu01:\n",
     "all.children.gpu_hosts: unknown key 'host'"),
    ("all:\n  hosts:\n    gpu01: 192.0.2.1\n", "all.hosts.gpu01: host variables must be a mapping"),
    ("all:\n  vars: [a]\n", "all.vars: must be a mapping"),
    ("- gpu01\n- gpu02\n", "(top level): must be a mapping of groups"),
    ("", "the inventory is empty"),
    ("all:\n  hosts: gpu01: x\n", "line 2, column 15: mapping values are not allowed here"),
])
def test_malformed_inventories_are_one_line(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_inventory(_write(tmp_path, text))
    message = str(info.value)
    assert fragment in message, message
    assert "\n" not in message


def test_where_the_inventory_is_looked_for(tmp_path: Path) -> None:
    assert find_inventory(Path("x.yml"), {"HLCTL_INVENTORY": "y.yml"}) == Path("x.yml")
    assert find_inventory(None, {"HLCTL_INVENTORY": "y.yml"}) == Path("y.yml")
    assert find_inventory(None, {}, cwd=tmp_path) == tmp_path / "inventory" / "hosts.yml"


def test_the_starter_inventory_reads(tmp_path: Path) -> None:
    starter = Path(__file__).parents[2] / "src" / "hlctl" / "templates" / "hosts.example.yml"
    inventory = load_inventory(starter)
    assert [h.name for h in inventory.group("gpu_hosts")] == ["gpu01"]
