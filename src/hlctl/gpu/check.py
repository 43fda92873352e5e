"""One health run: get a snapshot (live or recorded), evaluate it, record the result.

The latest result is kept in the state directory (``health/last.json``) with its time, so the
fleet status can show a stale result as stale.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from hlctl.atomicfile import write_text_atomic
from hlctl.gpu.health import HealthReport
from hlctl.gpu.snapshot import HostSnapshot, SnapshotError, snapshot_from_dict

RESULT_SCHEMA = "hlctl.health/1"
MAX_SNAPSHOT_BYTES = 16 * 1024 * 1024  # a recorded snapshot is a few KB; refuse absurd files


def load_snapshot_file(path: Path) -> HostSnapshot:
    """Read a recorded snapshot; raise SnapshotError with one clear sentence."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SNAPSHOT_BYTES + 1)
    except OSError as exc:
        raise SnapshotError(f"{path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_SNAPSHOT_BYTES:
        raise SnapshotError(f"{path}: larger than {MAX_SNAPSHOT_BYTES} bytes, not a snapshot")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"{path}: not JSON ({exc})") from None
    try:
        return snapshot_from_dict(data)
    except SnapshotError as exc:
        raise SnapshotError(f"{path}: {exc}") from None


def report_to_dict(report: HealthReport, exit_code: int) -> dict[str, Any]:
    """The `hlctl health --json` document (schema hlctl.health/1)."""
    return {
        "schema": RESULT_SCHEMA,
        "host": report.host,
        "taken_at": report.taken_at,
        "state": report.state.value,
        "exit_code": exit_code,
        "checks": [
            {"key": c.key, "gpu": c.gpu, "check": c.check, "state": c.state.value,
             "value": c.value, "threshold": c.threshold, "message": c.message,
             "action": c.action}
            for c in report.checks
        ],
        "findings": [c.key for c in report.findings],
    }


def write_json_atomic(path: Path, data: Any) -> None:
    """Write then rename, so a reader never sees half a file."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


def record_result(state_dir: Path, report: HealthReport, exit_code: int,
                  checked_at: str, source: str) -> Path:
    """Keep the latest result for `hlctl status`; source is "live" or the --from path."""
    path = state_dir / "health" / "last.json"
    write_json_atomic(path, {**report_to_dict(report, exit_code), "checked_at": checked_at,
                             "source": source})
    return path


def read_last_result(state_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state_dir / "health" / "last.json").read_text())
    except (OSError, ValueError):
        return None


def result_age_s(result: Mapping[str, Any], now: datetime) -> float | None:
    """Seconds since a recorded result was checked; None without a time with a zone
    (an unreadable time must not pass for a fresh one)."""
    try:
        checked = datetime.fromisoformat(str(result.get("checked_at")))
    except ValueError:
        return None
    if checked.tzinfo is None:
        return None
    return (now - checked).total_seconds()
