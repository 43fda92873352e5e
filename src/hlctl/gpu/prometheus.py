"""Write a health run as a node_exporter textfile: dcgm-exporter's names, plus hlctl's verdicts.

Metric names and labels follow dcgm-exporter (``DCGM_FI_DEV_GPU_TEMP{gpu,UUID,pci_bus_id,device,
modelName,Hostname}``) so its Grafana dashboards and alert rules work on a homelab host that runs
no DCGM. Units are dcgm's too: framebuffer in MiB, power in W, temperature in C. A value the card
cannot report (``None``) is left out, never written as 0, so a GeForce card without ECC does
not look like a card with zero ECC errors.

hlctl adds ``hlctl_health_status{gpu,check}`` (0 ok, 1 warning, 2 critical, 3 unknown, the Nagios
codes; n/a checks are left out), one 0/1 series per clocks-event reason, and
``hlctl_health_last_run_timestamp_seconds`` so a rule can fire when the timer stops.

We render the text ourselves instead of using prometheus_client's registry: its exposition
appends ``_total`` to every counter, which would rename dcgm's counters
(``DCGM_FI_DEV_PCIE_REPLAY_COUNTER``), and its ``write_to_textfile`` neither fsyncs nor sets a
mode. The output is checked with prometheus_client's own parser in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from hlctl.atomicfile import write_text_atomic
from hlctl.gpu.health import HealthReport, State
from hlctl.gpu.snapshot import CLOCKS_EVENT_REASONS, GpuSnapshot, HostSnapshot

MIB = 1024 * 1024

# Nagios codes, as hlctl_health_status values; n/a has no entry because it is not exported.
STATUS_VALUES: dict[State, int] = {
    State.OK: 0,
    State.WARNING: 1,
    State.CRITICAL: 2,
    State.UNKNOWN: 3,
}


@dataclass(frozen=True)
class Sample:
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # "gauge" or "counter", as dcgm-exporter types the field
    help: str
    samples: tuple[Sample, ...]


def _gpu_labels(gpu: GpuSnapshot, host: str) -> tuple[tuple[str, str], ...]:
    """dcgm-exporter's per-GPU labels; ``device`` is the /dev/nvidiaN name."""
    return (
        ("gpu", str(gpu.index)),
        ("UUID", gpu.uuid or ""),
        ("pci_bus_id", gpu.pci_bus_id or ""),
        ("device", f"nvidia{gpu.index}"),
        ("modelName", gpu.name or ""),
        ("Hostname", host),
    )


