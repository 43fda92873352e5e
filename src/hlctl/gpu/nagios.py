"""The Nagios plugin line, so Nagios, Icinga and Checkmk can run `hlctl health` unchanged."""

from __future__ import annotations

from hlctl.config import HealthThresholds
from hlctl.gpu.health import HealthReport, State, temperature_limits
from hlctl.gpu.snapshot import HostSnapshot

_LABELS = {State.OK: "OK", State.WARNING: "WARNING", State.CRITICAL: "CRITICAL",
           State.UNKNOWN: "UNKNOWN", State.NA: "OK"}


def _num(value: float | int | None) -> str:
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else f"{value:g}"


def perfdata(snapshot: HostSnapshot, thresholds: HealthThresholds) -> str:
    """Perfdata per GPU: 'label'=value[UOM];warn;crit;min;max (Nagios plugin guidelines)."""
    parts = []
    for gpu in snapshot.gpus:
        if gpu.lost:
            continue
        p = f"gpu{gpu.index}"
        if gpu.temperature_c is not None:
            warn, crit = temperature_limits(gpu, thresholds)
            parts.append(f"'{p}_temp'={_num(gpu.temperature_c)};{_num(warn)};{_num(crit)}")
        if gpu.power_draw_w is not None:
            parts.append(f"'{p}_power'={_num(gpu.power_draw_w)};;{_num(gpu.power_limit_w)};0")
        if gpu.memory_used_bytes is not None:
            parts.append(f"'{p}_mem_used'={gpu.memory_used_bytes}B;;;0;"
                         f"{_num(gpu.memory_total_bytes)}")
        if gpu.utilization_gpu_pct is not None:
            parts.append(f"'{p}_util'={_num(gpu.utilization_gpu_pct)}%;;;0;100")
        if gpu.fan_speed_pct is not None:
            parts.append(f"'{p}_fan'={_num(gpu.fan_speed_pct)}%;;;0;100")
    return " ".join(parts)


def nagios_line(report: HealthReport, snapshot: HostSnapshot,
                thresholds: HealthThresholds) -> str:
    """`GPU CRITICAL - <findings> | <perfdata>`; the summary names every finding."""
    state = report.state
    findings = report.findings
    if findings:
        summary = "; ".join(f.message for f in findings)
    else:
        gpus = len(snapshot.gpus)
        summary = f"{gpus} GPU{'s' if gpus != 1 else ''} healthy"
    data = perfdata(snapshot, thresholds)
    # '|' separates perfdata in the plugin protocol; keep it out of the text.
    line = f"GPU {_LABELS[state]} - {summary.replace('|', '/')}"
    return f"{line} | {data}" if data else line
