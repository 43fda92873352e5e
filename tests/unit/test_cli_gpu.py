"""`hlctl gpu info` through the click command, with the NVML simulator as pynvml.

The seam is ``hlctl.gpu.nvml.load_pynvml``, the one place pynvml is imported: replacing it
sends every NVML call of the command to tests/fixtures/nvml_sim.py. The kernel log is swapped
through ``hlctl.cli.gpu.xid_source_for``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import hlctl.cli.gpu as gpu_cli
import hlctl.gpu.nvml as nvml
from hlctl.cli.main import cli
from hlctl.gpu.nvml import read_snapshot
from hlctl.gpu.snapshot import SCHEMA, snapshot_from_dict
from hlctl.gpu.xid import KernelXid, StaticXidSource
from tests.fixtures.nvml_sim import NvmlSim, load_scenario

XIDS = [KernelXid("0000:41:00.0", 13, "2026-11-29T00:59:30+00:00")]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """No config file anywhere, state under tmp_path."""
    monkeypatch.chdir(tmp_path)
    return {"HLCTL_CONFIG": "", "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
            "XDG_STATE_HOME": str(tmp_path / "state"), "COLUMNS": "160"}


def use_scenario(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(nvml, "load_pynvml", lambda: NvmlSim(name))
    monkeypatch.setattr(gpu_cli, "xid_source_for", lambda state_dir, kernel_log:
                        StaticXidSource(XIDS if kernel_log else []))


def test_json_is_exactly_the_snapshot_contract(env: dict[str, str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    use_scenario(monkeypatch, "two_gpus")
    result = CliRunner().invoke(cli, ["gpu", "info", "--json"], env=env)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    expected = read_snapshot(nvml=NvmlSim("two_gpus"), xid_source=StaticXidSource(XIDS),
                             host=data["host"]).to_dict()
    data.pop("taken_at"), expected.pop("taken_at")
    assert data == expected
    assert data["schema"] == SCHEMA
    assert data["gpus"][1]["xid_events"] == [{"xid": 13, "at": "2026-11-29T00:59:30+00:00"}]


def test_json_round_trips_through_validation(env: dict[str, str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    use_scenario(monkeypatch, "healthy_3090")
    result = CliRunner().invoke(cli, ["gpu", "info", "--json"], env=env)
    snapshot = snapshot_from_dict(json.loads(result.output))
    assert snapshot.gpus[0].name == "NVIDIA GeForce RTX 3090"


def test_human_table_shows_na(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    use_scenario(monkeypatch, "geforce_na")
    result = CliRunner().invoke(cli, ["gpu", "info"], env=env)
    assert result.exit_code == 0, result.output
    assert "NVIDIA GeForce RTX 3090" in result.output
    assert "70 (n/a / n/a)" in result.output  # temperature without thresholds
    assert "CUDA 12.1" in result.output


def test_lost_gpu_in_table(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    use_scenario(monkeypatch, "lost")
    result = CliRunner().invoke(cli, ["gpu", "info"], env=env)
    assert result.exit_code == 0
    assert "LOST" in result.output and "0000:02:00.0" in result.output


@pytest.mark.parametrize(("name", "kind"), [("nvml_failed", "no_driver"),
                                            ("driver_mismatch", "driver_mismatch")])
def test_nvml_failure_exits_1_with_one_line(env: dict[str, str], name: str, kind: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    use_scenario(monkeypatch, name)
    human = CliRunner().invoke(cli, ["gpu", "info"], env=env)
    assert human.exit_code == 1
    assert human.output.count("\n") == 1 and f"({kind})" in human.output
    assert "Traceback" not in human.output
    as_json = CliRunner().invoke(cli, ["gpu", "info", "--json"], env=env)
    assert as_json.exit_code == 1
    assert json.loads(as_json.output)["error_kind"] == kind


def test_broken_config_warns_and_still_reads(env: dict[str, str], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    use_scenario(monkeypatch, "healthy_3090")
    (tmp_path / "hlctl.yaml").write_text("health: [not, a, mapping]\n")
    result = CliRunner().invoke(cli, ["gpu", "info", "--json"], env=env)
    assert result.exit_code == 0
    assert json.loads(result.stdout)["gpus"][0]["index"] == 0
    assert "warning: ignoring the lab config" in result.stderr


def test_kernel_log_off_in_config_reads_no_xids(env: dict[str, str], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    use_scenario(monkeypatch, "two_gpus")
    (tmp_path / "hlctl.yaml").write_text("health:\n  xid:\n    kernel_log: false\n")
    result = CliRunner().invoke(cli, ["gpu", "info", "--json"], env=env)
    assert json.loads(result.stdout)["gpus"][1]["xid_events"] == []


def test_gpu_modules_do_not_import_pynvml_until_used() -> None:
    code = ("import sys, hlctl.cli.gpu, hlctl.gpu.nvml, hlctl.gpu.xid; "
            "print('pynvml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_watch_prints_nvml_xid_events(env: dict[str, str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = load_scenario("two_gpus")
    scenario["events"] = [{"gpu": 1, "xid": 79}, {"gpu": 0, "xid": 13}]
    monkeypatch.setattr(nvml, "load_pynvml", lambda: NvmlSim(scenario))
    result = CliRunner().invoke(cli, ["gpu", "watch", "--json", "--count", "2"], env=env)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["gpu"], e["xid"]) for e in lines] == [(1, 79), (0, 13)]


def test_watch_times_out_quietly(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvml, "load_pynvml", lambda: NvmlSim("healthy_3090"))
    result = CliRunner().invoke(cli, ["gpu", "watch", "--timeout", "0.05"], env=env)
    assert result.exit_code == 0 and result.stdout == ""


def test_watch_without_driver_is_one_line(env: dict[str, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvml, "load_pynvml", lambda: NvmlSim("driver_mismatch"))
    result = CliRunner().invoke(cli, ["gpu", "watch"], env=env)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: NVML could not start (driver_mismatch)")
    assert result.stderr.count("\n") == 1