def _mib(value: int | None) -> float | None:
    return None if value is None else float(value // MIB)


def _fb_free(gpu: GpuSnapshot) -> float | None:
    if gpu.memory_total_bytes is None or gpu.memory_used_bytes is None:
        return None
    return float((gpu.memory_total_bytes - gpu.memory_used_bytes) // MIB)


def _reason_mask(gpu: GpuSnapshot) -> float | None:
    if gpu.clocks_event_reasons is None:
        return None
    mask = 0
    for reason in gpu.clocks_event_reasons:
        mask |= CLOCKS_EVENT_REASONS.get(reason, 0)
    return float(mask)


def _last_xid(gpu: GpuSnapshot) -> float:
    # dcgm reports the last XID seen, 0 when none; the events list is complete, never n/a.
    return float(gpu.xid_events[-1].xid) if gpu.xid_events else 0.0


def _flag(value: bool | None) -> float | None:
    return None if value is None else float(value)


Getter = Callable[[GpuSnapshot], float | int | None]

# (name, type, help, getter): one row per dcgm field we can fill from a snapshot.
_GPU_FIELDS: tuple[tuple[str, str, str, Getter], ...] = (
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).",
     lambda g: g.temperature_c),
    ("DCGM_FI_DEV_SLOWDOWN_TEMP", "gauge", "Slowdown temperature for the device (in C).",
     lambda g: g.temperature_slowdown_c),
    ("DCGM_FI_DEV_SHUTDOWN_TEMP", "gauge", "Shutdown temperature for the device (in C).",
     lambda g: g.temperature_shutdown_c),
    ("DCGM_FI_DEV_FAN_SPEED", "gauge", "Fan speed for the device (in %).",
     lambda g: g.fan_speed_pct),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).",
     lambda g: g.power_draw_w),
    ("DCGM_FI_DEV_POWER_MGMT_LIMIT", "gauge", "Current power limit for the device (in W).",
     lambda g: g.power_limit_w),
    ("DCGM_FI_DEV_FB_TOTAL", "gauge", "Framebuffer memory total (in MiB).",
     lambda g: _mib(g.memory_total_bytes)),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB).",
     lambda g: _mib(g.memory_used_bytes)),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB).",
     _fb_free),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).",
     lambda g: g.utilization_gpu_pct),
    ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "gauge",
     "Current clock event reasons (bitmask of NVML clocks event reasons).", _reason_mask),
    ("DCGM_FI_DEV_XID_ERRORS", "gauge",
     "Value of the last XID error seen since the previous check (0 when none).", _last_xid),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "Total number of PCIe retries.",
     lambda g: g.pcie.replay_counter if g.pcie else None),
    ("DCGM_FI_DEV_PCIE_LINK_GEN", "gauge", "PCIe current link generation.",
     lambda g: g.pcie.gen if g.pcie else None),
    ("DCGM_FI_DEV_PCIE_MAX_LINK_GEN", "gauge", "PCIe max link generation.",
     lambda g: g.pcie.gen_max if g.pcie else None),
    ("DCGM_FI_DEV_PCIE_LINK_WIDTH", "gauge", "PCIe current link width.",
     lambda g: g.pcie.width if g.pcie else None),
    ("DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH", "gauge", "PCIe max link width.",
     lambda g: g.pcie.width_max if g.pcie else None),
    # NVML's "uncorrected" is DCGM's double-bit (DBE) count, "corrected" its single-bit (SBE).
    ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter", "Total number of double-bit volatile ECC errors.",
     lambda g: g.ecc.volatile_uncorrected if g.ecc else None),
    ("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "counter",
     "Total number of double-bit persistent ECC errors.",
     lambda g: g.ecc.aggregate_uncorrected if g.ecc else None),
    ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "counter", "Total number of single-bit volatile ECC errors.",
     lambda g: g.ecc.volatile_corrected if g.ecc else None),
    ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter",
     "Number of remapped rows for correctable errors.",
     lambda g: g.remapped_rows.correctable if g.remapped_rows else None),
    ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter",
     "Number of remapped rows for uncorrectable errors.",
     lambda g: g.remapped_rows.uncorrectable if g.remapped_rows else None),
    ("DCGM_FI_DEV_ROW_REMAP_PENDING", "gauge", "Whether remapping of rows is pending.",
     lambda g: _flag(g.remapped_rows.pending) if g.remapped_rows else None),
    ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Whether remapping of rows has failed.",
     lambda g: _flag(g.remapped_rows.failure) if g.remapped_rows else None),
)


def _gpu_families(snapshot: HostSnapshot) -> Iterator[Family]:
    # A lost GPU keeps only hlctl_gpu_lost: whatever else it reported is stale.
    present = [g for g in snapshot.gpus if not g.lost]
    for name, kind, help_text, getter in _GPU_FIELDS:
        samples = []
        for gpu in present:
            value = getter(gpu)
            if value is not None:
                samples.append(Sample(_gpu_labels(gpu, snapshot.host), float(value)))
        yield Family(name, kind, help_text, tuple(samples))

    reasons = []
    for gpu in present:
        if gpu.clocks_event_reasons is None:
            continue
        active = set(gpu.clocks_event_reasons)
        for reason in CLOCKS_EVENT_REASONS:
            labels = (*_gpu_labels(gpu, snapshot.host), ("reason", reason))
            reasons.append(Sample(labels, 1.0 if reason in active else 0.0))
    yield Family("hlctl_gpu_clocks_event_reason", "gauge",
                 "1 while NVML reports this clocks-event (throttle) reason for the GPU.",
                 tuple(reasons))
    yield Family("hlctl_gpu_xid_events", "gauge",
                 "XID errors the GPU reported since the previous check.",
                 tuple(Sample(_gpu_labels(g, snapshot.host), float(len(g.xid_events)))
                       for g in present))
    yield Family("hlctl_gpu_lost", "gauge", "1 when the GPU has fallen off the bus.",
                 tuple(Sample(_gpu_labels(g, snapshot.host), float(g.lost))
                       for g in snapshot.gpus))


