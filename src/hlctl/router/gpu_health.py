"""The local GPU's health as the router sees it: the host's latest `hlctl health` result.

The gpu_healthcheck timer runs `hlctl health` every minute, which records
``<state_dir>/health/last.json`` (hlctl.gpu.check.record_result: ``exit_code`` in Nagios
terms, 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, and ``checked_at``, an ISO time with its
zone). The router only acts on a fresh CRITICAL: a missing, unreadable, malformed or stale
file means "unknown", and unknown never diverts traffic; a router that cannot see the GPU's
health must behave as it did before it could.

The file is looked at cheaply: at most one ``stat`` per ``recheck_s`` and a read only when
its mtime, size or inode changed (the writer replaces it by rename), never per request.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hlctl.gpu.check import result_age_s

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
MAX_RESULT_BYTES = 1024 * 1024  # a result is a few KB; refuse to slurp anything absurd


@dataclass(frozen=True)
class GpuHealthState:
    """The latest result as routing uses it. ``code`` is the Nagios exit code."""

    code: int = UNKNOWN
    why: str = "missing"  # ok | warning | critical | missing | unreadable | malformed | stale
    age_s: float | None = None

    @property
    def critical(self) -> bool:
        return self.code == CRITICAL


UNKNOWN_STATE = GpuHealthState()
_NAMES = {OK: "ok", WARNING: "warning", CRITICAL: "critical", UNKNOWN: "unknown"}


def classify(result: Mapping[str, Any] | None, now: datetime,
             stale_after_s: float) -> GpuHealthState:
    """A recorded result, judged at ``now``. Pure: the file's I/O is HealthFile's."""
    if result is None:
        return UNKNOWN_STATE
    code = result.get("exit_code")
    age = result_age_s(result, now)
    if not isinstance(code, int) or isinstance(code, bool) or code not in _NAMES \
            or age is None:
        # Without a code or a time there is nothing to trust, let alone divert on.
        return GpuHealthState(UNKNOWN, "malformed")
    if age > stale_after_s:
        # The timer stopped (or the mount went away): an old CRITICAL is not today's.
        return GpuHealthState(UNKNOWN, "stale", age)
    return GpuHealthState(code, _NAMES[code], age)


class HealthFile:
    """The health result file, re-read only when it changes; ``current()`` is cheap."""

    def __init__(self, path: Path, *, stale_after_s: float, recheck_s: float = 1.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.stale_after_s = stale_after_s
        self.recheck_s = recheck_s
        self.clock = clock
        self.monotonic = monotonic
        self.reads = 0  # file reads so far: tests check it is not one per request
        self._next_check = float("-inf")
        self._signature: tuple[int, int, int] | None = None
        self._result: Mapping[str, Any] | None = None
        self._why_unread = "missing"
        self._state = UNKNOWN_STATE

    def current(self) -> GpuHealthState:
        now = self.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.recheck_s
            self._refresh()
        return self._state

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            self._signature, self._result = None, None
            self._why_unread = "missing" if isinstance(exc, FileNotFoundError) else "unreadable"
        else:
            signature = (st.st_mtime_ns, st.st_size, st.st_ino)
            if signature != self._signature:
                self._signature = signature
                self._result = self._read()
        if self._result is None:
            self._state = GpuHealthState(UNKNOWN, self._why_unread)
            return
        # Judged again at every recheck, without reading: a result goes stale by itself.
        self._state = classify(self._result, self.clock(), self.stale_after_s)

    def _read(self) -> Mapping[str, Any] | None:
        self.reads += 1
        try:
            with self.path.open("rb") as handle:
                raw = handle.read(MAX_RESULT_BYTES + 1)
        except OSError:
            self._why_unread = "unreadable"
            return None
        try:
            data = json.loads(raw) if len(raw) <= MAX_RESULT_BYTES else None
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            self._why_unread = "malformed"
            return None
        return data
