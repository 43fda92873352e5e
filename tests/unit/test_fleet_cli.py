"""The fleet commands end to end without SSH or root: `status|health --all` and
`models pull --all` from the controller (in process), against hosts with
``ansible_connection: local`` whose ``hlctl_bin`` is a wrapper running this checkout's real
hlctl with a host config of its own, plus one host that refuses SSH (loopback port 1).
The real-SSH path over booted hosts is tests/integration/test_fleet_status.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from hlctl.cli.main import cli

SNAPSHOTS = Path(__file__).parents[1] / "fixtures" / "snapshots"
HLCTL = Path(sys.executable).parent / "hlctl"


def _host(tmp_path: Path, name: str, snapshot: str) -> dict[str, str]:
    home = tmp_path / name
    home.mkdir()
    (home / "hlctl.yaml").write_text(f"models_dir: {home / 'models'}\n"
                                     f"state_dir: {home / 'state'}\n")
    wrapper = home / "hlctl"
    # health evaluates the host's recorded snapshot (no GPU here); status runs as it is.
    wrapper.write_text(
        f"#!/bin/sh\nexport HLCTL_CONFIG={home / 'hlctl.yaml'} "
        f"DOCKER_HOST=unix://{home / 'no.sock'}\n"
        f"if [ \"$1\" = health ]; then shift; "
        f"exec {HLCTL} health --from {SNAPSHOTS / snapshot} \"$@\"; fi\n"
        f"exec {HLCTL} \"$@\"\n")
    wrapper.chmod(0o755)
    return {"ansible_connection": "local", "hlctl_bin": str(wrapper)}


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    hosts = {"hot": _host(tmp_path, "hot", "thermal_slowdown.json"),
             "fine": _host(tmp_path, "fine", "healthy_3090.json"),
             "gone": {"ansible_host": "127.0.0.1", "ansible_port": 1}}
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump({"all": {"children": {"gpu_hosts": {"hosts": hosts}}}},
                                  sort_keys=False))
    return path


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env={"HLCTL_CONFIG": ""})
    return result.exit_code, result.stdout, result.stderr


def test_health_then_status_across_the_lab(inventory: Path) -> None:
    code, out, _ = _run("health", "--all", "--json", "-i", str(inventory), "--timeout", "20")
    data = json.loads(out)
    assert [(h["host"], h["exit_code"]) for h in data["hosts"]] == [
        ("hot", 2), ("fine", 0), ("gone", 3)]
    assert code == 2 == data["exit_code"]  # CRITICAL beats UNKNOWN (the refused host)
    code, out, _ = _run("health", "fine", "gone", "-i", str(inventory))
    assert code == 3 and "unreachable" in out and "lab: UNKNOWN" in out

    code, out, _ = _run("status", "--all", "--json", "-i", str(inventory), "--timeout", "20")
    rows = {r["host"]: r for r in json.loads(out)}
    assert code == 1  # one host unreachable
    assert rows["hot"]["health"] == "critical" and rows["fine"]["health"] == "ok"
    assert rows["hot"]["health_stale"] is False
    assert rows["gone"]["reachable"] is False and "refused" in rows["gone"]["error"].lower()
    code, out, _ = _run("status", "hot", "fine", "-i", str(inventory))
    assert code == 0 and "critical" in out and "fine" in out


def test_fleet_usage_errors_are_one_line_exit_2(inventory: Path, tmp_path: Path) -> None:
    for args, message in [
        (["status", "--all", "-i", str(tmp_path / "none.yml")], "does not exist"),
        (["status", "nope", "-i", str(inventory)], "unknown host 'nope'"),
        (["status", "hot", "--all", "-i", str(inventory)], "not both"),
        (["health", "--all", "--from", "x.json", "-i", str(inventory)], "act on this machine"),
        (["models", "pull", "o/m", "--all", "--dir", "/tmp", "-i", str(inventory)],
         "--dir acts on this machine"),
    ]:
        code, _, err = _run(*args)
        assert code == 2 and message in err, (args, err)
        assert "Traceback" not in err
