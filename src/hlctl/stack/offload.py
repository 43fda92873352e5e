"""Did llama-server put the model on the GPU? (pure; reads its load log)

llama-server logs ``load_tensors: offloaded N/M layers to GPU`` and one ``<device> model
buffer size = X MiB`` line per device. The first alone does not prove a GPU: a build without
a GPU backend logs "offloaded 19/19 layers" too and keeps every buffer on the CPU (seen with
the CPU build the tests use). So the check wants both: N > 0 and model weights in a buffer
that is not the CPU's (CUDA0, ROCm0, Vulkan0, RPC0[...] ...). Needs ``--log-verbosity 4``,
which compose.yaml sets; /props says nothing about offload.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_BUFFER = re.compile(r"load_tensors:\s+(\S+) model buffer size\s*=\s*([\d.]+) MiB")
MIB = 1 << 20


@dataclass(frozen=True)
class OffloadReport:
    offloaded: int | None  # layers, from the log
    total: int | None
    device_bytes: dict[str, int] = field(default_factory=dict)  # model buffers off the CPU
    host_bytes: dict[str, int] = field(default_factory=dict)  # CPU / CPU_Mapped / CPU_REPACK

    @property
    def seen(self) -> bool:
        return self.offloaded is not None or bool(self.device_bytes or self.host_bytes)


@dataclass(frozen=True)
class OffloadVerdict:
    ok: bool
    message: str


def _is_host(name: str) -> bool:
    return name.upper().startswith("CPU") or name.lower() in ("host", "cuda_host")


def parse_offload(log: str) -> OffloadReport:
    """The last model load in a llama-server log (a restarted container logs several)."""
    start = log.rfind("load_tensors: loading model tensors")
    if start >= 0:
        log = log[start:]
    matches = _OFFLOADED.findall(log)
    offloaded, total = (int(matches[-1][0]), int(matches[-1][1])) if matches else (None, None)
    device: dict[str, int] = {}
    host: dict[str, int] = {}
    for name, mib in _BUFFER.findall(log):
        target = host if _is_host(name) else device
        target[name] = target.get(name, 0) + int(float(mib) * MIB)
    return OffloadReport(offloaded, total, device, host)


def _mib(n: int) -> str:
    return f"{n / MIB:.0f} MiB"


def check_offload(report: OffloadReport, n_gpu_layers: int) -> OffloadVerdict:
    """A CPU fallback while layers were asked for is a failure, not a slow success."""
    if n_gpu_layers == 0:
        return OffloadVerdict(True, "n_gpu_layers is 0: the model runs on the CPU as configured")
    if not report.seen:
        return OffloadVerdict(False, (
            "llama-server's log shows no model load (is --log-verbosity 4 set?): cannot tell "
            "whether the layers went to the GPU"))
    layers = (f"offloaded {report.offloaded}/{report.total} layers"
              if report.offloaded is not None else "no offload line")
    if not report.offloaded or not report.device_bytes:
        where = ", ".join(f"{k} {_mib(v)}" for k, v in report.host_bytes.items()) or "none"
        return OffloadVerdict(False, (
            f"llama-server fell back to the CPU: {layers}, no model buffer on a GPU "
            f"(host buffers: {where}) although n_gpu_layers={n_gpu_layers}; check the NVIDIA "
            "runtime and `hlctl logs llama-server` for CUDA errors"))
    devices = ", ".join(f"{k} {_mib(v)}" for k, v in report.device_bytes.items())
    return OffloadVerdict(True, f"{layers} ({devices})")
