"""Fleet logic as pure functions: rows from each host's answer, worst exit code, staleness,
host selection, and the host-side summaries (containers, models, router today)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hlctl.errors import UsageError
from hlctl.fleet.local_status import (
    container_lines,
    health_summary,
    models_summary,
    probe_engine,
    router_today,
)
from hlctl.fleet.report import (
    health_from_run,
    pull_exit_code,
    pull_from_run,
    row_from_run,
    select_hosts,
    status_exit_code,
    worst_exit_code,
)
from hlctl.fleet.transport import HostRun
from hlctl.inventory import parse_inventory
from hlctl.models.store import FileState
from hlctl.router.ledger import LEDGER_FILE, LedgerRow, connect
from tests.fixtures.docker_engine_sim import docker_engine

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _run(host: str, stdout: object = "", code: int | None = 0, *, reachable: bool = True,
         error: str | None = None, stderr: str = "") -> HostRun:
    text = stdout if isinstance(stdout, str) else json.dumps(stdout)
    return HostRun(host, reachable, code, text, stderr, 0.5, error)


STATUS = {
    "schema": "hlctl.status/1", "host": "gpu01", "gpu_error": None,
    "gpus": [{"index": 0, "name": "RTX 3090", "temperature_c": 91, "utilization_gpu_pct": 99,
              "memory_used_bytes": 20 << 30, "memory_total_bytes": 24 << 30,
              "health": "critical"}],
    "docker": {"reachable": True},
    "containers": [{"name": "router", "state": "running", "health": "healthy",
                    "image": "hlctl/router:0.1.0"}],
    "health": {"state": "critical", "exit_code": 2, "checked_at": "2026-03-01T11:59:00+00:00",
               "age_s": 60.0, "stale": False},
    "models": {"ok": 1, "total": 2}, "router": {"requests": 7, "cost_usd": 0.12},
}


def test_row_from_a_status_answer() -> None:
    row = row_from_run(_run("gpu01", STATUS))
    assert row.reachable and row.error is None and row.hostname == "gpu01"
    assert row.gpus[0].temperature_c == 91 and row.gpus[0].health == "critical"
    assert (row.health, row.health_exit_code, row.health_stale) == ("critical", 2, False)
    assert row.containers and row.containers[0].health == "healthy"
    assert (row.models_ok, row.models_total, row.router_requests) == (1, 2, 7)


def test_rows_for_unreachable_and_broken_hosts() -> None:
    gone = row_from_run(_run("b", code=None, reachable=False, error="no answer within 5s"))
    assert not gone.reachable and gone.error == "no answer within 5s"
    broken = row_from_run(_run("c", "Traceback...\n", 1, stderr="boom: bad config\n"))
    assert broken.reachable and broken.error == "remote hlctl exited 1: boom: bad config"
    other = row_from_run(_run("d", {"schema": "something/1"}))
    assert other.error == "not an hlctl status document"
    ok = row_from_run(_run("a", STATUS))
    assert status_exit_code([ok]) == 0
    assert status_exit_code([ok, gone]) == 1 and status_exit_code([ok, broken]) == 1


@pytest.mark.parametrize(("codes", "worst"), [
    ([0, 0], 0), ([0, 1], 1), ([1, 3], 3), ([3, 2], 2), ([2, 1, 0, 3], 2), ([], 3),
    ([0, 7], 3),  # a code outside Nagios' four is UNKNOWN
])
def test_worst_exit_code(codes: list[int], worst: int) -> None:
    assert worst_exit_code(codes) == worst


def test_health_from_answers() -> None:
    doc = {"state": "critical", "exit_code": 2, "findings": ["gpu0.temperature"],
           "checks": [{"key": "gpu0.temperature", "state": "critical",
                       "message": "91 C, thermal slowdown"}]}
    hot = health_from_run(_run("a", doc, 2))
    assert (hot.exit_code, hot.state) == (2, "critical")
    assert hot.summary == "CRITICAL 91 C, thermal slowdown"
    fine = health_from_run(_run("b", {"state": "ok", "findings": [], "checks": []}, 0))
    assert fine.exit_code == 0 and fine.summary == "all checks OK"
    plain = health_from_run(_run("c", "GPU UNKNOWN - NVML: driver not loaded\n", 3))
    assert plain.exit_code == 3 and plain.summary == "GPU UNKNOWN - NVML: driver not loaded"
    gone = health_from_run(_run("d", code=None, reachable=False, error="Connection refused"))
    assert (gone.exit_code, gone.reachable) == (3, False)
    assert gone.summary == "unreachable: Connection refused"
    assert worst_exit_code([hot.exit_code, gone.exit_code, fine.exit_code]) == 2


def test_pull_from_answers() -> None:
    doc = {"models": [{"files": [{"downloaded": 100}, {"downloaded": 0}]}, {"files": []}]}
    done = pull_from_run(_run("a", doc))
    assert done.ok and (done.models, done.files, done.downloaded_bytes) == (2, 2, 100)
    failed = pull_from_run(_run("b", "", 1, stderr="error: hub unreachable\n"))
    assert not failed.ok and failed.error == "error: hub unreachable"
    gone = pull_from_run(_run("c", code=None, reachable=False, error="timed out"))
    assert not gone.ok and gone.error == "unreachable: timed out"
    assert pull_exit_code([done]) == 0 and pull_exit_code([done, failed]) == 1


def test_select_hosts() -> None:
    inventory = parse_inventory({"all": {"children": {
        "gpu_hosts": {"hosts": {"gpu[01:02]": None}},
        "other": {"hosts": {"nas": None}}}}}, Path("hosts.yml"))
    assert [h.name for h in select_hosts(inventory, [], True)] == ["gpu01", "gpu02"]
    assert [h.name for h in select_hosts(inventory, ["nas", "gpu02"], False)] == ["nas", "gpu02"]
    with pytest.raises(UsageError, match="not both"):
        select_hosts(inventory, ["nas"], True)
    with pytest.raises(UsageError, match="unknown host 'gpu09'"):
        select_hosts(inventory, ["gpu09"], False)
    bare = parse_inventory({"all": {"hosts": {"x": None}}}, Path("h.yml"))
    with pytest.raises(UsageError, match="no hosts in group gpu_hosts"):
        select_hosts(bare, [], True)


def test_health_summary_age_and_staleness() -> None:
    last = {"state": "warning", "exit_code": 1, "findings": ["a"], "source": "live",
            "checked_at": (NOW - timedelta(seconds=100)).isoformat()}
    fresh = health_summary(last, NOW, stale_after_s=180)
    assert fresh and fresh.age_s == 100 and not fresh.stale and fresh.findings == 1
    old = health_summary(last, NOW + timedelta(minutes=5), stale_after_s=180)
    assert old and old.stale and old.age_s == 400
    undated = health_summary({"state": "ok", "checked_at": "yesterday"}, NOW, 180)
    assert undated and undated.stale and undated.age_s is None
    assert health_summary(None, NOW, 180) is None


def test_container_lines_read_health_from_status() -> None:
    lines = container_lines([
        {"Names": ["/router"], "State": "running", "Status": "Up 1 hour (unhealthy)",
         "Image": "r:1"},
        {"Names": ["/llama-server"], "State": "running",
         "Status": "Up 5 seconds (health: starting)", "Image": "l:1"},
        {"Names": ["/old"], "State": "exited", "Status": "Exited (0) 2 days ago", "Image": "o"},
    ])
    assert [(c.name, c.state, c.health) for c in lines] == [
        ("llama-server", "running", "starting"), ("old", "exited", None),
        ("router", "running", "unhealthy")]


def test_probe_engine_lists_containers_from_the_engine(tmp_path: Path) -> None:
    """The Docker engine simulator on a unix socket, through the real docker SDK."""
    sock = tmp_path / "docker.sock"
    raw = [{"Id": "a" * 64, "Names": ["/llama-server"], "Image": "hlctl/llama-server:b4000",
            "State": "running", "Status": "Up 2 hours (healthy)"},
           {"Id": "b" * 64, "Names": ["/router"], "Image": "hlctl/router:0.1.0",
            "State": "restarting", "Status": "Restarting (1) 3 seconds ago"}]
    with docker_engine(sock, raw):
        docker, containers = probe_engine({"DOCKER_HOST": f"unix://{sock}"})
    assert docker.reachable and docker.containers_running == 1
    assert containers is not None
    assert [(c.name, c.state, c.health) for c in containers] == [
        ("llama-server", "running", "healthy"), ("router", "restarting", None)]
    _, none = probe_engine({"DOCKER_HOST": f"unix://{tmp_path}/no.sock"})
    assert none is None


def test_models_summary_counts_locked_files_only() -> None:
    def state(repo: str | None, s: str) -> FileState:
        return FileState(repo, "m", Path("x"), s, 1, 1, None, None)

    summary = models_summary(Path("models.lock"), [state("a/b", "ok"), state("a/b", "missing"),
                                                   state(None, "unknown")])
    assert (summary.ok, summary.total) == (1, 2)
    assert summary.states == {"ok": 1, "missing": 1, "unknown": 1}


def test_router_today_reads_only_today(tmp_path: Path) -> None:
    assert router_today(tmp_path, NOW).requests == 0  # no ledger yet: nothing served
    db = connect(tmp_path / LEDGER_FILE)

    def row(ts: datetime, route: str, cost: float) -> LedgerRow:
        return LedgerRow(ts.timestamp(), "k", "auto", route, "r", "u", "m", 10, 5, 100.0,
                         None, 200, cost, False, False)

    rows = [row(NOW - timedelta(hours=1), "local", 0.0), row(NOW, "cloud", 0.25),
            row(NOW - timedelta(days=1), "cloud", 9.0)]
    db.executemany(f"INSERT INTO requests ({', '.join(LedgerRow._fields)}) VALUES "
                   f"({', '.join('?' for _ in LedgerRow._fields)})", rows)
    db.commit()
    db.close()
    today = router_today(tmp_path, NOW)
    assert (today.requests, today.local_requests, today.cloud_requests) == (2, 1, 1)
    assert today.cost_usd == 0.25 and today.error is None
    (tmp_path / LEDGER_FILE).write_bytes(b"not sqlite" * 100)
    for extra in tmp_path.glob(f"{LEDGER_FILE}-*"):
        extra.unlink()
    broken = router_today(tmp_path, NOW)
    assert broken.error and broken.requests == 0
