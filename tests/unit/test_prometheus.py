"""The node_exporter textfile: dcgm-exporter names, valid exposition format, atomic replacement.

Every rendering is parsed back with prometheus_client's own parser, the one Prometheus-side
tooling in Python uses, so a format slip fails here rather than in node_exporter.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hlctl import atomicfile
from hlctl.config import HealthThresholds
from hlctl.gpu.health import CheckResult, HealthReport, State, evaluate_health
from hlctl.gpu.prometheus import render_textfile, write_atomic, write_textfile
from hlctl.gpu.snapshot import (
    EccCounts,
    GpuSnapshot,
    HostSnapshot,
    PcieLink,
    RemappedRows,
    XidEvent,
)

RUN_AT = datetime(2026, 11, 29, 2, 0, 30, tzinfo=UTC)
GIB = 1024**3

A100 = GpuSnapshot(
    index=0, uuid="GPU-604ac76c-d9cf", name="NVIDIA A100-SXM4-40GB",
    pci_bus_id="00000000:01:00.0", temperature_c=87, temperature_slowdown_c=90,
    temperature_shutdown_c=95, fan_speed_pct=None, power_draw_w=250.25, power_limit_w=400,
    memory_total_bytes=40 * GIB, memory_used_bytes=10 * GIB + 512 * 1024 * 1024,
    utilization_gpu_pct=97, clocks_event_reasons=["sw_power_cap", "sw_thermal_slowdown"],
    ecc=EccCounts(volatile_uncorrected=2, aggregate_uncorrected=5, volatile_corrected=11),
    remapped_rows=RemappedRows(correctable=1, uncorrectable=0, pending=True, failure=False),
    pcie=PcieLink(gen=4, gen_max=4, width=8, width_max=16, replay_counter=7),
    xid_events=[XidEvent(13, "2026-11-29T01:59:00+00:00"), XidEvent(79, "2026-11-29T02:00:00Z")],
)
GEFORCE = GpuSnapshot(  # NotSupported fields as on consumer cards
    index=1, uuid="GPU-3090", name="NVIDIA GeForce RTX 3090", pci_bus_id="00000000:02:00.0",
    temperature_c=50, temperature_slowdown_c=None, fan_speed_pct=30, power_draw_w=None,
    power_limit_w=None, memory_total_bytes=24 * GIB, memory_used_bytes=None,
    clocks_event_reasons=None, ecc=None, remapped_rows=None, pcie=None,
)
HOST = HostSnapshot(host="gpu01", taken_at="2026-11-29T02:00:00Z", driver_version="530.30.02",
                    cuda_driver_version=12010, gpus=[A100, GEFORCE])


def _parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            # The parser names counter samples NAME_total; dcgm's counters have no suffix.
            name = family.name if family.type == "counter" else sample.name
            out.setdefault(name, []).append((sample.labels, sample.value))
    return out


def _value(metrics: dict, name: str, **labels: str) -> float:
    found = [v for lab, v in metrics[name] if all(lab.get(k) == x for k, x in labels.items())]
    assert len(found) == 1, (name, labels, metrics.get(name))
    return found[0]


def _render(snapshot: HostSnapshot = HOST) -> tuple[str, HealthReport]:
    report = evaluate_health(snapshot, HealthThresholds())
    return render_textfile(snapshot, report, run_at=RUN_AT), report


def test_dcgm_names_labels_and_units() -> None:
    text, _ = _render()
    metrics = _parse(text)
    labels = metrics["DCGM_FI_DEV_GPU_TEMP"][0][0]
    assert labels == {"gpu": "0", "UUID": "GPU-604ac76c-d9cf", "pci_bus_id": "00000000:01:00.0",
                      "device": "nvidia0", "modelName": "NVIDIA A100-SXM4-40GB",
                      "Hostname": "gpu01"}
    assert _value(metrics, "DCGM_FI_DEV_GPU_TEMP", gpu="0") == 87
    assert _value(metrics, "DCGM_FI_DEV_POWER_USAGE", gpu="0") == 250.25
    # dcgm reports framebuffer in MiB
    assert _value(metrics, "DCGM_FI_DEV_FB_TOTAL", gpu="0") == 40 * 1024
    assert _value(metrics, "DCGM_FI_DEV_FB_USED", gpu="0") == 10 * 1024 + 512
    assert _value(metrics, "DCGM_FI_DEV_FB_FREE", gpu="0") == 40 * 1024 - 10 * 1024 - 512
    assert _value(metrics, "DCGM_FI_DEV_GPU_UTIL", gpu="0") == 97
    assert _value(metrics, "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", gpu="0") == 7
    assert _value(metrics, "DCGM_FI_DEV_PCIE_LINK_WIDTH", gpu="0") == 8
    assert _value(metrics, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", gpu="0") == 2
    assert _value(metrics, "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", gpu="0") == 5
    assert _value(metrics, "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", gpu="0") == 11
    assert _value(metrics, "DCGM_FI_DEV_ROW_REMAP_PENDING", gpu="0") == 1
    assert _value(metrics, "DCGM_FI_DEV_XID_ERRORS", gpu="0") == 79  # the last one, as dcgm
    assert _value(metrics, "hlctl_gpu_xid_events", gpu="0") == 2
    # 0x4 sw_power_cap | 0x20 sw_thermal_slowdown
    assert _value(metrics, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS", gpu="0") == 0x24
    assert _value(metrics, "hlctl_gpu_clocks_event_reason", gpu="0",
                  reason="sw_thermal_slowdown") == 1
    assert _value(metrics, "hlctl_gpu_clocks_event_reason", gpu="0", reason="hw_slowdown") == 0
    assert "# TYPE DCGM_FI_DEV_PCIE_REPLAY_COUNTER counter\n" in text
    assert "DCGM_FI_DEV_PCIE_REPLAY_COUNTER_total" not in text


def test_unsupported_values_are_left_out_not_zero() -> None:
    metrics = _parse(_render()[0])
    gpus_with = {name: {lab.get("gpu") for lab, _ in samples} for name, samples in metrics.items()}
    for name in ("DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE",
                 "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "DCGM_FI_DEV_ROW_REMAP_PENDING",
                 "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
                 "DCGM_FI_DEV_SLOWDOWN_TEMP", "hlctl_gpu_clocks_event_reason"):
        assert gpus_with[name] == {"0"}, name
    assert gpus_with["DCGM_FI_DEV_FAN_SPEED"] == {"1"}  # the A100 has no fan reading
    assert _value(metrics, "DCGM_FI_DEV_FB_TOTAL", gpu="1") == 24 * 1024


def test_health_status_per_check_with_na_omitted() -> None:
    text, report = _render()
    metrics = _parse(text)
    statuses = {(lab["gpu"], lab["check"]): v for lab, v in metrics["hlctl_health_status"]}
    expected = {("" if c.gpu is None else str(c.gpu), c.check):
                {State.OK: 0, State.WARNING: 1, State.CRITICAL: 2, State.UNKNOWN: 3}[c.state]
                for c in report.checks if c.state is not State.NA}
    assert statuses == expected
    assert statuses[("0", "ecc")] == 2 and statuses[("0", "pcie_width")] == 1
    assert ("1", "ecc") not in statuses  # n/a on the GeForce card
    assert any(c.state is State.NA for c in report.checks if c.gpu == 1)
    assert _value(metrics, "hlctl_health_overall_status") == 2
    assert _value(metrics, "hlctl_health_last_run_timestamp_seconds") == RUN_AT.timestamp()


def test_status_values_for_every_state() -> None:
    checks = [CheckResult(None, s.value.replace("/", ""), s, None, None, "m") for s in State]
    report = HealthReport(host="h", taken_at="2026-11-29T02:00:00Z", checks=checks)
    metrics = _parse(render_textfile(HostSnapshot(host="h", taken_at=report.taken_at), report,
                                     run_at=RUN_AT))
    assert {lab["check"]: v for lab, v in metrics["hlctl_health_status"]} == {
        "ok": 0, "warning": 1, "critical": 2, "unknown": 3}


def test_nvml_failure_exports_status_only() -> None:
    snapshot = HostSnapshot(host="gpu01", taken_at="2026-11-29T02:00:00Z",
                            error="Driver Not Loaded", error_kind="no_driver")
    metrics = _parse(_render(snapshot)[0])
    assert not [n for n in metrics if n.startswith("DCGM_")]
    assert _value(metrics, "hlctl_health_status", check="nvml") == 3
    assert _value(metrics, "hlctl_health_overall_status") == 3


def test_lost_gpu_exports_no_stale_readings() -> None:
    snapshot = replace(HOST, gpus=[replace(A100, lost=True)])
    metrics = _parse(_render(snapshot)[0])
    assert not [n for n in metrics if n.startswith("DCGM_")]
    assert _value(metrics, "hlctl_gpu_lost", gpu="0") == 1
    assert _value(metrics, "hlctl_health_status", gpu="0", check="lost") == 2


def test_hostile_label_values_are_escaped() -> None:
    odd = 'RTX "3090"\\ti\nline two'
    snapshot = replace(HOST, host="gpu\"01", gpus=[replace(A100, name=odd)])
    metrics = _parse(_render(snapshot)[0])
    labels = metrics["DCGM_FI_DEV_GPU_TEMP"][0][0]
    assert labels["modelName"] == odd and labels["Hostname"] == 'gpu"01'


def test_write_textfile_leaves_no_temp_and_is_world_readable(tmp_path: Path) -> None:
    target = tmp_path / "hlctl.prom"
    target.write_text("old\n")
    report = evaluate_health(HOST, HealthThresholds())
    write_textfile(target, HOST, report, run_at=RUN_AT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hlctl.prom"]
    assert target.read_text() == render_textfile(HOST, report, run_at=RUN_AT)
    # mkstemp makes 0600 files; node_exporter runs as another user and must read this one
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "hlctl.prom"
    target.write_text("old complete content\n")

    def fail_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomicfile.os, "fsync", fail_fsync)
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, "new content that never lands\n")
    assert target.read_text() == "old complete content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hlctl.prom"]


def test_missing_directory_is_an_oserror(tmp_path: Path) -> None:
    report = evaluate_health(HOST, HealthThresholds())
    with pytest.raises(OSError):
        write_textfile(tmp_path / "nope" / "hlctl.prom", HOST, report)


def test_reader_never_sees_a_half_written_file(tmp_path: Path) -> None:
    """A reader polling while the file is rewritten sees one whole version or the other."""
    target = tmp_path / "hlctl.prom"
    versions = ["a" * 200_000 + "\n# end a\n", "b" * 50_000 + "\n# end b\n"]
    write_atomic(target, versions[0])
    torn: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            text = target.read_text()
            if text not in versions:
                torn.append(len(text))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(150):
            write_atomic(target, versions[i % 2])
    finally:
        stop.set()
        thread.join()
    assert torn == []
    assert not [p for p in os.listdir(tmp_path) if p != "hlctl.prom"]


def test_cli_writes_the_textfile_and_keeps_the_exit_code(tmp_path: Path) -> None:
    """``hlctl health --from FILE --prometheus OUT`` end to end, as the systemd unit runs it."""
    import subprocess
    import sys

    hlctl = Path(sys.executable).parent / "hlctl"
    if not hlctl.exists():
        pytest.skip(f"console script {hlctl} is not installed (pip install -e .)")
    snapshot = Path(__file__).parents[1] / "fixtures" / "snapshots" / "thermal_slowdown.json"
    config = tmp_path / "hlctl.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    out = tmp_path / "textfile" / "hlctl.prom"
    out.parent.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "HLCTL_CONFIG"}
    run = subprocess.run([str(hlctl), "--config", str(config), "health", "--from", str(snapshot),
                          "--prometheus", str(out)], capture_output=True, text=True, env=env,
                         timeout=60, check=False)
    assert run.returncode == 2, run.stderr
    metrics = _parse(out.read_text())
    assert _value(metrics, "DCGM_FI_DEV_GPU_TEMP", gpu="0") == 92
    assert _value(metrics, "hlctl_health_status", gpu="0", check="temperature") == 2
    assert os.listdir(out.parent) == ["hlctl.prom"]
