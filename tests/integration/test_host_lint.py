"""ansible-lint (production profile) and ansible-playbook --syntax-check on the host roles.

Both are the real tools from the provision extra; the test skips only where they are not
installed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.ansible_tools import ansible_env, ansible_tool

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HOST_ROLES = ("nvidia_driver", "nvidia_container_toolkit", "docker", "model_storage",
              "hlctl_agent", "gpu_healthcheck")

pytestmark = pytest.mark.slow


def test_host_roles_and_playbook_pass_ansible_lint_production() -> None:
    lint = ansible_tool("ansible-lint")
    targets = [f"roles/{role}" for role in HOST_ROLES] + ["playbooks/gpu_host.yml"]
    proc = subprocess.run([lint, "--profile", "production", "--offline", "--nocolor",
                           *targets], cwd=REPO, env=ansible_env(), text=True, capture_output=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


def test_gpu_host_playbook_syntax() -> None:
    playbook = ansible_tool("ansible-playbook")
    inventory = REPO / "src/hlctl/templates/hosts.example.yml"
    proc = subprocess.run([playbook, "--syntax-check", "-i", str(inventory),
                           "playbooks/gpu_host.yml"], cwd=REPO, env=ansible_env(), text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_role_variable_is_documented_and_validated() -> None:
    """defaults/main.yml and meta/argument_specs.yml name the same variables, all prefixed."""
    import yaml

    for role in HOST_ROLES:
        base = REPO / "roles" / role
        defaults = yaml.safe_load((base / "defaults/main.yml").read_text()) or {}
        specs = yaml.safe_load((base / "meta/argument_specs.yml").read_text())
        options = specs["argument_specs"]["main"]["options"]
        assert set(defaults) == set(options), role
        assert all(name.startswith(f"{role}_") for name in options), role
        readme = (base / "README.md").read_text()
        missing = [name for name in options if f"`{name}`" not in readme]
        assert not missing, f"{role}/README.md does not document {missing}"
