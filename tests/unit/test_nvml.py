"""NVML scenarios replayed at the pynvml boundary -> snapshot fields and health findings.

No GPU runs here, so the pynvml module is replaced by tests/fixtures/nvml_sim.py: a simulator
that answers from a scenario and raises pynvml's real exception classes (its docstring states
what it does not model). The real-NVML test is tests/integration/test_gpu_real.py.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pynvml
import pytest

from hlctl.config import HealthThresholds
from hlctl.gpu.health import State, evaluate_health
from hlctl.gpu.nvml import WatchedXid, read_snapshot, watch_xid_events
from hlctl.gpu.snapshot import HostSnapshot, snapshot_from_dict
from hlctl.gpu.xid import KernelXid, StaticXidSource
from tests.fixtures.make_snapshots import SNAPSHOT_DIR, expected_files, scenario_snapshot
from tests.fixtures.nvml_sim import NvmlSim, load_scenario, scenario_names

C, W, U = State.CRITICAL, State.WARNING, State.UNKNOWN

# scenario -> (overall state, findings as {check key: state})
EXPECTED_FINDINGS: dict[str, tuple[State, dict[str, State]]] = {
    "healthy_3090": (State.OK, {}),
    "hot": (W, {"gpu0.temperature": W}),
    "thermal_slowdown": (C, {"gpu0.temperature": C, "gpu0.clocks": C}),
    "sw_thermal_slowdown": (W, {"gpu0.clocks": W}),
    "ecc": (C, {"gpu0.ecc": C}),
    "remap_pending": (W, {"gpu0.remapped_rows": W}),
    "remap_failure": (C, {"gpu0.remapped_rows": C}),
    "xid79": (C, {"gpu0.lost": C}),
    "xid79_readable": (C, {"gpu0.xid": C}),
    "pcie_x8": (W, {"gpu0.pcie_width": W}),
    "pcie_gen_idle": (State.OK, {}),
    "fan_stopped_hot": (W, {"gpu0.fan": W}),
    "power_over_limit": (W, {"gpu0.power": W}),
    "driver_530_no_events_api": (C, {"gpu0.temperature": C, "gpu0.clocks": C}),
    "old_driver": (C, {"host.cuda_driver": C}),
    "geforce_na": (State.OK, {}),
    "nvml_failed": (U, {"host.nvml": U}),
    "driver_not_loaded": (U, {"host.nvml": U}),
    "driver_mismatch": (C, {"host.nvml": C}),
    "init_no_permission": (U, {"host.nvml": U}),
    "lost": (C, {"gpu1.lost": C}),
    "two_gpus": (W, {"gpu1.xid": W}),
    "no_gpu": (U, {"host.nvml": U}),
}


def _snapshot(name: str, **changes: Any) -> tuple[HostSnapshot, NvmlSim]:
    scenario = load_scenario(name)
    for index, fields in changes.items():
        scenario["gpus"][int(index)].update(fields)
    sim = NvmlSim(scenario)
    return read_snapshot(nvml=sim, host="gpu01", clock=lambda: datetime(2026, 1, 1, tzinfo=UTC),
                         xid_source=StaticXidSource([])), sim


def test_every_scenario_has_expectations() -> None:
    assert sorted(EXPECTED_FINDINGS) == scenario_names()


@pytest.mark.parametrize("name", sorted(EXPECTED_FINDINGS))
def test_scenario_findings(name: str) -> None:
    snapshot = scenario_snapshot(name)
    report = evaluate_health(snapshot, HealthThresholds())
    state, findings = EXPECTED_FINDINGS[name]
    assert {f.key: f.state for f in report.findings} == findings
    assert report.state is state
    # What we read is what we would write and read back: the contract round-trips.
    assert snapshot_from_dict(snapshot.to_dict()) == snapshot


@pytest.mark.parametrize("name", sorted(EXPECTED_FINDINGS))
def test_nvml_is_always_shut_down(name: str) -> None:
    snapshot, sim = _snapshot(name)
    if snapshot.error is None:
        assert sim.shutdowns == 1 and sim.initialized == 0
    else:
        assert "nvmlShutdown" not in sim.calls  # init failed: nothing to shut down


def test_healthy_3090_fields() -> None:
    snapshot, _ = _snapshot("healthy_3090")
    assert (snapshot.driver_version, snapshot.cuda_driver_version) == ("530.30.02", 12010)
    assert snapshot.taken_at == "2026-01-01T00:00:00+00:00"
    [gpu] = snapshot.gpus
    assert gpu.name == "NVIDIA GeForce RTX 3090"
    assert gpu.pci_bus_id == "0000:01:00.0"  # NVML's 00000000:01:00.0, normalised
    assert (gpu.temperature_c, gpu.temperature_slowdown_c, gpu.temperature_shutdown_c) == (
        62, 91, 98)
    assert (gpu.power_draw_w, gpu.power_limit_w) == (280.512, 350.0)  # from milliwatts
    assert (gpu.memory_total_bytes, gpu.memory_used_bytes) == (24 * 2**30, 12 * 2**30)
    assert gpu.clocks_event_reasons == ["sw_power_cap"]
    # GeForce: NotSupported is n/a, never an error and never zero.
    assert gpu.ecc is None and gpu.remapped_rows is None
    assert gpu.pcie is not None and (gpu.pcie.width, gpu.pcie.width_max) == (16, 16)
    assert not gpu.lost and gpu.xid_events == []


def test_a_series_ecc_and_remap_counts() -> None:
    snapshot, _ = _snapshot("ecc")
    ecc = snapshot.gpus[0].ecc
    assert ecc is not None
    assert (ecc.volatile_uncorrected, ecc.aggregate_uncorrected, ecc.volatile_corrected) == (
        2, 5, 130)
    rows, _ = _snapshot("remap_failure")
    remap = rows.gpus[0].remapped_rows
    assert remap is not None and remap.failure and remap.uncorrectable == 8


def test_ecc_switched_off_is_na() -> None:
    snapshot, sim = _snapshot("ecc", **{"0": {"ecc_mode": [0, 0]}})
    assert snapshot.gpus[0].ecc is None
    assert "nvmlDeviceGetTotalEccErrors" not in sim.calls


def test_geforce_missing_thresholds_are_na_and_fallback_applies() -> None:
    snapshot, _ = _snapshot("geforce_na")
    gpu = snapshot.gpus[0]
    assert gpu.temperature_slowdown_c is None and gpu.temperature_shutdown_c is None
    assert gpu.fan_speed_pct is None
    assert gpu.pcie is not None and gpu.pcie.replay_counter is None and gpu.pcie.width == 16
    report = evaluate_health(snapshot, HealthThresholds())
    by_key = {c.key: c for c in report.checks}
    assert by_key["gpu0.fan"].state is State.NA
    assert by_key["gpu0.ecc"].state is State.NA
    assert by_key["gpu0.temperature"].threshold == 83  # the fallback warn level


def test_530_driver_falls_back_to_throttle_reasons() -> None:
    snapshot, sim = _snapshot("driver_530_no_events_api")
    assert snapshot.gpus[0].clocks_event_reasons == ["sw_power_cap", "hw_thermal_slowdown"]
    events = sim.calls.index("nvmlDeviceGetCurrentClocksEventReasons")
    assert sim.calls[events + 1] == "nvmlDeviceGetCurrentClocksThrottleReasons"


def test_newer_driver_uses_the_events_call_only() -> None:
    _, sim = _snapshot("healthy_3090")
    assert "nvmlDeviceGetCurrentClocksEventReasons" in sim.calls
    assert "nvmlDeviceGetCurrentClocksThrottleReasons" not in sim.calls


def test_old_driver_version_is_reported_as_nvml_gives_it() -> None:
    snapshot, _ = _snapshot("old_driver")
    assert snapshot.cuda_driver_version == 11080
    report = evaluate_health(snapshot, HealthThresholds())
    [finding] = report.findings
    assert "CUDA 11.8" in finding.message and "530.30.02" in finding.message


@pytest.mark.parametrize(("name", "kind", "words"), [
    ("nvml_failed", "no_driver", "not installed"),
    ("driver_not_loaded", "no_driver", "not loaded"),
    ("driver_mismatch", "driver_mismatch", "reboot required"),
    ("init_no_permission", "nvml_failed", "Insufficient Permissions"),
])
def test_init_failures(name: str, kind: str, words: str) -> None:
    snapshot, _ = _snapshot(name)
    assert snapshot.error_kind == kind and words in (snapshot.error or "")
    assert snapshot.gpus == []
    data = snapshot.to_dict()
    assert data["error_kind"] == kind and data["gpus"] == []


def test_gpu_lost_at_handle_has_no_identity() -> None:
    snapshot, _ = _snapshot("xid79")
    [gpu] = snapshot.gpus
    assert gpu.lost and gpu.uuid is None and gpu.pci_bus_id is None
    assert gpu.temperature_c is None


def test_gpu_lost_mid_read_keeps_identity_and_the_other_gpu() -> None:
    snapshot, _ = _snapshot("lost")
    first, second = snapshot.gpus
    assert not first.lost and first.temperature_c == 62
    assert second.lost and second.pci_bus_id == "0000:02:00.0"
    assert second.uuid == "GPU-0b7d9e21-3c4a-4f8b-8e6d-5a1c2b3d4e5f"
    assert second.temperature_c is None  # nothing read at or after the loss is kept


@pytest.mark.parametrize("error", ["NVMLError_Unknown", "NVMLError_NoPermission",
                                   "NVMLError_FunctionNotFound", "NVMLError_NotSupported"])
def test_a_failing_field_is_na_not_a_crash(error: str) -> None:
    snapshot, _ = _snapshot("healthy_3090", **{"0": {"fan": error, "power_mw": error}})
    gpu = snapshot.gpus[0]
    assert gpu.fan_speed_pct is None and gpu.power_draw_w is None
    assert gpu.temperature_c == 62  # the rest is still read


def test_unexpected_nvml_count_failure_is_nvml_failed() -> None:
    class Broken(NvmlSim):
        def nvmlDeviceGetCount(self) -> int:
            raise pynvml.NVMLError_Unknown()

    sim = Broken(load_scenario("healthy_3090"))
    snapshot = read_snapshot(nvml=sim, host="h", xid_source=StaticXidSource([]))
    assert snapshot.error_kind == "nvml_failed" and "Unknown Error" in (snapshot.error or "")
    assert sim.shutdowns == 1


def test_xids_attach_by_pci_address() -> None:
    scenario = load_scenario("two_gpus")
    source = StaticXidSource([
        KernelXid("0000:41:00.0", 48, "2026-01-01T00:00:00+00:00"),
        KernelXid("0000:01:00.0", 13, "2026-01-01T00:00:01+00:00"),
        KernelXid("0000:99:00.0", 79, "2026-01-01T00:00:02+00:00"),  # no such GPU: dropped
    ])
    snapshot = read_snapshot(nvml=NvmlSim(scenario), host="h", xid_source=source)
    assert [e.xid for e in snapshot.gpus[0].xid_events] == [13]
    assert [e.xid for e in snapshot.gpus[1].xid_events] == [48]


def test_unreadable_kernel_log_still_gives_a_snapshot() -> None:
    from hlctl.gpu.xid import XidSourceError

    class Failing:
        def read(self) -> list[KernelXid]:
            raise XidSourceError("journalctl -k failed: permission denied")

    snapshot = read_snapshot(nvml=NvmlSim("healthy_3090"), host="h", xid_source=Failing())
    assert snapshot.error is None and snapshot.gpus[0].xid_events == []


def test_state_dir_reads_and_moves_the_cursor(tmp_path: Any, monkeypatch: Any) -> None:
    """The lead's call shape: read_snapshot(state_dir=..., kernel_log=...)."""
    import hlctl.gpu.xid as xid

    records = ["6,10,2000000,-;NVRM: Xid (PCI:0000:01:00): 79, pid=1, name=x, GPU has fallen "
               "off the bus.\n"]
    monkeypatch.setattr(xid, "journald_running", lambda: False)

    def source(state_dir: Any, consume: bool = True) -> xid.KernelLogXidSource:
        return xid.KernelLogXidSource(state_dir, consume=consume, kmsg=lambda: iter(records),
                                      boot_id=lambda: "boot-1")

    monkeypatch.setattr("hlctl.gpu.nvml.KernelLogXidSource", source)
    first = read_snapshot(nvml=NvmlSim("healthy_3090"), host="h", state_dir=tmp_path)
    again = read_snapshot(nvml=NvmlSim("healthy_3090"), host="h", state_dir=tmp_path)
    off = read_snapshot(nvml=NvmlSim("xid79_readable"), host="h", state_dir=tmp_path,
                        kernel_log=False)
    assert [e.xid for e in first.gpus[0].xid_events] == [79]
    assert again.gpus[0].xid_events == []  # the cursor moved past it
    assert off.gpus[0].xid_events == []


