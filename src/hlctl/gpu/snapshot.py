"""The GPU snapshot: plain dataclasses and the versioned JSON contract (docs/gpu-snapshot.md).

A field the card does not support is ``None`` ("n/a"): never an error, never OK, never a finding.
Parsing a snapshot from JSON validates it, because ``hlctl health --from`` reads files that a
person or another host wrote.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

SCHEMA = "hlctl.gpu-snapshot/1"

# NVML's clocks-event (throttle) reason bits, by their documented names.
CLOCKS_EVENT_REASONS: dict[str, int] = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}


class SnapshotError(ValueError):
    """A snapshot that is not valid JSON, has the wrong schema or holds absurd values."""


@dataclass(frozen=True)
class XidEvent:
    xid: int
    at: str  # ISO 8601


@dataclass(frozen=True)
class EccCounts:
    volatile_uncorrected: int
    aggregate_uncorrected: int
    volatile_corrected: int


@dataclass(frozen=True)
class RemappedRows:
    correctable: int
    uncorrectable: int
    pending: bool
    failure: bool


@dataclass(frozen=True)
class PcieLink:
    gen: int | None
    gen_max: int | None
    width: int | None
    width_max: int | None
    replay_counter: int | None


@dataclass(frozen=True)
class GpuSnapshot:
    index: int
    uuid: str | None
    name: str | None
    pci_bus_id: str | None
    temperature_c: float | None = None
    temperature_slowdown_c: float | None = None
    temperature_shutdown_c: float | None = None
    fan_speed_pct: float | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    utilization_gpu_pct: float | None = None
    clocks_event_reasons: list[str] | None = None
    ecc: EccCounts | None = None
    remapped_rows: RemappedRows | None = None
    pcie: PcieLink | None = None
    xid_events: list[XidEvent] = field(default_factory=list)
    lost: bool = False


@dataclass(frozen=True)
class HostSnapshot:
    host: str
    taken_at: str  # ISO 8601
    driver_version: str | None = None
    cuda_driver_version: int | None = None  # as NVML gives it: 12010 for CUDA 12.1
    nvml_version: str | None = None
    gpus: list[GpuSnapshot] = field(default_factory=list)
    error: str | None = None  # NVML could not be initialised; gpus is then empty
    error_kind: str | None = None  # "no_driver", "driver_mismatch", "nvml_failed"
    xid_error: str | None = None  # why the kernel log's XIDs could not be read

    def to_dict(self) -> dict[str, Any]:
        data = {"schema": SCHEMA, **asdict(self)}
        for optional in ("error", "error_kind", "xid_error"):
            if data[optional] is None:
                data.pop(optional)
        return data


def reasons_from_mask(mask: int) -> list[str]:
    """Name the set bits of an NVML clocks-event reasons mask, in a stable order."""
    return [name for name, bit in CLOCKS_EVENT_REASONS.items() if mask & bit]


def cuda_version_text(version: int | None) -> str:
    """12010 -> "12.1", as nvidia-smi prints it."""
    if version is None:
        return "n/a"
    return f"{version // 1000}.{(version % 1000) // 10}"


# ---------------------------------------------------------------------------------------------
# Parsing and validation of recorded snapshots.

_RANGES: dict[str, tuple[float, float]] = {
    "temperature_c": (-40, 200),
    "temperature_slowdown_c": (0, 200),
    "temperature_shutdown_c": (0, 200),
    "fan_speed_pct": (0, 200),  # NVML allows above 100% on some boards
    "power_draw_w": (0, 5000),
    "power_limit_w": (0, 5000),
    "memory_total_bytes": (0, 2**50),
    "memory_used_bytes": (0, 2**50),
    "utilization_gpu_pct": (0, 100),
}


def _number(path: str, value: Any, *, integer: bool = False, allow_none: bool = True) -> Any:
    if value is None:
        if allow_none:
            return None
        raise SnapshotError(f"{path}: is required")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SnapshotError(f"{path}: must be a number, not {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SnapshotError(f"{path}: must be a finite number")
    if integer and not float(value).is_integer():
        raise SnapshotError(f"{path}: must be a whole number")
    return int(value) if integer else value


def _in_range(path: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:
        raise SnapshotError(f"{path}: {value} is outside the plausible range {low}..{high}")


def _text(path: str, value: Any, *, allow_none: bool = True) -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        raise SnapshotError(f"{path}: must be a string")
    return value


def _bool(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SnapshotError(f"{path}: must be true or false")
    return value


def _timestamp(path: str, value: Any) -> str:
    text = _text(path, value, allow_none=False)
    try:
        datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise SnapshotError(f"{path}: {text!r} is not an ISO 8601 time") from None
    return str(text)


def _object(path: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SnapshotError(f"{path}: must be an object")
    return value


def _counts(path: str, raw: dict[str, Any], keys: tuple[str, ...]) -> dict[str, int]:
    out = {}
    for key in keys:
        number = _number(f"{path}.{key}", raw.get(key), integer=True, allow_none=False)
        _in_range(f"{path}.{key}", number, 0, 2**63)
        out[key] = number
    return out


def _gpu_from_dict(path: str, raw: Any) -> GpuSnapshot:
    raw = _object(path, raw)
    values: dict[str, Any] = {}
    for key, (low, high) in _RANGES.items():
        integer = key.endswith("_bytes")
        values[key] = _number(f"{path}.{key}", raw.get(key), integer=integer)
        _in_range(f"{path}.{key}", values[key], low, high)
    total, used = values["memory_total_bytes"], values["memory_used_bytes"]
    if total is not None and used is not None and used > total:
        raise SnapshotError(f"{path}.memory_used_bytes: {used} exceeds memory_total_bytes {total}")

    reasons = raw.get("clocks_event_reasons")
    if reasons is not None:
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            raise SnapshotError(f"{path}.clocks_event_reasons: must be a list of names")
        unknown = sorted(set(reasons) - set(CLOCKS_EVENT_REASONS))
        if unknown:
            raise SnapshotError(f"{path}.clocks_event_reasons: unknown reason {unknown[0]!r}")

    ecc = raw.get("ecc")
    if ecc is not None:
        keys = ("volatile_uncorrected", "aggregate_uncorrected", "volatile_corrected")
        ecc = EccCounts(**_counts(f"{path}.ecc", _object(f"{path}.ecc", ecc), keys))

    rows = raw.get("remapped_rows")
    if rows is not None:
        rows = _object(f"{path}.remapped_rows", rows)
        counts = _counts(f"{path}.remapped_rows", rows, ("correctable", "uncorrectable"))
        rows = RemappedRows(
            **counts,
            pending=_bool(f"{path}.remapped_rows.pending", rows.get("pending")),
            failure=_bool(f"{path}.remapped_rows.failure", rows.get("failure")),
        )

    pcie = raw.get("pcie")
    if pcie is not None:
        pcie = _object(f"{path}.pcie", pcie)
        link = {}
        for key, high in (("gen", 10), ("gen_max", 10), ("width", 64), ("width_max", 64),
                          ("replay_counter", 2**63)):
            link[key] = _number(f"{path}.pcie.{key}", pcie.get(key), integer=True)
            _in_range(f"{path}.pcie.{key}", link[key], 0, high)
        pcie = PcieLink(**link)

    xids_raw = raw.get("xid_events", [])
    if not isinstance(xids_raw, list):
        raise SnapshotError(f"{path}.xid_events: must be a list")
    xids = []
    for i, event in enumerate(xids_raw):
        event = _object(f"{path}.xid_events[{i}]", event)
        xid = _number(f"{path}.xid_events[{i}].xid", event.get("xid"), integer=True,
                      allow_none=False)
        _in_range(f"{path}.xid_events[{i}].xid", xid, 0, 100000)
        xids.append(XidEvent(xid=xid, at=_timestamp(f"{path}.xid_events[{i}].at", event.get("at"))))

    index = _number(f"{path}.index", raw.get("index"), integer=True, allow_none=False)
    _in_range(f"{path}.index", index, 0, 1024)
    return GpuSnapshot(
        index=index,
        uuid=_text(f"{path}.uuid", raw.get("uuid")),
        name=_text(f"{path}.name", raw.get("name")),
        pci_bus_id=_text(f"{path}.pci_bus_id", raw.get("pci_bus_id")),
        clocks_event_reasons=list(reasons) if reasons is not None else None,
        ecc=ecc,
        remapped_rows=rows,
        pcie=pcie,
        xid_events=xids,
        lost=_bool(f"{path}.lost", raw.get("lost", False)),
        **values,
    )


def snapshot_from_dict(raw: Any) -> HostSnapshot:
    """Validate and build a snapshot from parsed JSON; raise SnapshotError naming the field."""
    raw = _object("snapshot", raw)
    schema = raw.get("schema")
    if schema != SCHEMA:
        raise SnapshotError(f"schema: expected {SCHEMA!r}, got {schema!r}")
    gpus_raw = raw.get("gpus", [])
    if not isinstance(gpus_raw, list):
        raise SnapshotError("gpus: must be a list")
    if len(gpus_raw) > 1024:
        raise SnapshotError(f"gpus: {len(gpus_raw)} GPUs is not plausible")
    cuda = _number("cuda_driver_version", raw.get("cuda_driver_version"), integer=True)
    _in_range("cuda_driver_version", cuda, 1000, 100000)
    error = _text("error", raw.get("error"))
    if error is None and "gpus" not in raw:
        raise SnapshotError("gpus: is required (or error, when NVML could not start)")
    return HostSnapshot(
        host=str(_text("host", raw.get("host"), allow_none=False)),
        taken_at=_timestamp("taken_at", raw.get("taken_at")),
        driver_version=_text("driver_version", raw.get("driver_version")),
        cuda_driver_version=cuda,
        nvml_version=_text("nvml_version", raw.get("nvml_version")),
        gpus=[_gpu_from_dict(f"gpus[{i}]", g) for i, g in enumerate(gpus_raw)],
        error=error,
        error_kind=_text("error_kind", raw.get("error_kind")),
        xid_error=_text("xid_error", raw.get("xid_error")),
    )
