"""Evaluate a GPU snapshot against thresholds: pure, so every rule is a table-driven test.

Each check yields a CheckResult, OK ones included, so exporters can publish a status per check
and alerts can notice a check going back to OK. A value the card cannot report is ``n/a``:
never OK and never a finding.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from hlctl.config import HealthThresholds
from hlctl.gpu.snapshot import GpuSnapshot, HostSnapshot, cuda_version_text


class State(Enum):
    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"
    UNKNOWN = "unknown"
    NA = "n/a"

    @property
    def nagios(self) -> int:
        """Nagios plugin exit code; n/a counts as OK because it is no finding."""
        return {"ok": 0, "warning": 1, "critical": 2, "unknown": 3, "n/a": 0}[self.value]

    @property
    def severity(self) -> int:
        """Order for 'worst wins': UNKNOWN ranks between WARNING and CRITICAL as Nagios does."""
        return {"n/a": 0, "ok": 1, "warning": 2, "unknown": 3, "critical": 4}[self.value]


@dataclass(frozen=True)
class CheckResult:
    gpu: int | None  # None for host-wide checks (driver, NVML)
    check: str
    state: State
    value: float | str | None
    threshold: float | str | None
    message: str
    action: str = ""

    @property
    def key(self) -> str:
        """Stable identity of the check across runs, for alert state changes."""
        return f"gpu{self.gpu}.{self.check}" if self.gpu is not None else f"host.{self.check}"


@dataclass(frozen=True)
class HealthReport:
    host: str
    taken_at: str
    checks: list[CheckResult]

    @property
    def state(self) -> State:
        states = [c.state for c in self.checks if c.state is not State.NA]
        if not states:
            return State.UNKNOWN
        return max(states, key=lambda s: s.severity)

    @property
    def findings(self) -> list[CheckResult]:
        return [c for c in self.checks if c.state not in (State.OK, State.NA)]


# Clock-event reasons that mean the GPU is being slowed against the user's will.
_REASON_STATES = {
    "hw_thermal_slowdown": State.CRITICAL,
    "hw_slowdown": State.CRITICAL,
    "hw_power_brake_slowdown": State.CRITICAL,
    "sw_thermal_slowdown": State.WARNING,
}
_REASON_ACTIONS = {
    "hw_thermal_slowdown": "the card is overheating: check airflow, fans and the case",
    "hw_slowdown": "hardware slowdown (heat or power brake): check cooling and the PSU cables",
    "hw_power_brake_slowdown": "external power brake asserted: check the PSU and its cables",
    "sw_thermal_slowdown": "the driver is cutting clocks for heat: improve cooling",
}


def _fmt(value: float) -> str:
    return f"{value:g}"


def temperature_limits(gpu: GpuSnapshot, t: HealthThresholds) -> tuple[float, float]:
    """(warn, crit) in C: the card's own slowdown threshold when known, else the fallback."""
    if gpu.temperature_slowdown_c is not None:
        crit = gpu.temperature_slowdown_c
        return crit - t.temperature.slowdown_margin_c, crit
    return t.temperature.warn_c, t.temperature.crit_c


def _check_temperature(gpu: GpuSnapshot, t: HealthThresholds) -> CheckResult:
    if gpu.temperature_c is None:
        return CheckResult(gpu.index, "temperature", State.NA, None, None, "temperature n/a")
    warn, crit = temperature_limits(gpu, t)
    temp = gpu.temperature_c
    source = "slowdown threshold" if gpu.temperature_slowdown_c is not None else "limit"
    if temp >= crit:
        return CheckResult(gpu.index, "temperature", State.CRITICAL, temp, crit,
                           f"GPU {gpu.index} at {_fmt(temp)} C, at or above its {source} "
                           f"{_fmt(crit)} C",
                           "the card is throttling: check airflow and fans, lower the power "
                           "limit (nvidia-smi -pl) or the load")
    if temp >= warn:
        return CheckResult(gpu.index, "temperature", State.WARNING, temp, warn,
                           f"GPU {gpu.index} at {_fmt(temp)} C, within "
                           f"{_fmt(crit - warn)} C of its {source} {_fmt(crit)} C",
                           "check airflow and fan curves before it throttles")
    return CheckResult(gpu.index, "temperature", State.OK, temp, warn,
                       f"GPU {gpu.index} at {_fmt(temp)} C")


def _check_clocks(gpu: GpuSnapshot) -> CheckResult:
    if gpu.clocks_event_reasons is None:
        return CheckResult(gpu.index, "clocks", State.NA, None, None, "clock event reasons n/a")
    bad = [r for r in gpu.clocks_event_reasons if r in _REASON_STATES]
    if not bad:
        active = ", ".join(gpu.clocks_event_reasons) or "none"
        return CheckResult(gpu.index, "clocks", State.OK, active, None,
                           f"GPU {gpu.index} clock events: {active}")
    worst = max(bad, key=lambda r: _REASON_STATES[r].severity)
    return CheckResult(gpu.index, "clocks", _REASON_STATES[worst], ", ".join(bad), None,
                       f"GPU {gpu.index} clocks slowed: {', '.join(bad)}",
                       _REASON_ACTIONS[worst])


