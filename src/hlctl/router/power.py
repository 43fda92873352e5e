"""The GPU power used for local cost: NVML's reading where the router can see the GPUs.

Sampled in a thread every ``interval_s`` (NVML calls block), never per request. The gpu
module is optional here: without it, or without a GPU, the configured watts apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)


def read_gpu_watts() -> float | None:
    """The summed power draw of this machine's GPUs, or None when NVML cannot say."""
    try:
        from hlctl.gpu.nvml import read_snapshot
    except ImportError:
        return None
    try:
        snapshot = read_snapshot(kernel_log=False)
    except Exception as exc:  # the gpu module's failures must not stop the router
        log.debug("NVML power read failed: %s", exc)
        return None
    draws = [g.power_draw_w for g in getattr(snapshot, "gpus", [])
             if g.power_draw_w is not None]
    return sum(draws) if draws else None


class PowerMeter:
    """``watts()`` answers at once with the last sample, or the configured fallback."""

    def __init__(self, fallback_w: float, *, use_nvml: bool, interval_s: float = 15) -> None:
        self.fallback_w = fallback_w
        self.use_nvml = use_nvml
        self.interval_s = interval_s
        self.sampled_w: float | None = None
        self._task: asyncio.Task[None] | None = None

    def watts(self) -> float:
        return self.sampled_w if self.sampled_w else self.fallback_w

    async def start(self) -> None:
        if not self.use_nvml:
            return
        self.sampled_w = await asyncio.to_thread(read_gpu_watts)
        if self.sampled_w is not None:
            self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.sampled_w = await asyncio.to_thread(read_gpu_watts)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
