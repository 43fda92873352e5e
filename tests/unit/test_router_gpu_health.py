"""The router's view of the local GPU's health: the recorded result, judged and re-read cheaply.

The files here are written by the gpu module's own record_result (the writer the
gpu_healthcheck timer uses), so the shape read is the shape written.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from hlctl.gpu.check import record_result
from hlctl.gpu.health import evaluate_health
from hlctl.gpu.snapshot import snapshot_from_dict
from hlctl.router.config import RouterSettings
from hlctl.router.gpu_health import (
    CRITICAL,
    OK,
    UNKNOWN,
    HealthFile,
    classify,
)

NOW = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)
SNAPSHOTS = Path(__file__).parents[1] / "fixtures" / "snapshots"


def _record(state_dir: Path, snapshot: str, exit_code: int, at: datetime) -> Path:
    from hlctl.config import LabConfig

    data = json.loads((SNAPSHOTS / f"{snapshot}.json").read_text())
    report = evaluate_health(snapshot_from_dict(data), LabConfig().health)
    return record_result(state_dir, report, exit_code, at.isoformat(timespec="seconds"),
                         "test")


class Clocks:
    def __init__(self) -> None:
        self.now = NOW
        self.mono = 100.0

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono += seconds


def _file(path: Path, clocks: Clocks, stale_after_s: float = 180) -> HealthFile:
    return HealthFile(path, stale_after_s=stale_after_s, recheck_s=1.0,
                      clock=lambda: clocks.now, monotonic=lambda: clocks.mono)


@pytest.mark.parametrize(("result", "code", "why"), [
    ({"exit_code": 2, "checked_at": "2026-11-29T05:59:00+00:00"}, CRITICAL, "critical"),
    ({"exit_code": 0, "checked_at": "2026-11-29T05:59:00+00:00"}, OK, "ok"),
    ({"exit_code": 2, "checked_at": "2026-11-29T05:56:59+00:00"}, UNKNOWN, "stale"),
    ({"exit_code": 2, "checked_at": "2026-11-29T05:59:00"}, UNKNOWN, "malformed"),  # no zone
    ({"exit_code": 2}, UNKNOWN, "malformed"),
    ({"exit_code": "2", "checked_at": "2026-11-29T05:59:00+00:00"}, UNKNOWN, "malformed"),
    ({"exit_code": True, "checked_at": "2026-11-29T05:59:00+00:00"}, UNKNOWN, "malformed"),
    ({"exit_code": 7, "checked_at": "2026-11-29T05:59:00+00:00"}, UNKNOWN, "malformed"),
    (None, UNKNOWN, "missing"),
])
def test_classify(result: dict[str, Any] | None, code: int, why: str) -> None:
    state = classify(result, NOW, stale_after_s=180)
    assert (state.code, state.why) == (code, why)
    assert state.critical is (code == CRITICAL)


def test_critical_result_from_the_real_writer_is_critical(tmp_path: Path) -> None:
    clocks = Clocks()
    path = _record(tmp_path, "thermal_slowdown", 2, NOW - timedelta(seconds=30))
    state = _file(path, clocks).current()
    assert state.critical and state.age_s == 30


def test_missing_then_written_then_stale(tmp_path: Path) -> None:
    clocks = Clocks()
    health = _file(tmp_path / "health" / "last.json", clocks)
    assert (health.current().code, health.current().why) == (UNKNOWN, "missing")
    _record(tmp_path, "thermal_slowdown", 2, NOW)
    assert health.current().why == "missing", "not looked at again within recheck_s"
    clocks.advance(1.0)
    assert health.current().critical
    # Nobody writes a new result: it goes stale by itself, without another read.
    reads = health.reads
    clocks.advance(181)
    state = health.current()
    assert (state.code, state.why) == (UNKNOWN, "stale") and health.reads == reads


def test_read_only_when_the_file_changes(tmp_path: Path) -> None:
    clocks = Clocks()
    path = _record(tmp_path, "thermal_slowdown", 2, NOW)
    health = _file(path, clocks)
    for _ in range(1000):  # a burst of requests within one second: one stat, one read
        assert health.current().critical
    assert health.reads == 1
    for _ in range(5):
        clocks.advance(1.0)
        health.current()
    assert health.reads == 1, "unchanged mtime: no re-read"
    _record(tmp_path, "healthy_3090", 0, clocks.now)
    clocks.advance(1.0)
    assert health.current().code == OK and health.reads == 2


def test_garbage_and_unreadable_files_are_unknown(tmp_path: Path) -> None:
    clocks = Clocks()
    path = tmp_path / "last.json"
    path.write_text("{not json")
    health = _file(path, clocks)
    assert (health.current().code, health.current().why) == (UNKNOWN, "malformed")
    path.write_text("[2]")
    os.utime(path, ns=(1, 1))
    clocks.advance(1)
    assert health.current().why == "malformed"
    directory = tmp_path / "dir.json"
    directory.mkdir()
    assert _file(directory, clocks).current().why == "unreadable"


def test_settings_default_and_documented_in_the_example() -> None:
    from hlctl.templates import example_config

    settings = RouterSettings()
    assert settings.gpu_health.divert and settings.gpu_health.path is None
    example = yaml.safe_load(example_config())["router"]
    assert set(example["gpu_health"]) == set(type(settings.gpu_health).model_fields)
