"""ansible-lint (production profile) on the proxmox_vm role, and a syntax check of every playbook.

Both run the real tools from this venv (the provision extra); they skip when it is absent.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.ansible_tools import ansible_env

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PLAYBOOKS = sorted((REPO / "playbooks").glob("*.yml"))
INVENTORY = REPO / "src" / "hlctl" / "templates" / "hosts.example.yml"


@pytest.mark.slow
@pytest.mark.skipif(not (BIN / "ansible-lint").exists(), reason="ansible-lint not installed")
def test_proxmox_vm_role_and_playbook_pass_the_production_profile() -> None:
    result = subprocess.run(
        [str(BIN / "ansible-lint"), "--offline", "--profile", "production", "--nocolor",
         "roles/proxmox_vm", "playbooks/vm.yml"],
        cwd=REPO, env=ansible_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in result.stderr + result.stdout


@pytest.mark.skipif(not (BIN / "ansible-playbook").exists(),
                    reason="ansible-playbook not installed")
@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=[p.name for p in PLAYBOOKS])
def test_every_playbook_passes_the_syntax_check(playbook: Path) -> None:
    result = subprocess.run(
        [str(BIN / "ansible-playbook"), "--syntax-check", "-i", str(INVENTORY), str(playbook)],
        cwd=REPO, env=ansible_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def test_vm_playbook_is_among_them() -> None:
    assert REPO / "playbooks" / "vm.yml" in PLAYBOOKS
