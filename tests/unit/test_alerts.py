"""Alerting rules as a table, the payloads, and the SQLite store (real SQLite, no network)."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hlctl.config import Alerts, HealthThresholds
from hlctl.gpu.alerts import (
    DB_NAME,
    AlertStore,
    Transition,
    alert_payload,
    heartbeat_url,
    next_states,
    notify,
    ntfy_message,
    state_changes,
)
from hlctl.gpu.health import CheckResult, HealthReport, State, evaluate_health
from hlctl.gpu.snapshot import GpuSnapshot, HostSnapshot

OK, WARN, CRIT, UNK, NA = State.OK, State.WARNING, State.CRITICAL, State.UNKNOWN, State.NA
AT = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)


def _report(*states: tuple[str, State], host: str = "gpu01") -> HealthReport:
    checks = []
    for name, state in states:
        gpu, check = name.split(".")
        checks.append(CheckResult(None if gpu == "host" else int(gpu[3:]), check, state,
                                  86 if state is not OK else 60, 85, f"{name} is {state.value}",
                                  "cool it" if state is not OK else ""))
    return HealthReport(host=host, taken_at="2026-11-29T02:00:00+00:00", checks=checks)


# previous stored state (None: never seen), current state, expected (old, new) or None
TABLE = [
    ("first run ok is silent", None, OK, None),
    ("first run warning alerts", None, WARN, (None, WARN)),
    ("first run critical alerts", None, CRIT, (None, CRIT)),
    ("first run unknown alerts", None, UNK, (None, UNK)),
    ("first run n/a is silent", None, NA, None),
    ("ok to warning", OK, WARN, (OK, WARN)),
    ("ok to critical", OK, CRIT, (OK, CRIT)),
    ("warning to critical", WARN, CRIT, (WARN, CRIT)),
    ("critical to warning", CRIT, WARN, (CRIT, WARN)),
    ("critical to ok", CRIT, OK, (CRIT, OK)),
    ("warning to ok", WARN, OK, (WARN, OK)),
    ("unknown to ok", UNK, OK, (UNK, OK)),
    ("ok stays ok", OK, OK, None),
    ("warning stays warning", WARN, WARN, None),
    ("critical stays critical", CRIT, CRIT, None),
    ("warning to n/a is silent", WARN, NA, None),
    ("ok to n/a is silent", OK, NA, None),
]


@pytest.mark.parametrize(("previous", "current", "expected"), [c[1:] for c in TABLE],
                         ids=[c[0] for c in TABLE])
def test_state_change_table(previous: State | None, current: State,
                            expected: tuple[State | None, State] | None) -> None:
    stored = {} if previous is None else {"gpu0.temperature": previous}
    changes = state_changes(stored, _report(("gpu0.temperature", current)))
    assert [(t.old, t.new) for t in changes] == ([expected] if expected else [])
    if expected:
        assert changes[0].key == "gpu0.temperature" and changes[0].gpu == 0


def test_only_the_changed_check_alerts() -> None:
    stored = {"gpu0.temperature": OK, "gpu0.fan": OK, "host.cuda_driver": OK}
    report = _report(("host.cuda_driver", OK), ("gpu0.temperature", WARN), ("gpu0.fan", OK),
                     ("gpu1.temperature", OK))
    assert [t.key for t in state_changes(stored, report)] == ["gpu0.temperature"]


def test_na_keeps_its_stored_state_and_absent_checks_are_forgotten() -> None:
    stored = {"gpu0.ecc": WARN, "gpu1.temperature": CRIT}
    report = _report(("gpu0.ecc", NA), ("gpu0.fan", OK))
    assert next_states(stored, report) == {"gpu0.ecc": WARN, "gpu0.fan": OK}
    # a check that comes back from n/a in the same state does not page again
    assert state_changes(next_states(stored, report), _report(("gpu0.ecc", WARN))) == []


def test_a_failure_that_comes_back_after_recovery_alerts_again(tmp_path: Path) -> None:
    """NVML failing, recovering and failing again pages each change, recovery included."""
    broken = HostSnapshot(host="gpu01", taken_at="2026-11-29T02:00:00Z",
                          error="Driver/library version mismatch", error_kind="driver_mismatch")
    healthy = HostSnapshot(host="gpu01", taken_at="2026-11-29T02:01:00Z",
                           cuda_driver_version=12010,
                           gpus=[GpuSnapshot(index=0, uuid="GPU-1", name="x", pci_bus_id="0")])
    store = AlertStore(tmp_path / DB_NAME)
    try:
        runs = [store.apply(evaluate_health(s, HealthThresholds()), [], AT)
                for s in (broken, healthy, healthy, broken)]
    finally:
        store.close()
    nvml = [[(t.old, t.new) for t in run if t.key == "host.nvml"] for run in runs]
    assert nvml == [[(None, CRIT)], [(CRIT, OK)], [], [(OK, CRIT)]]


def test_two_runs_at_once_alert_a_change_once(tmp_path: Path) -> None:
    report = _report(("gpu0.temperature", CRIT))
    barrier = threading.Barrier(4)
    results: list[list[Transition]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            store = AlertStore(tmp_path / DB_NAME)
            try:
                barrier.wait()
                results.append(store.apply(report, ["ops"], AT))
            finally:
                store.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(len(r) for r in results) == [0, 0, 0, 1]
    store = AlertStore(tmp_path / DB_NAME)
    try:
        assert len(store.pending()) == 1
    finally:
        store.close()


def test_json_payload_has_the_documented_keys() -> None:
    (t,) = state_changes({"gpu0.temperature": OK}, _report(("gpu0.temperature", CRIT)))
    payload = alert_payload(t, host="gpu01", at=AT)
    assert payload == {
        "schema": "hlctl.alert/1", "host": "gpu01", "key": "gpu0.temperature",
        "check": "temperature", "gpu": 0, "old_state": "ok", "new_state": "critical",
        "message": "gpu0.temperature is critical", "action": "cool it", "value": 86,
        "threshold": 85, "time": "2026-11-29T02:00:00+00:00",
        "summary": "gpu01: GPU 0 temperature OK -> CRITICAL",
    }
    json.dumps(payload)  # must serialise as is


@pytest.mark.parametrize(("old", "new", "priority", "tag"), [
    (OK, CRIT, "5", "rotating_light"), (OK, WARN, "4", "warning"), (OK, UNK, "4", "grey_question"),
    (CRIT, OK, "2", "white_check_mark"),
])
def test_ntfy_priority_and_tags_follow_severity(old: State, new: State, priority: str,
                                                tag: str) -> None:
    t = Transition("host.cuda_driver", None, "cuda_driver", old, new, "driver too old",
                   "upgrade", 11080, 12010)
    body, headers = ntfy_message(alert_payload(t, host="gpu01", at=AT))
    assert headers["Priority"] == priority
    assert headers["Tags"].split(",")[0] == tag
    assert headers["Title"] == f"gpu01: cuda_driver {new.value.upper()}"
    assert body.splitlines()[0] == "driver too old"
    assert f"(was {old.value.upper()})" in body


def test_ntfy_title_is_ascii_for_the_header() -> None:
    t = Transition("gpu0.fan", 0, "fan", None, WARN, "Lüfter steht", "", 0, 60)
    body, headers = ntfy_message(alert_payload(t, host="gpü01", at=AT))
    headers["Title"].encode("ascii")
    assert "Lüfter steht" in body and "(first check)" in body


def test_heartbeat_url_appends_the_exit_code() -> None:
    assert heartbeat_url("https://hc-ping.com/abc", 2) == "https://hc-ping.com/abc/2"
    assert heartbeat_url("https://hc-ping.com/abc/", 0) == "https://hc-ping.com/abc/0"


def test_store_queues_one_row_per_change_and_webhook(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / DB_NAME)
    try:
        first = store.apply(_report(("gpu0.temperature", WARN), ("gpu0.fan", OK)),
                            ["json", "phone"], AT)
        assert [(t.key, t.old, t.new) for t in first] == [("gpu0.temperature", None, WARN)]
        assert store.states() == {"gpu0.temperature": WARN, "gpu0.fan": OK}
        assert [(p.webhook, p.key) for p in store.pending()] == [
            ("json", "gpu0.temperature"), ("phone", "gpu0.temperature")]
        again = store.apply(_report(("gpu0.temperature", WARN), ("gpu0.fan", OK)),
                            ["json", "phone"], AT)
        assert again == []
        assert len(store.pending()) == 2
    finally:
        store.close()
    mode = sqlite3.connect(tmp_path / DB_NAME).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_notify_without_a_usable_state_dir_reports_instead_of_raising(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    result = notify(_report(("gpu0.temperature", CRIT)), Alerts(), blocker, exit_code=2,
                    clock=lambda: AT)
    assert result.errors and "unusable" in result.errors[0]
    assert result.warnings[0].startswith("alerts: state store")
