"""Real NVML: read this machine's GPUs through the real pynvml and evaluate them.

The ``gpu`` test needs an NVIDIA driver and skips without one. The other test runs where
there is NO driver and checks that the real pynvml's failure becomes a clean ``no_driver``
snapshot and exit 1 of ``hlctl gpu info``, not a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hlctl.config import HealthThresholds
from hlctl.gpu.health import State, evaluate_health
from hlctl.gpu.nvml import read_snapshot
from hlctl.gpu.snapshot import snapshot_from_dict
from hlctl.gpu.xid import NoXidSource


def _nvml_available() -> str | None:
    """None when NVML initialises, else the reason it does not."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return f"NVML not available: {exc}"
    pynvml.nvmlShutdown()
    return None


@pytest.mark.gpu
def test_real_snapshot_is_sane_and_evaluates() -> None:
    reason = _nvml_available()
    if reason:
        pytest.skip(reason)
    snapshot = read_snapshot(xid_source=NoXidSource())
    assert snapshot.error is None
    assert snapshot.driver_version and snapshot.cuda_driver_version
    assert snapshot.cuda_driver_version >= 10000
    assert snapshot.gpus, "NVML initialised but listed no GPU"
    for gpu in snapshot.gpus:
        assert not gpu.lost
        assert gpu.uuid and gpu.uuid.startswith(("GPU-", "MIG-"))
        assert gpu.pci_bus_id and len(gpu.pci_bus_id.split(":")) == 3
        assert gpu.temperature_c is not None and 0 < gpu.temperature_c < 120
        assert gpu.memory_total_bytes and gpu.memory_total_bytes > 2**30
        assert gpu.memory_used_bytes is not None
        assert gpu.memory_used_bytes <= gpu.memory_total_bytes
        if gpu.power_draw_w is not None and gpu.power_limit_w is not None:
            assert 0 < gpu.power_draw_w < 2000 and 0 < gpu.power_limit_w < 2000
        assert gpu.clocks_event_reasons is not None
    # The live snapshot passes the same validation as a recorded one.
    assert snapshot_from_dict(json.loads(json.dumps(snapshot.to_dict()))) == snapshot
    report = evaluate_health(snapshot, HealthThresholds())
    assert report.state is not State.UNKNOWN
    print(json.dumps(snapshot.to_dict(), indent=2))
    for check in report.checks:
        print(f"{check.key:28} {check.state.value:8} {check.message}")


def test_real_pynvml_without_driver_is_no_driver(tmp_path: Path) -> None:
    if _nvml_available() is None:
        pytest.skip("this machine has an NVIDIA driver")
    snapshot = read_snapshot(host="h", xid_source=NoXidSource())
    assert snapshot.error_kind == "no_driver"
    assert snapshot.gpus == []
    done = subprocess.run([sys.executable, "-m", "hlctl.cli.main", "gpu", "info", "--json"],
                          capture_output=True, text=True, timeout=60,
                          env={"HLCTL_CONFIG": "", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                               "XDG_STATE_HOME": str(tmp_path / "state")})
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["error_kind"] == "no_driver"
    assert "Traceback" not in done.stderr