def _check_ecc(gpu: GpuSnapshot) -> CheckResult:
    if gpu.ecc is None:
        return CheckResult(gpu.index, "ecc", State.NA, None, None, "ECC n/a (not supported)")
    errors = max(gpu.ecc.volatile_uncorrected, gpu.ecc.aggregate_uncorrected)
    if errors > 0:
        return CheckResult(gpu.index, "ecc", State.CRITICAL, errors, 0,
                           f"GPU {gpu.index} has {errors} uncorrected ECC errors "
                           f"(volatile {gpu.ecc.volatile_uncorrected}, "
                           f"aggregate {gpu.ecc.aggregate_uncorrected})",
                           "drain the GPU and reset it (nvidia-smi -r) or reboot; if errors "
                           "return, the card needs service")
    return CheckResult(gpu.index, "ecc", State.OK, 0, 0, f"GPU {gpu.index} no uncorrected ECC")


def _check_remapped_rows(gpu: GpuSnapshot) -> CheckResult:
    rows = gpu.remapped_rows
    if rows is None:
        return CheckResult(gpu.index, "remapped_rows", State.NA, None, None,
                           "row remapping n/a (not supported)")
    if rows.failure:
        return CheckResult(gpu.index, "remapped_rows", State.CRITICAL, "failure", None,
                           f"GPU {gpu.index} row remapping failed "
                           f"({rows.uncorrectable} uncorrectable rows)",
                           "the memory cannot be repaired: the card needs service (RMA)")
    if rows.pending:
        return CheckResult(gpu.index, "remapped_rows", State.WARNING, "pending", None,
                           f"GPU {gpu.index} has a row remap pending",
                           "reset the GPU (nvidia-smi -r) or reboot to apply the remap")
    return CheckResult(gpu.index, "remapped_rows", State.OK, rows.correctable + rows.uncorrectable,
                       None, f"GPU {gpu.index} row remapping healthy")


def _check_xids(gpu: GpuSnapshot, t: HealthThresholds) -> CheckResult:
    if not gpu.xid_events:
        return CheckResult(gpu.index, "xid", State.OK, None, None,
                           f"GPU {gpu.index} no XID errors since the last check")

    def state_of(xid: int) -> State:
        if xid in t.xid.critical:
            return State.CRITICAL
        # Every XID is a driver-reported error; unlisted ones are worth a look, not a page.
        return State.WARNING

    xids = sorted({e.xid for e in gpu.xid_events})
    worst = max(xids, key=lambda x: state_of(x).severity)
    state = state_of(worst)
    action = ("reset-class error: drain the GPU, reset it or reboot, and check power and "
              "seating" if state is State.CRITICAL
              else "application-class error: check the failing program's logs")
    return CheckResult(gpu.index, "xid", state, worst, None,
                       f"GPU {gpu.index} reported XID {', '.join(map(str, xids))} "
                       f"since the last check", action)


def _check_pcie(gpu: GpuSnapshot) -> CheckResult:
    link = gpu.pcie
    if link is None or link.width is None or link.width_max is None:
        return CheckResult(gpu.index, "pcie_width", State.NA, None, None, "PCIe link n/a")
    # A lower generation at idle is power saving; a narrower width is a seating/riser fault.
    if link.width < link.width_max:
        return CheckResult(gpu.index, "pcie_width", State.WARNING, link.width, link.width_max,
                           f"GPU {gpu.index} PCIe link x{link.width} of x{link.width_max}",
                           "reseat the card or replace the riser; check the slot's lane wiring")
    return CheckResult(gpu.index, "pcie_width", State.OK, link.width, link.width_max,
                       f"GPU {gpu.index} PCIe x{link.width}")


def _check_fan(gpu: GpuSnapshot, t: HealthThresholds) -> CheckResult:
    if gpu.fan_speed_pct is None or gpu.temperature_c is None:
        return CheckResult(gpu.index, "fan", State.NA, None, None, "fan n/a")
    if gpu.fan_speed_pct == 0 and gpu.temperature_c > t.fan_stopped_above_c:
        return CheckResult(gpu.index, "fan", State.WARNING, 0, t.fan_stopped_above_c,
                           f"GPU {gpu.index} fan at 0% while at {_fmt(gpu.temperature_c)} C "
                           f"(above {_fmt(t.fan_stopped_above_c)} C)",
                           "check that the fan spins and is plugged in")
    return CheckResult(gpu.index, "fan", State.OK, gpu.fan_speed_pct, None,
                       f"GPU {gpu.index} fan {_fmt(gpu.fan_speed_pct)}%")