def _health_families(snapshot: HostSnapshot, report: HealthReport, run_at: datetime,
                     ) -> Iterator[Family]:
    host = report.host or snapshot.host
    statuses = tuple(
        Sample((("Hostname", host), ("gpu", "" if c.gpu is None else str(c.gpu)),
                ("check", c.check)), float(STATUS_VALUES[c.state]))
        for c in report.checks if c.state in STATUS_VALUES
    )
    yield Family("hlctl_health_status", "gauge",
                 "State of one health check: 0 ok, 1 warning, 2 critical, 3 unknown "
                 "(n/a checks are omitted).", statuses)
    yield Family("hlctl_health_overall_status", "gauge",
                 "Worst state of the run, as the Nagios exit code of hlctl health.",
                 (Sample((("Hostname", host),), float(report.state.nagios)),))
    yield Family("hlctl_health_last_run_timestamp_seconds", "gauge",
                 "Unix time of the last hlctl health run that wrote this file.",
                 (Sample((("Hostname", host),), run_at.timestamp()),))
    taken = _parse_time(snapshot.taken_at)
    if taken is not None:
        yield Family("hlctl_gpu_snapshot_timestamp_seconds", "gauge",
                     "Unix time the evaluated GPU snapshot was taken.",
                     (Sample((("Hostname", host),), taken.timestamp()),))
    info = [("Hostname", host)]
    if snapshot.driver_version:
        info.append(("driver_version", snapshot.driver_version))
    if snapshot.cuda_driver_version is not None:
        info.append(("cuda_driver_version", str(snapshot.cuda_driver_version)))
    if len(info) > 1:
        yield Family("hlctl_gpu_driver_info", "gauge", "NVIDIA driver of the host (always 1).",
                     (Sample(tuple(info), 1.0),))


def _parse_time(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def collect(snapshot: HostSnapshot, report: HealthReport, run_at: datetime) -> list[Family]:
    """Every family with at least one sample, in a stable order."""
    families = [*_gpu_families(snapshot), *_health_families(snapshot, report, run_at)]
    return [f for f in families if f.samples]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _format_labels(labels: Sequence[tuple[str, str]]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels) + "}"


def render_families(families: Iterable[Family]) -> str:
    """Prometheus text exposition format 0.0.4, which node_exporter's textfile collector reads."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for sample in family.samples:
            lines.append(f"{family.name}{_format_labels(sample.labels)} "
                         f"{_format_value(sample.value)}")
    return "\n".join(lines) + "\n"


def render_textfile(snapshot: HostSnapshot, report: HealthReport, *,
                    run_at: datetime | None = None) -> str:
    """The textfile's content for one run; pure (``run_at`` defaults to the snapshot's time)."""
    if run_at is None:
        run_at = _parse_time(snapshot.taken_at) or datetime.fromtimestamp(0, UTC)
    return render_families(collect(snapshot, report, run_at))


def write_atomic(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` so a reader sees the old file or the new, never a mix.

    node_exporter runs as another user and must read the file (0644); the temp name does not
    end in ``.prom``, so it never reads one half written.
    """
    # No mkdir: a missing collector directory is a typo in the config, not ours to create.
    write_text_atomic(path, text, mode=mode, make_parents=False)


def write_textfile(path: Path | str, snapshot: HostSnapshot, report: HealthReport, *,
                   run_at: datetime | None = None) -> None:
    """Render the run and replace ``path`` atomically; ``run_at`` defaults to now.

    Raises OSError when the directory is missing or not writable; the CLI reports that as
    one line without changing the health exit code.
    """
    when = run_at if run_at is not None else datetime.now(UTC)
    write_atomic(Path(path), render_textfile(snapshot, report, run_at=when))
