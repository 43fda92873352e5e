"""ansible-lint (production profile) and --syntax-check on the llm_stack role and stack.yml,
and every role variable documented (defaults, argument specs, README).

The real tools from the provision extra; skips only where they are not installed. The role
itself cannot run here: no Docker engine (see roles/llm_stack/README.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.ansible_tools import ansible_env, ansible_tool

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ROLE = REPO / "roles" / "llm_stack"


@pytest.mark.slow
def test_llm_stack_role_and_playbook_pass_ansible_lint_production() -> None:
    proc = subprocess.run([ansible_tool("ansible-lint"), "--profile", "production", "--offline",
                           "--nocolor", "roles/llm_stack", "playbooks/stack.yml"], cwd=REPO,
                          env=ansible_env(), text=True, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


def test_stack_playbook_syntax() -> None:
    proc = subprocess.run([ansible_tool("ansible-playbook"), "--syntax-check", "-i",
                           str(REPO / "src/hlctl/templates/hosts.example.yml"),
                           "playbooks/stack.yml"], cwd=REPO, env=ansible_env(), text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_llm_stack_variable_is_documented_and_validated() -> None:
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    options = yaml.safe_load((ROLE / "meta/argument_specs.yml").read_text()
                             )["argument_specs"]["main"]["options"]
    assert set(defaults) == set(options)
    assert all(name.startswith("llm_stack_") for name in options)
    for name, spec in options.items():
        assert spec.get("default") == defaults[name], name
    readme = (ROLE / "README.md").read_text()
    assert [n for n in options if f"`{n}`" not in readme] == []


def test_secrets_are_written_without_logging() -> None:
    tasks = yaml.safe_load((ROLE / "tasks/secrets.yml").read_text())
    writer = next(t for t in tasks if "copy" in str(t))
    assert writer["no_log"] is True and writer["ansible.builtin.copy"]["mode"] == "0600"
