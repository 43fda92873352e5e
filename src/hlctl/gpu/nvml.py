"""Read this machine's GPUs through NVML into a HostSnapshot: the only module importing pynvml.

pynvml loads lazily, inside the functions, so ``hlctl --help`` stays light, and the module is
injectable (``nvml=``) so tests replay scenarios at the pynvml boundary
(tests/fixtures/nvml_sim.py).

Rules for what NVML says:
- NotSupported (GeForce cards for ECC, remapped rows, some thresholds), NoPermission and
  FunctionNotFound (a driver older than the call) make a field ``None``: n/a, never an error.
- GpuIsLost on any call for a GPU marks that GPU ``lost``; the others are still read.
- An nvmlInit failure gives a snapshot with ``error`` and ``error_kind`` and no GPUs.
- nvmlShutdown always follows a successful nvmlInit.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from hlctl.errors import HlctlError
from hlctl.gpu.snapshot import (
    EccCounts,
    GpuSnapshot,
    HostSnapshot,
    PcieLink,
    RemappedRows,
    XidEvent,
    reasons_from_mask,
)
from hlctl.gpu.xid import (
    KernelLogXidSource,
    NoXidSource,
    XidSource,
    XidSourceError,
    match_to_gpus,
    normalize_pci_bus_id,
)

log = logging.getLogger(__name__)

Nvml = Any  # the pynvml module, or anything exposing the same functions and classes


def load_pynvml() -> ModuleType:
    import pynvml

    return pynvml


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _GpuLost(Exception):
    """Raised inside one GPU's read when NVML says the GPU is lost."""


def _init_error(nv: Nvml, exc: Exception) -> tuple[str, str]:
    """(error_kind, one sentence) for an nvmlInit failure."""
    text = _error_text(exc)
    if isinstance(exc, nv.NVMLError_LibRmVersionMismatch):
        return "driver_mismatch", (f"{text} (the NVIDIA driver was upgraded but the old kernel "
                                   "module is still loaded: reboot required)")
    if isinstance(exc, nv.NVMLError_LibraryNotFound):
        return "no_driver", (f"{text}: libnvidia-ml.so.1 is missing, "
                             "the NVIDIA driver is not installed")
    if isinstance(exc, nv.NVMLError_DriverNotLoaded):
        return "no_driver", f"{text}: the nvidia kernel module is not loaded"
    return "nvml_failed", f"nvmlInit failed: {text}"


def _error_text(exc: Exception) -> str:
    # NVMLError.__str__ asks the library for unknown codes, which fails without it.
    try:
        return str(exc)
    except Exception:
        return f"NVML error {getattr(exc, 'value', '?')}"


def _call(nv: Nvml, fn: Callable[..., Any] | None, *args: Any) -> Any:
    """One NVML query: None for n/a, _GpuLost for a lost GPU."""
    if fn is None:  # a pynvml too old or too new to have this call at all
        return None
    try:
        return fn(*args)
    except nv.NVMLError_GpuIsLost:
        raise _GpuLost from None
    except (nv.NVMLError_NotSupported, nv.NVMLError_FunctionNotFound,
            nv.NVMLError_NoPermission):
        return None
    except nv.NVMLError as exc:
        # Anything else (Unknown, Timeout...) is no reason to lose the rest of the snapshot.
        log.warning("NVML %s failed: %s", getattr(fn, "__name__", fn), _error_text(exc))
        return None


def _clocks_mask(nv: Nvml, handle: Any) -> int | None:
    """The clocks-event reasons bit mask; drivers before 535 only have the 'throttle' name."""
    events = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
    if events is not None:
        try:
            return events(handle)
        except nv.NVMLError_FunctionNotFound:
            pass
        except nv.NVMLError_GpuIsLost:
            raise _GpuLost from None
        except (nv.NVMLError_NotSupported, nv.NVMLError_NoPermission):
            return None
        except nv.NVMLError as exc:
            log.warning("NVML clocks event reasons failed: %s", _error_text(exc))
            return None
    return _call(nv, getattr(nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None), handle)


