"""Local `hlctl status`: it runs and says so plainly without a GPU, Docker or a config.

The Docker engine is the simulator in tests/fixtures/docker_engine_sim.py (no engine runs
here), reached through the real docker SDK over a unix socket.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hlctl.cli.main import cli
from hlctl.fleet.local_status import probe_docker
from tests.fixtures.docker_engine_sim import docker_engine
from tests.fixtures.nvml_sim import NvmlSim

CONTAINERS = [
    {"Id": "a" * 64, "Names": ["/llama-server"], "Image": "hlctl/llama-server:b4000-cuda12.1",
     "State": "running", "Status": "Up 2 hours (healthy)"},
    {"Id": "b" * 64, "Names": ["/router"], "Image": "hlctl/router:0.1.0",
     "State": "running", "Status": "Up 2 hours (healthy)"},
]


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """NVML without a driver (the simulator), also on a machine that has a GPU."""
    monkeypatch.setattr("hlctl.gpu.nvml.load_pynvml", lambda: NvmlSim("driver_not_loaded"))


def test_probe_docker_reads_the_engine(tmp_path: Path) -> None:
    sock = tmp_path / "docker.sock"
    with docker_engine(sock, CONTAINERS) as engine:
        status = probe_docker({"DOCKER_HOST": f"unix://{sock}"})
    assert status.reachable and status.version == "27.3.1"
    assert status.containers_running == 2
    assert "/containers/json" in engine.requests


def test_probe_docker_without_engine_says_so(tmp_path: Path) -> None:
    status = probe_docker({"DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    assert not status.reachable
    assert status.error == "no Docker engine is listening there"


def test_status_without_gpu_docker_or_config(tmp_path: Path, no_gpu: None,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"DOCKER_HOST": f"unix://{tmp_path}/none.sock", "XDG_CONFIG_HOME": str(tmp_path),
           "XDG_STATE_HOME": str(tmp_path / "state"), "XDG_DATA_HOME": str(tmp_path / "data"),
           "HLCTL_CONFIG": ""}
    result = CliRunner().invoke(cli, ["status", "--json"], env=env)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["schema"] == "hlctl.status/1"
    assert data["gpus"] == [] and "driver" in data["gpu_error"].lower()
    assert data["docker"]["reachable"] is False
    assert data["models_dir"]["exists"] is False
    assert data["config_source"] is None
    human = CliRunner().invoke(cli, ["status"], env=env)
    assert human.exit_code == 0
    for phrase in ("none readable", "not reachable", "does not exist",
                   "none found, defaults used", "none recorded"):
        assert phrase in human.output, phrase


def test_status_with_engine_models_and_last_health(tmp_path: Path, no_gpu: None) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "m.gguf").write_bytes(b"GGUF")
    config = tmp_path / "hlctl.yaml"
    config.write_text(f"models_dir: {models}\nstate_dir: {tmp_path / 'state'}\n")
    snapshot = Path(__file__).parents[1] / "fixtures" / "snapshots" / "thermal_slowdown.json"
    sock = tmp_path / "docker.sock"
    env = {"DOCKER_HOST": f"unix://{sock}"}
    runner = CliRunner()
    assert runner.invoke(cli, ["--config", str(config), "health", "--from", str(snapshot)],
                         env=env).exit_code == 2
    with docker_engine(sock, CONTAINERS):
        result = runner.invoke(cli, ["--config", str(config), "status", "--json"], env=env)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["docker"] == {"reachable": True, "host": f"unix://{sock}",
                              "version": "27.3.1", "containers_running": 2, "error": None}
    assert data["models_dir"]["gguf_files"] == 1 and data["models_dir"]["free_bytes"] > 0
    assert data["last_health"]["state"] == "critical"
    assert data["gpus"] == [] and data["gpu_error"]
    assert data["last_health"]["source"] == str(snapshot)


def test_status_reads_gpus_and_leaves_xids_to_the_health_timer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hlctl.gpu.nvml.load_pynvml", lambda: NvmlSim("thermal_slowdown"))
    config = tmp_path / "hlctl.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nhealth:\n  xid:\n"
                      "    kernel_log: false\n")
    result = CliRunner().invoke(cli, ["--config", str(config), "status", "--json"],
                                env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock"})
    assert result.exit_code == 0, result.output
    (gpu,) = json.loads(result.output)["gpus"]
    assert gpu["health"] == "critical" and gpu["temperature_c"] is not None
    assert not (tmp_path / "state" / "xid.cursor").exists()
