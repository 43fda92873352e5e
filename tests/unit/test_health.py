"""The health rules, as a table of cases (health_cases/cases.yaml) over a healthy RTX 3090."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from hlctl.config import HealthThresholds
from hlctl.gpu.health import State, evaluate_health
from hlctl.gpu.snapshot import SCHEMA, snapshot_from_dict

CASES = yaml.safe_load((Path(__file__).parent / "health_cases" / "cases.yaml").read_text())

HEALTHY_3090: dict[str, Any] = {
    "schema": SCHEMA,
    "host": "gpu01",
    "taken_at": "2026-11-29T01:00:00+00:00",
    "driver_version": "530.30.02",
    "cuda_driver_version": 12010,
    "gpus": [{
        "index": 0, "uuid": "GPU-1", "name": "NVIDIA GeForce RTX 3090",
        "pci_bus_id": "00000000:01:00.0", "temperature_c": 62,
        "temperature_slowdown_c": 91, "temperature_shutdown_c": 98, "fan_speed_pct": 45,
        "power_draw_w": 280.5, "power_limit_w": 350, "memory_total_bytes": 25769803776,
        "memory_used_bytes": 12884901888, "utilization_gpu_pct": 97,
        "clocks_event_reasons": ["sw_power_cap"], "ecc": None, "remapped_rows": None,
        "pcie": {"gen": 4, "gen_max": 4, "width": 16, "width_max": 16, "replay_counter": 0},
        "xid_events": [], "lost": False,
    }],
}


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_health_case(case: dict[str, Any]) -> None:
    raw = copy.deepcopy(HEALTHY_3090)
    if "gpu" in case:
        raw["gpus"][0] = {**raw["gpus"][0], **case["gpu"]}
    raw.update(case.get("host", {}))
    thresholds = HealthThresholds.model_validate(
        _merge(HealthThresholds().model_dump(), case.get("thresholds", {})))
    report = evaluate_health(snapshot_from_dict(raw), thresholds)
    found = {f.key: f.state.value for f in report.findings}
    assert found == case["expect"]["findings"]
    assert report.state.value == case["expect"]["state"]


def test_findings_name_gpu_value_threshold_and_action() -> None:
    raw = copy.deepcopy(HEALTHY_3090)
    raw["gpus"][0]["temperature_c"] = 93
    report = evaluate_health(snapshot_from_dict(raw), HealthThresholds())
    (finding,) = report.findings
    assert finding.gpu == 0 and finding.value == 93 and finding.threshold == 91
    assert "93 C" in finding.message and "91 C" in finding.message
    assert finding.action


def test_old_driver_message_names_the_needed_driver() -> None:
    raw = {**HEALTHY_3090, "cuda_driver_version": 11080}
    (finding,) = evaluate_health(snapshot_from_dict(raw), HealthThresholds()).findings
    assert finding.message.endswith("supports CUDA 11.8; CUDA 12.1 needs driver >= 530.30.02")


def test_na_is_neither_ok_nor_a_finding() -> None:
    report = evaluate_health(snapshot_from_dict(HEALTHY_3090), HealthThresholds())
    ecc = next(c for c in report.checks if c.check == "ecc")
    assert ecc.state is State.NA
    assert ecc not in report.findings
    assert State.NA.nagios == 0 and State.UNKNOWN.nagios == 3