def test_watch_yields_nvml_xid_events() -> None:
    scenario = copy.deepcopy(load_scenario("two_gpus"))
    scenario["events"] = [{"gpu": 1, "xid": 79}, {"gpu": 0, "xid": 13}]
    sim = NvmlSim(scenario)
    seen: list[WatchedXid] = []
    for event in watch_xid_events(nvml=sim, timeout_ms=1, stop=lambda: len(seen) >= 2,
                                  clock=lambda: datetime(2026, 1, 1, tzinfo=UTC)):
        seen.append(event)
    assert [(e.gpu, e.xid) for e in seen] == [(1, 79), (0, 13)]
    assert seen[0].at == "2026-01-01T00:00:00+00:00"
    assert sim.initialized == 0 and "nvmlEventSetFree" in sim.calls


def test_committed_snapshots_match_the_generator() -> None:
    """tests/fixtures/snapshots/ is generated: rerun make_snapshots after changing a scenario."""
    expected = expected_files()
    on_disk = {p.name: p.read_text() for p in SNAPSHOT_DIR.glob("*.json")}
    assert sorted(on_disk) == sorted(expected)
    stale = [name for name, text in expected.items() if on_disk[name] != text]
    assert not stale, f"stale: {stale}; run python -m tests.fixtures.make_snapshots"


def test_watch_skips_a_gpu_it_cannot_register() -> None:
    scenario = copy.deepcopy(load_scenario("two_gpus"))
    scenario["gpus"][0]["lost"] = True
    scenario["events"] = [{"gpu": 0, "xid": 79}, {"gpu": 1, "xid": 48}]
    seen: list[WatchedXid] = []
    for event in watch_xid_events(nvml=NvmlSim(scenario), timeout_ms=1, stop=lambda: bool(seen)):
        seen.append(event)
    assert [(e.gpu, e.xid) for e in seen] == [(1, 48)]
