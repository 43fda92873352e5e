"""`hlctl health --from` end to end through the installed console script: exit codes, output.

The recorded snapshots come from tests/fixtures/make_snapshots.py (the NVML simulator).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SNAPSHOTS = Path(__file__).parents[1] / "fixtures" / "snapshots"
HLCTL = str(Path(sys.executable).with_name("hlctl"))

EXPECTED = {
    "healthy_3090": 0, "geforce_na": 0, "pcie_gen_idle": 0,
    "two_gpus": 1,  # GPU 1 saw XID 13
    "driver_530_no_events_api": 2,  # throttle-reasons fallback reads hw_thermal_slowdown
    "hot": 1, "sw_thermal_slowdown": 1, "remap_pending": 1, "pcie_x8": 1,
    "fan_stopped_hot": 1, "power_over_limit": 1,
    "thermal_slowdown": 2, "ecc": 2, "remap_failure": 2, "xid79": 2, "xid79_readable": 2,
    "lost": 2, "old_driver": 2, "driver_mismatch": 2,
    "nvml_failed": 3, "driver_not_loaded": 3, "init_no_permission": 3, "no_gpu": 3,
    "bad_not_json": 3, "bad_schema": 3, "bad_absurd": 3, "bad_used_over_total": 3,
}


def hlctl(*args: str, tmp: Path, **kwargs) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp / "state"), "HLCTL_CONFIG": "",
           "XDG_CONFIG_HOME": str(tmp)}
    env.pop("HLCTL_DEBUG", None)
    return subprocess.run([HLCTL, *args], capture_output=True, text=True, env=env,
                          cwd=tmp, timeout=60, **kwargs)


def test_every_recorded_snapshot_has_an_expected_code() -> None:
    assert {p.stem for p in SNAPSHOTS.glob("*.json")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_health_from_snapshot_exit_code_and_plugin_line(name: str, tmp_path: Path) -> None:
    result = hlctl("health", "--from", str(SNAPSHOTS / f"{name}.json"), tmp=tmp_path)
    assert result.returncode == EXPECTED[name], result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    label = ["OK", "WARNING", "CRITICAL", "UNKNOWN"][EXPECTED[name]]
    first = result.stdout.splitlines()[0]
    # Not a TTY: the Nagios plugin line comes first, as monitoring systems parse it.
    assert first.startswith(f"GPU {label} - "), first
    if name.startswith("bad_"):
        assert result.stdout.count("\n") == 1  # one clear line
        assert str(SNAPSHOTS / f"{name}.json") in first


def test_json_prometheus_and_recorded_result(tmp_path: Path) -> None:
    prom = tmp_path / "textfile" / "hlctl.prom"
    prom.parent.mkdir()
    result = hlctl("health", "--from", str(SNAPSHOTS / "thermal_slowdown.json"), "--json",
                   "--prometheus", str(prom), tmp=tmp_path)
    assert result.returncode == 2
    data = json.loads(result.stdout)
    assert data["schema"] == "hlctl.health/1" and data["state"] == "critical"
    assert "gpu0.clocks" in data["findings"]
    text = prom.read_text()
    assert "DCGM_FI_DEV_GPU_TEMP" in text and "hlctl_health_status" in text
    last = json.loads((tmp_path / "state" / "hlctl" / "health" / "last.json").read_text())
    assert last["state"] == "critical" and last["exit_code"] == 2 and last["checked_at"]


def test_unreadable_config_is_unknown_not_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("health: [\n")
    result = hlctl("--config", str(bad), "health", "--from",
                   str(SNAPSHOTS / "healthy_3090.json"), tmp=tmp_path)
    assert result.returncode == 3
    assert result.stdout.startswith("GPU UNKNOWN - ") and "Traceback" not in result.stderr


def test_watch_reevaluates_until_interrupted(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "HLCTL_CONFIG": ""}
    proc = subprocess.Popen([HLCTL, "health", "--watch", "0.5", "--from",
                             str(SNAPSHOTS / "hot.json")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 30
    seen = ""
    while time.monotonic() < deadline and seen.count("GPU WARNING") < 2:
        line = proc.stdout.readline() if proc.stdout else ""
        seen += line
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=10)
    assert seen.count("GPU WARNING") >= 2, seen
    assert proc.returncode == 1 and "Traceback" not in err