def _ecc(nv: Nvml, handle: Any) -> EccCounts | None:
    mode = _call(nv, nv.nvmlDeviceGetEccMode, handle)
    # [current, pending]; with ECC off the counters mean nothing, so it is n/a like GeForce.
    if not mode or not mode[0]:
        return None
    counters = [
        _call(nv, nv.nvmlDeviceGetTotalEccErrors, handle, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
              nv.NVML_VOLATILE_ECC),
        _call(nv, nv.nvmlDeviceGetTotalEccErrors, handle, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
              nv.NVML_AGGREGATE_ECC),
        _call(nv, nv.nvmlDeviceGetTotalEccErrors, handle, nv.NVML_MEMORY_ERROR_TYPE_CORRECTED,
              nv.NVML_VOLATILE_ECC),
    ]
    if any(c is None for c in counters):
        return None
    return EccCounts(volatile_uncorrected=int(counters[0]), aggregate_uncorrected=int(counters[1]),
                     volatile_corrected=int(counters[2]))


def _remapped_rows(nv: Nvml, handle: Any) -> RemappedRows | None:
    rows = _call(nv, getattr(nv, "nvmlDeviceGetRemappedRows", None), handle)
    if rows is None:
        return None
    correctable, uncorrectable, pending, failure = rows
    return RemappedRows(correctable=int(correctable), uncorrectable=int(uncorrectable),
                        pending=bool(pending), failure=bool(failure))


def _pcie(nv: Nvml, handle: Any) -> PcieLink | None:
    # Max gen/width are "possible with this device and this system" (NVML): an x16 card in an
    # x8 slot reports x8 max, so only a link trained below what the slot allows shows up.
    link = PcieLink(
        gen=_call(nv, nv.nvmlDeviceGetCurrPcieLinkGeneration, handle),
        gen_max=_call(nv, nv.nvmlDeviceGetMaxPcieLinkGeneration, handle),
        width=_call(nv, nv.nvmlDeviceGetCurrPcieLinkWidth, handle),
        width_max=_call(nv, nv.nvmlDeviceGetMaxPcieLinkWidth, handle),
        replay_counter=_call(nv, getattr(nv, "nvmlDeviceGetPcieReplayCounter", None), handle),
    )
    if all(v is None for v in (link.gen, link.gen_max, link.width, link.width_max,
                               link.replay_counter)):
        return None
    return link


def _watts(milliwatts: int | None) -> float | None:
    return None if milliwatts is None else milliwatts / 1000


