"""Will the NVIDIA runtime start this image on this driver? (pure)

An image built on the CUDA base images carries ``NVIDIA_REQUIRE_CUDA``, e.g.
``cuda>=12.8 brand=tesla,driver>=470,driver<471 brand=unknown,driver>=470,driver<471``.
libnvidia-container reads it as alternatives separated by spaces, each a comma-separated list
of conditions that must all hold; the container starts when one alternative holds. The
``brand=`` alternatives are forward-compatibility exceptions for datacenter drivers; the
snapshot does not carry the card's brand, so such an alternative counts as not met (the common
GeForce case: only ``cuda>=`` decides). ``NVIDIA_DISABLE_REQUIRE`` switches the check off, as
the runtime does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from hlctl.gpu.snapshot import cuda_version_text

_COND = re.compile(r"^(cuda|driver|arch|brand)(>=|<=|=|>|<)(.+)$")


@dataclass(frozen=True)
class Condition:
    key: str  # cuda, driver, arch, brand
    op: str
    value: str

    def text(self) -> str:
        return f"{self.key}{self.op}{self.value}"


@dataclass(frozen=True)
class CudaRequirement:
    alternatives: tuple[tuple[Condition, ...], ...]
    disabled: bool = False
    raw: str = ""

    @property
    def min_cuda(self) -> int | None:
        """The lowest CUDA that any brand-free alternative asks for (NVML integer form)."""
        found = [cuda_int(c.value) for alt in self.alternatives for c in alt
                 if c.key == "cuda" and c.op in (">=", "=", ">")
                 and not any(o.key == "brand" for o in alt)]
        return min(found) if found else None


@dataclass(frozen=True)
class CudaVerdict:
    ok: bool
    message: str


def cuda_int(text: str) -> int:
    """"12.8" -> 12080, "12.1.1" -> 12010 (NVML's cuda_driver_version form; patch ignored)."""
    parts = text.strip().split(".")
    try:
        major = int(parts[0])
        minor = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise ValueError(f"not a CUDA version: {text!r}") from None
    return major * 1000 + minor * 10


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def parse_requirement(raw: str, disable: str | None = None) -> CudaRequirement:
    """Parse NVIDIA_REQUIRE_CUDA; raise ValueError naming the first token it cannot read."""
    alternatives = []
    for token in raw.split():
        conditions = []
        for part in token.split(","):
            match = _COND.match(part.strip())
            if match is None:
                raise ValueError(f"NVIDIA_REQUIRE_CUDA: cannot read {part!r}")
            conditions.append(Condition(*match.groups()))
        alternatives.append(tuple(conditions))
    disabled = (disable or "").strip().lower() in ("1", "true", "yes")
    return CudaRequirement(alternatives=tuple(alternatives), disabled=disabled, raw=raw)


def requirement_from_env(env: Iterable[str]) -> CudaRequirement | None:
    """From an image's Config.Env list; None when the image states no CUDA requirement."""
    values = dict(item.split("=", 1) for item in env if "=" in item)
    raw = values.get("NVIDIA_REQUIRE_CUDA")
    if raw is None:
        return None
    return parse_requirement(raw, values.get("NVIDIA_DISABLE_REQUIRE"))


def _compare(have: tuple[int, ...] | int, op: str, want: tuple[int, ...] | int) -> bool:
    return {">=": have >= want, ">": have > want, "<=": have <= want,  # type: ignore[operator]
            "<": have < want, "=": have == want}[op]  # type: ignore[operator]


def _holds(cond: Condition, cuda_driver: int, driver_version: str | None) -> bool | None:
    """True/False, or None when the snapshot cannot tell (brand, arch, unknown driver)."""
    if cond.key == "cuda":
        return _compare(cuda_driver, cond.op, cuda_int(cond.value))
    if cond.key == "driver" and driver_version:
        have = _version_tuple(driver_version)
        want = _version_tuple(cond.value)
        return _compare(have[:len(want)], cond.op, want)
    return None


def check_cuda(requirement: CudaRequirement | None, cuda_driver: int | None,
               driver_version: str | None, image: str) -> CudaVerdict:
    """Compare an image's requirement with the host driver; one sentence either way."""
    if requirement is None or not requirement.alternatives:
        return CudaVerdict(True, f"{image} states no CUDA requirement")
    if requirement.disabled:
        return CudaVerdict(True, f"{image} disables the CUDA requirement check")
    if cuda_driver is None:
        return CudaVerdict(False, f"cannot check {image} (needs {requirement.raw.split()[0]}): "
                                  "the host's snapshot has no CUDA driver version")
    for alternative in requirement.alternatives:
        if all(_holds(c, cuda_driver, driver_version) is True for c in alternative):
            return CudaVerdict(True, f"{image} needs {' '.join(c.text() for c in alternative)}; "
                                     f"the driver supports CUDA {cuda_version_text(cuda_driver)}")
    need = requirement.min_cuda
    need_text = f"CUDA {cuda_version_text(need)}" if need else requirement.raw
    return CudaVerdict(False, (
        f"image {image} needs {need_text} but the host's driver "
        f"{driver_version or ''} supports CUDA {cuda_version_text(cuda_driver)}; "
        "build the image for this CUDA (stack.cuda_version) or update the driver").replace(
            "driver  supports", "driver supports"))