def _check_power(gpu: GpuSnapshot) -> CheckResult:
    if gpu.power_draw_w is None or gpu.power_limit_w is None:
        return CheckResult(gpu.index, "power", State.NA, None, None, "power n/a")
    if gpu.power_draw_w > gpu.power_limit_w:
        return CheckResult(gpu.index, "power", State.WARNING, gpu.power_draw_w, gpu.power_limit_w,
                           f"GPU {gpu.index} draws {_fmt(gpu.power_draw_w)} W, above its limit "
                           f"{_fmt(gpu.power_limit_w)} W",
                           "check the power limit (nvidia-smi -q -d POWER) and the PSU")
    return CheckResult(gpu.index, "power", State.OK, gpu.power_draw_w, gpu.power_limit_w,
                       f"GPU {gpu.index} draws {_fmt(gpu.power_draw_w)} W")


def _check_kernel_log(snapshot: HostSnapshot) -> CheckResult:
    # Without the kernel log an XID check would say OK while blind: say so instead.
    if snapshot.xid_error is None:
        return CheckResult(None, "kernel_log", State.OK, None, None, "kernel log XIDs read")
    return CheckResult(None, "kernel_log", State.WARNING, "unreadable", None,
                       f"XIDs cannot be read from the kernel log: {snapshot.xid_error}",
                       "run hlctl health as root (the systemd timer does), or set "
                       "health.xid.kernel_log: false to stop looking")


def _check_gpu(gpu: GpuSnapshot, t: HealthThresholds) -> list[CheckResult]:
    if gpu.lost:
        return [CheckResult(gpu.index, "lost", State.CRITICAL, "lost", None,
                            f"GPU {gpu.index} has fallen off the bus",
                            "reboot the host; if it recurs check power, PCIe seating "
                            "and the riser")]
    return [
        CheckResult(gpu.index, "lost", State.OK, None, None, f"GPU {gpu.index} present"),
        _check_temperature(gpu, t),
        _check_clocks(gpu),
        _check_ecc(gpu),
        _check_remapped_rows(gpu),
        _check_xids(gpu, t),
        _check_pcie(gpu),
        _check_fan(gpu, t),
        _check_power(gpu),
    ]


def _check_driver(snapshot: HostSnapshot, t: HealthThresholds) -> CheckResult:
    version = snapshot.cuda_driver_version
    if version is None:
        return CheckResult(None, "cuda_driver", State.NA, None, None, "CUDA driver version n/a")
    need = cuda_version_text(t.min_cuda_driver_version)
    if version < t.min_cuda_driver_version:
        driver = f" {snapshot.driver_version}" if snapshot.driver_version else ""
        return CheckResult(None, "cuda_driver", State.CRITICAL, version,
                           t.min_cuda_driver_version,
                           f"driver{driver} supports CUDA {cuda_version_text(version)}; "
                           f"CUDA {need} needs driver >= 530.30.02"
                           if t.min_cuda_driver_version == 12010 else
                           f"driver{driver} supports CUDA {cuda_version_text(version)}; "
                           f"CUDA {need} or newer is required",
                           "upgrade the NVIDIA driver (hlctl provision gpu host) and reboot")
    return CheckResult(None, "cuda_driver", State.OK, version, t.min_cuda_driver_version,
                       f"driver supports CUDA {cuda_version_text(version)}")


def _check_nvml(snapshot: HostSnapshot) -> CheckResult:
    if snapshot.error is None:
        if not snapshot.gpus:
            return CheckResult(None, "nvml", State.UNKNOWN, "no GPU", None,
                               "NVML found no GPU on this host",
                               "check that the GPU is passed through to this VM (lspci)")
        # Reported as OK too, so recovering from a driver mismatch sends its "back to OK".
        return CheckResult(None, "nvml", State.OK, len(snapshot.gpus), None,
                           f"NVML reads {len(snapshot.gpus)} GPU(s)")
    if snapshot.error_kind == "driver_mismatch":
        return CheckResult(None, "nvml", State.CRITICAL, "driver_mismatch", None,
                           f"NVML driver/library version mismatch: {snapshot.error}",
                           "reboot required: the driver was upgraded under the running kernel "
                           "module (hold the driver package to stop unattended upgrades)")
    action = ("install the NVIDIA driver (hlctl provision)" if snapshot.error_kind == "no_driver"
              else "check the driver with nvidia-smi and the kernel log (dmesg)")
    return CheckResult(None, "nvml", State.UNKNOWN, snapshot.error_kind or "error", None,
                       f"NVML could not start: {snapshot.error}", action)


def evaluate_health(snapshot: HostSnapshot, thresholds: HealthThresholds) -> HealthReport:
    """Apply every rule to every GPU; host-wide checks come first."""
    checks: list[CheckResult] = []
    checks.append(_check_nvml(snapshot))
    if snapshot.error is None or snapshot.cuda_driver_version is not None:
        checks.append(_check_driver(snapshot, thresholds))
    if snapshot.error is None:
        checks.append(_check_kernel_log(snapshot))
    for gpu in snapshot.gpus:
        checks.extend(_check_gpu(gpu, thresholds))
    return HealthReport(host=snapshot.host, taken_at=snapshot.taken_at, checks=checks)
