"""`hlctl up|down|restart|logs` through the CLI: dry run, bad input, and the remote form.

The remote form goes through the real fleet transport: one host with
``ansible_connection: local`` (the transport runs the command here, as it would over SSH) and
one at a closed port on 127.0.0.1 (real ssh, refused: unreachable). No Docker engine runs
here, so only --dry-run reaches the end of `up`.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from hlctl.cli.main import LAZY_COMMANDS, cli
from hlctl.models.lock import write_lock
from tests.fixtures.compose_env import GEMMA_FILE, GEMMA_REPO, gemma_lock
from tests.fixtures.llama_build import free_port

REPO = Path(__file__).resolve().parents[2]
# What the lead registers in cli/main.py (added here while it is not there yet).
STACK_COMMANDS = {
    "up": ("hlctl.cli.stack:up", "Start llama-server and the router, here or on hosts."),
    "down": ("hlctl.cli.stack:down", "Stop the llama-server + router stack."),
    "restart": ("hlctl.cli.stack:restart", "Recreate the stack's containers."),
    "logs": ("hlctl.cli.stack:logs", "Print a stack service's logs, here or on a host."),
}
ENTRY = f"""#!{sys.executable}
from hlctl.cli.main import LAZY_COMMANDS, main
for name, spec in {STACK_COMMANDS!r}.items():
    LAZY_COMMANDS.setdefault(name, spec)
main()
"""


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, spec in STACK_COMMANDS.items():
        monkeypatch.setitem(LAZY_COMMANDS, name, LAZY_COMMANDS.get(name, spec))


@pytest.fixture
def lab(tmp_path: Path) -> dict[str, str]:
    """A lab config, models.lock beside it, a compose/ folder; the env that points at them."""
    project = tmp_path / "compose"
    shutil.copytree(REPO / "compose", project)
    models = tmp_path / "models"
    (models / GEMMA_REPO).mkdir(parents=True)
    (models / GEMMA_REPO / GEMMA_FILE).write_bytes(b"not read: -ngl is configured")
    config = tmp_path / "hlctl.yaml"
    config.write_text(f"models_dir: {models}\nstate_dir: {tmp_path / 'state'}\n")
    write_lock(tmp_path / "models.lock", gemma_lock())
    return {"HLCTL_CONFIG": str(config), "HLCTL_STACK__PROJECT_DIR": str(project),
            "HLCTL_STACK__N_GPU_LAYERS": "7", "HLCTL_STACK__CTX": "4096"}


def run(args: list[str], env: dict[str, str]) -> click.testing.Result:
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


def test_dry_run_json_shows_the_exact_command(lab: dict[str, str]) -> None:
    result = run(["up", "--dry-run", "--json", "--image-tag", "b11400-cuda12.1.1-sm86"], lab)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["dry_run"] is True and data["n_gpu_layers"] == 7 and data["ctx"] == 4096
    assert data["image"] == "hlctl/llama-server-cuda:b11400-cuda12.1.1-sm86"
    argv = data["llama_command"]
    assert argv[:3] == ["/app/llama-server", "--model", f"/models/{GEMMA_REPO}/{GEMMA_FILE}"]
    assert not Path(data["env_file"]).exists()  # a dry run writes nothing


def test_dry_run_human_output(lab: dict[str, str]) -> None:
    result = run(["up", "--dry-run"], lab)
    assert result.exit_code == 0, result.output
    assert "-ngl 7 from config" in result.stdout and "llama-server: /app/llama-server" in \
        result.stdout


@pytest.mark.parametrize(("args", "extra_env", "message"), [
    (["up", "--dry-run", "--image-tag", "bad tag"], {}, "not a valid image tag"),
    (["up", "gpu01", "--all"], {}, "give host names or --all, not both"),
    (["up", "--dry-run"], {"HLCTL_STACK__CUDA_VERSION": "12"}, "stack.cuda_version"),
    (["down"], {}, "never brought up"),
    (["up", "--dry-run"], {"HLCTL_STACK__PROJECT_DIR": "/nonexistent"}, "not installed"),
])
def test_bad_input_is_one_line_and_nonzero(lab: dict[str, str], args: list[str],
                                           extra_env: dict[str, str], message: str) -> None:
    result = run(args, {**lab, **extra_env})
    assert result.exit_code in (1, 2)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_logs_rejects_an_unknown_service(lab: dict[str, str]) -> None:
    result = run(["logs", "ollama"], lab)
    assert result.exit_code == 2 and "ollama" in result.stderr


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_remote_up_runs_on_each_host_and_reports_the_unreachable(lab: dict[str, str],
                                                                 tmp_path: Path) -> None:
    entry = tmp_path / "hlctl-entry"
    entry.write_text(ENTRY)
    entry.chmod(0o755)
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(f"""
all:
  children:
    gpu_hosts:
      hosts:
        here: {{ansible_connection: local, hlctl_bin: "{entry}"}}
        gone: {{ansible_host: 127.0.0.1, ansible_port: {free_port()},
                ansible_user: nobody}}
""")
    result = run(["up", "--all", "--dry-run", "--json", "-i", str(inventory)], lab)
    assert result.exit_code == 1, result.output  # one host failed
    hosts = {h["host"]: h for h in json.loads(result.stdout)["hosts"]}
    assert hosts["here"]["ok"] and hosts["here"]["result"]["dry_run"] is True
    assert hosts["here"]["result"]["n_gpu_layers"] == 7
    assert not hosts["gone"]["ok"] and not hosts["gone"]["reachable"]
    assert hosts["gone"]["message"]


def test_dry_run_env_text_is_what_up_writes(lab: dict[str, str], tmp_path: Path) -> None:
    """The llm_stack role copies env_text; `hlctl up` then finds the same bytes (no churn)."""
    from hlctl.stack.envfile import write_env
    from hlctl.stack.interpolate import parse_env_text

    data = json.loads(run(["up", "--dry-run", "--json"], lab).stdout)
    target = tmp_path / "role-wrote.env"
    target.write_text(data["env_text"])
    target.chmod(0o600)
    assert parse_env_text(data["env_text"]) == data["env"]
    assert write_env(target, data["env"]) is False