def _read_gpu(nv: Nvml, index: int) -> GpuSnapshot:
    ident: dict[str, Any] = {"uuid": None, "name": None, "pci_bus_id": None}
    try:
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
        except (nv.NVMLError_GpuIsLost, nv.NVMLError_Unknown, nv.NVMLError_ResetRequired):
            # nvidia-smi's "Unable to determine the device handle for GPU ...: Unknown Error"
            # after an XID 79: the driver counts the GPU but cannot reach it.
            raise _GpuLost from None
        except nv.NVMLError as exc:
            log.warning("GPU %d: no NVML handle: %s", index, _error_text(exc))
            return GpuSnapshot(index=index, **ident)
        ident["uuid"] = _call(nv, nv.nvmlDeviceGetUUID, handle)
        ident["name"] = _call(nv, nv.nvmlDeviceGetName, handle)
        pci = _call(nv, nv.nvmlDeviceGetPciInfo, handle)
        ident["pci_bus_id"] = normalize_pci_bus_id(pci.busId) if pci is not None else None

        memory = _call(nv, nv.nvmlDeviceGetMemoryInfo, handle)
        util = _call(nv, nv.nvmlDeviceGetUtilizationRates, handle)
        mask = _clocks_mask(nv, handle)
        return GpuSnapshot(
            index=index,
            **ident,
            temperature_c=_call(nv, nv.nvmlDeviceGetTemperature, handle, nv.NVML_TEMPERATURE_GPU),
            temperature_slowdown_c=_call(nv, nv.nvmlDeviceGetTemperatureThreshold, handle,
                                         nv.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN),
            temperature_shutdown_c=_call(nv, nv.nvmlDeviceGetTemperatureThreshold, handle,
                                         nv.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN),
            fan_speed_pct=_call(nv, nv.nvmlDeviceGetFanSpeed, handle),
            power_draw_w=_watts(_call(nv, nv.nvmlDeviceGetPowerUsage, handle)),
            power_limit_w=_watts(_call(nv, nv.nvmlDeviceGetEnforcedPowerLimit, handle)),
            memory_total_bytes=int(memory.total) if memory is not None else None,
            memory_used_bytes=int(memory.used) if memory is not None else None,
            utilization_gpu_pct=util.gpu if util is not None else None,
            clocks_event_reasons=reasons_from_mask(mask) if mask is not None else None,
            ecc=_ecc(nv, handle),
            remapped_rows=_remapped_rows(nv, handle),
            pcie=_pcie(nv, handle),
        )
    except _GpuLost:
        # Keep who it is, when known; any value read before the loss is no longer true.
        return GpuSnapshot(index=index, lost=True, **ident)


def _read_host(nv: Nvml) -> tuple[dict[str, Any], list[GpuSnapshot]]:
    host = {
        "driver_version": _host_call(nv, nv.nvmlSystemGetDriverVersion),
        "cuda_driver_version": _host_call(nv, nv.nvmlSystemGetCudaDriverVersion),
        "nvml_version": _host_call(nv, nv.nvmlSystemGetNVMLVersion),
    }
    count = nv.nvmlDeviceGetCount()
    return host, [_read_gpu(nv, i) for i in range(count)]


def _host_call(nv: Nvml, fn: Callable[[], Any]) -> Any:
    try:
        return _call(nv, fn)
    except _GpuLost:  # a system-wide call does not lose a GPU, but a driver may say so
        return None


def _attach_xids(gpus: list[GpuSnapshot], source: XidSource
                 ) -> tuple[list[GpuSnapshot], str | None]:
    """The GPUs with their XIDs, and why XIDs could not be read (None when they could)."""
    try:
        events = source.read()
    except (XidSourceError, OSError) as exc:
        log.warning("XIDs from the kernel log are unavailable: %s", exc)
        return gpus, str(exc) or type(exc).__name__
    matched, unmatched = match_to_gpus(events, {g.index: g.pci_bus_id for g in gpus})
    for event in unmatched:
        log.warning("XID %d on %s matches no GPU NVML sees", event.xid, event.pci_bus_id)
    return [replace(g, xid_events=[XidEvent(xid=e.xid, at=e.at) for e in matched[g.index]])
            if g.index in matched else g for g in gpus], None


def read_snapshot(*, nvml: Nvml | None = None, host: str | None = None,
                  clock: Callable[[], datetime] | None = None,
                  xid_source: XidSource | None = None,
                  state_dir: Path | None = None, kernel_log: bool = True) -> HostSnapshot:
    """Read every GPU of this machine, and the XIDs the kernel logged since the last check.

    XIDs come from ``xid_source`` when given; else, with a ``state_dir`` and ``kernel_log``,
    from the kernel log through a cursor that this read moves on (a periodic check); else none.
    """
    taken_at = (clock or _utc_now)().astimezone(UTC).isoformat(timespec="seconds")
    host = host or socket.gethostname()
    if xid_source is None:
        xid_source = (KernelLogXidSource(state_dir, consume=True)
                      if state_dir is not None and kernel_log else NoXidSource())
    if nvml is None:
        try:
            nvml = load_pynvml()
        except ImportError as exc:
            return HostSnapshot(host=host, taken_at=taken_at, error_kind="nvml_failed",
                                error=f"pynvml is not installed ({exc}): "
                                      "pip install nvidia-ml-py")
    nv = nvml
    try:
        nv.nvmlInit()
    except nv.NVMLError as exc:
        kind, message = _init_error(nv, exc)
        return HostSnapshot(host=host, taken_at=taken_at, error=message, error_kind=kind)
    try:
        info, gpus = _read_host(nv)
    except nv.NVMLError as exc:
        return HostSnapshot(host=host, taken_at=taken_at, error_kind="nvml_failed",
                            error=f"NVML could not list the GPUs: {_error_text(exc)}")
    finally:
        try:
            nv.nvmlShutdown()
        except nv.NVMLError as exc:
            log.warning("nvmlShutdown failed: %s", _error_text(exc))
    gpus, xid_error = _attach_xids(gpus, xid_source)
    return HostSnapshot(host=host, taken_at=taken_at, gpus=gpus, xid_error=xid_error, **info)


# ---------------------------------------------------------------------------------------------
# --watch: NVML's own XID events, seen only while this process listens.

class NvmlUnavailable(HlctlError):
    """NVML could not start; ``kind`` is the snapshot's error_kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class WatchedXid:
    gpu: int
    xid: int
    at: str


def watch_xid_events(*, nvml: Nvml | None = None, timeout_ms: int = 1000,
                     stop: Callable[[], bool] = lambda: False,
                     clock: Callable[[], datetime] | None = None) -> Iterator[WatchedXid]:
    """Start NVML now, then yield critical XID events as NVML reports them until ``stop()``.

    NVML starts before this returns, so a failure raises NvmlUnavailable here rather than at
    the first event. ``stop`` is checked every ``timeout_ms``, so a watch loop ends cleanly;
    GPUs that do not support the event type are skipped, and with none left the iterator
    ends at once. Iterate it to its end (or close() it) so NVML is shut down.
    """
    nv = nvml if nvml is not None else load_pynvml()
    try:
        nv.nvmlInit()
    except nv.NVMLError as exc:
        raise NvmlUnavailable(*_init_error(nv, exc)) from None
    return _watch(nv, timeout_ms, stop, clock or _utc_now)


def _watch(nv: Nvml, timeout_ms: int, stop: Callable[[], bool],
           now: Callable[[], datetime]) -> Iterator[WatchedXid]:
    try:
        event_set = nv.nvmlEventSetCreate()
        registered = 0
        try:
            for index in range(nv.nvmlDeviceGetCount()):
                try:
                    handle = nv.nvmlDeviceGetHandleByIndex(index)
                    nv.nvmlDeviceRegisterEvents(handle, nv.nvmlEventTypeXidCriticalError,
                                                event_set)
                    registered += 1
                except nv.NVMLError as exc:
                    log.warning("GPU %d: no XID events: %s", index, _error_text(exc))
            while registered and not stop():
                try:
                    data = nv.nvmlEventSetWait(event_set, timeout_ms)
                except nv.NVMLError_Timeout:
                    continue
                if not data.eventType & nv.nvmlEventTypeXidCriticalError:
                    continue
                try:
                    gpu = nv.nvmlDeviceGetIndex(data.device)
                except nv.NVMLError:
                    gpu = -1  # the GPU that raised it may be the one that just fell off
                yield WatchedXid(gpu=gpu, xid=int(data.eventData),
                                 at=now().astimezone(UTC).isoformat(timespec="seconds"))
        finally:
            with contextlib.suppress(nv.NVMLError):
                nv.nvmlEventSetFree(event_set)
    finally:
        with contextlib.suppress(nv.NVMLError):
            nv.nvmlShutdown()


def kernel_xids_for_peek(state_dir: Path | None) -> XidSource:
    """The source ``hlctl gpu info`` uses: what the next check will see, cursor untouched."""
    return KernelLogXidSource(state_dir, consume=False)

