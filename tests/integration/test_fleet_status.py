"""`hlctl status --all` and `hlctl health --all` over real SSH to three booted Debian hosts.

Real here: three Debian 12 roots (debootstrap, cached), the hlctl agent installed by the real
hlctl_agent role (once, then copied), each booted with systemd-nspawn (systemd as PID 1, sshd)
in a network namespace of its own, all reached over OpenSSH from one controller namespace in
which this checkout's hlctl runs. The GPU readings are recorded snapshots (no GPU here),
evaluated on each host with `hlctl health --from`, which records the host's latest result.
For `hlctl health --all` (which runs a live check, UNKNOWN without a GPU), the inventory's
``hlctl_bin`` points at a two-line wrapper on each host that adds ``--from`` its snapshot:
the real agent still evaluates, records and exits with the Nagios code.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.debian_root import nspawn_boot_problem, skip_module_unless_root_with
from tests.fixtures.fleet_hosts import (
    FleetHost,
    Lab,
    agent_root,
    build_wheelhouse,
    hub_in_namespace,
    lab,
)

pytestmark = pytest.mark.slow

skip_module_unless_root_with("debootstrap", "systemd-nspawn", "ip", "ssh", "ssh-keygen",
                             why="debootstrap, chroot, netns, systemd-nspawn")

SNAPSHOTS = Path(__file__).parents[1] / "fixtures" / "snapshots"
# gpu01 runs hot (thermal slowdown: CRITICAL), the other two are healthy.
SCENARIOS = {"gpu01": "thermal_slowdown.json", "gpu02": "healthy_3090.json",
             "gpu03": "healthy_3090.json"}
TIMEOUT_S = 6
WRAPPER = "/usr/local/bin/hlctl-snapshot"
WRAPPER_TEXT = ("#!/bin/sh\n# The test's GPU: health evaluates this host's recorded snapshot.\n"
                "if [ \"$1\" = health ]; then shift; "
                "exec hlctl health --from /root/snapshot.json \"$@\"; fi\n"
                "exec hlctl \"$@\"\n")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    problem = nspawn_boot_problem()
    if problem:
        pytest.skip(f"systemd-nspawn cannot boot a root on this machine: {problem}")
    work = tmp_path_factory.mktemp("fleet")
    wheel, house = build_wheelhouse(work / "dist")
    base = agent_root(wheel, house)
    with lab(work, 3, base) as the_lab:
        for host in the_lab.hosts:
            shutil.copy(SNAPSHOTS / SCENARIOS[host.name], host.root / "root/snapshot.json")
            wrapper = host.root / WRAPPER.lstrip("/")
            wrapper.write_text(WRAPPER_TEXT)
            wrapper.chmod(0o755)
            # What the health timer does on a real host: evaluate and record the result.
            result = host.ssh("hlctl health --from /root/snapshot.json", check=False)
            assert result.returncode in (0, 2), result.stdout + result.stderr
        yield the_lab


def _status(fleet: Lab, *args: str,
            env: dict[str, str] | None = None) -> tuple[int, list[dict[str, object]], float]:
    started = time.monotonic()
    result = fleet.hlctl("status", "--all", "--json", "--timeout", str(TIMEOUT_S),
                         "-i", str(fleet.inventory()), *args, env=env)
    elapsed = time.monotonic() - started
    assert result.stderr == "" or result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout), elapsed


def test_status_all_reports_every_host_with_its_health(fleet: Lab) -> None:
    code, rows, elapsed = _status(fleet)
    assert code == 0, rows
    by_host = {r["host"]: r for r in rows}
    assert [r["host"] for r in rows] == ["gpu01", "gpu02", "gpu03"]
    for name, row in by_host.items():
        assert row["reachable"] is True and row["error"] is None, row
        assert row["hostname"] == name  # the answer came from that container
        assert row["health_stale"] is False and 0 <= row["health_age_s"] < 300
        assert row["models_total"] == 0 and row["router_requests"] == 0
        assert row["docker_reachable"] is False and row["containers"] is None
        assert row["gpus"] == [] and row["gpu_error"]  # no NVML in a container
    assert by_host["gpu01"]["health"] == "critical"
    assert by_host["gpu01"]["health_exit_code"] == 2
    assert by_host["gpu02"]["health"] == by_host["gpu03"]["health"] == "ok"
    print(f"status --all over 3 hosts: {elapsed:.2f}s")

    human = fleet.hlctl("status", "--all", "-i", str(fleet.inventory()))
    assert human.returncode == 0, human.stderr
    assert "critical" in human.stdout and "gpu03" in human.stdout


def _accepted_logins(host: FleetHost) -> int:
    """sshd's "Accepted publickey" lines so far, one per new SSH connection: this ask's own
    connection included."""
    out = host.ssh("journalctl -u ssh.service -o cat --no-pager | grep -c 'Accepted publickey'",
                   check=False).stdout
    return int(out.strip() or 0)


def test_answers_come_from_the_resident_agent_over_shared_connections(fleet: Lab) -> None:
    """The second `status --all` opens no SSH connection, and each host's answer is the
    socket-activated agent's (hlctl-agent.service is running afterwards)."""
    code, _, _ = _status(fleet)
    assert code == 0
    assert len(list(fleet.ssh_control_dir.iterdir())) == 3  # a shared connection per host
    before = [_accepted_logins(h) for h in fleet.hosts]
    code, rows, _ = _status(fleet)
    assert code == 0 and all(r["reachable"] for r in rows)
    # one more each: the connection that asked
    assert [_accepted_logins(h) for h in fleet.hosts] == [n + 1 for n in before]
    for host in fleet.hosts:
        state = host.ssh("systemctl is-active hlctl-agent.service", check=False)
        assert state.stdout.strip() == "active", state.stdout + state.stderr


def test_status_without_the_agent_is_worked_out_by_the_command(fleet: Lab) -> None:
    host = fleet.hosts[1]
    host.ssh("systemctl stop hlctl-agent.socket hlctl-agent.service")
    try:
        code, rows, _ = _status(fleet)
    finally:
        host.ssh("systemctl start hlctl-agent.socket")
    assert code == 0
    assert rows[1]["reachable"] and rows[1]["hostname"] == "gpu02"
    assert rows[1]["health"] == "ok" and rows[1]["health_stale"] is False


def test_health_all_exits_with_the_worst(fleet: Lab) -> None:
    # Without the wrapper the hosts check live: no GPU there is UNKNOWN (3), as the timer says.
    live = fleet.hlctl("health", "--all", "-i", str(fleet.inventory()))
    assert live.returncode == 3 and live.stdout.count("UNKNOWN") >= 3, live.stdout
    # The snapshots again (each run records its result, so the later tests see them).
    inventory = str(fleet.inventory(hlctl_bin=WRAPPER))
    result = fleet.hlctl("health", "--all", "--json", "-i", inventory)
    data = json.loads(result.stdout)
    codes = {h["host"]: h["exit_code"] for h in data["hosts"]}
    assert codes == {"gpu01": 2, "gpu02": 0, "gpu03": 0}, data
    assert result.returncode == 2 == data["exit_code"]
    assert "thermal" in data["hosts"][0]["summary"].lower(), data["hosts"][0]
    healthy = fleet.hlctl("health", "gpu02", "gpu03", "-i", inventory)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert healthy.stdout.count("OK") >= 2 and "lab: OK" in healthy.stdout


def test_a_silent_host_is_unreachable_and_slows_no_other(fleet: Lab) -> None:
    silent = fleet.hosts[1]
    silent.freeze_sshd(True)
    inventory = str(fleet.inventory(hlctl_bin=WRAPPER))
    try:
        code, rows, elapsed = _status(fleet)
        health = fleet.hlctl("health", "--all", "-i", inventory, "--timeout", str(TIMEOUT_S))
        pair = fleet.hlctl("health", "gpu02", "gpu03", "-i", inventory,
                           "--timeout", str(TIMEOUT_S))
    finally:
        silent.freeze_sshd(False)
    assert code == 1
    by_host = {r["host"]: r for r in rows}
    assert by_host["gpu02"]["reachable"] is False
    assert by_host["gpu02"]["error"] == f"no answer within {TIMEOUT_S}s"
    assert by_host["gpu01"]["reachable"] and by_host["gpu01"]["health"] == "critical"
    assert by_host["gpu03"]["reachable"] and by_host["gpu03"]["health"] == "ok"
    # The silent host costs its own timeout, not the sum of all hosts' times.
    assert elapsed < TIMEOUT_S + 3, elapsed
    # CRITICAL (gpu01) beats UNKNOWN (the silent gpu02); UNKNOWN beats OK (gpu03).
    assert health.returncode == 2, health.stdout
    assert "unreachable" in health.stdout.splitlines()[1], health.stdout
    assert pair.returncode == 3, pair.stdout
    print(f"status --all with one silent host: {elapsed:.2f}s (timeout {TIMEOUT_S}s)")


def test_a_host_without_sshd_is_refused_at_once(fleet: Lab) -> None:
    down = fleet.hosts[2]
    down.ssh("systemctl stop ssh.socket ssh.service", check=False)
    try:
        # A shared connection outlives a stopped sshd (its session process stays), as on a
        # real host: this test is about a refused connection, so it opens new ones.
        code, rows, elapsed = _status(fleet, env={"HLCTL_FLEET__SSH_REUSE_S": "0"})
    finally:
        down.ssh_start()
    assert code == 1
    gone = rows[2]
    assert gone["reachable"] is False and "refused" in str(gone["error"]).lower(), gone
    assert rows[0]["reachable"] and rows[1]["reachable"]
    assert elapsed < TIMEOUT_S


def test_models_pull_on_all_hosts_then_locked_set(fleet: Lab, tmp_path: Path) -> None:
    """Each host downloads from the hub itself (the hub simulator, served in the controller
    namespace); --locked --all sends the controller's models.lock and every host holds it."""
    q4, q8 = tmp_path / "m-Q4_K_M.gguf", tmp_path / "m-Q8_0.gguf"
    q4.write_bytes(os.urandom(1 << 20))
    q8.write_bytes(os.urandom(1 << 19))
    with hub_in_namespace(fleet.ctl_ns, {"o/m": {q4.name: q4, q8.name: q8}}) as port:
        for host in fleet.hosts:
            # A host's hub address is its gateway: the controller end of its veth pair.
            wrapper = host.root / "usr/local/bin/hlctl-hub"
            wrapper.write_text(f"#!/bin/sh\nexport HF_ENDPOINT=http://{host.ctl_ip}:{port}\n"
                               "exec hlctl \"$@\"\n")
            wrapper.chmod(0o755)
        inventory = str(fleet.inventory(hlctl_bin="/usr/local/bin/hlctl-hub"))
        first = fleet.hlctl("models", "pull", "o/m", "--quant", "Q4_K_M", "--no-fit-check",
                            "--all", "--json", "-i", inventory)
        assert first.returncode == 0, first.stdout + first.stderr
        rows = json.loads(first.stdout)["hosts"]
        assert [(r["host"], r["ok"], r["downloaded_bytes"]) for r in rows] == [
            (h.name, True, 1 << 20) for h in fleet.hosts]
        for host in fleet.hosts:
            assert (host.root / "srv/models/o/m" / q4.name).read_bytes() == q4.read_bytes()
        # gpu01 alone also gets Q8_0; its lock (both models) becomes the controller's.
        one = fleet.hlctl("models", "pull", "o/m", "--quant", "Q8_0", "--no-fit-check",
                          "--host", "gpu01", "-i", inventory)
        assert one.returncode == 0 and "gpu01" in one.stdout, one.stdout + one.stderr
        lock = tmp_path / "models.lock"
        shutil.copy(fleet.hosts[0].root / "etc/hlctl/models.lock", lock)
        locked = fleet.hlctl("models", "pull", "--locked", "--all", "--lock", str(lock),
                             "--json", "-i", inventory)
        assert locked.returncode == 0, locked.stdout + locked.stderr
        got = {r["host"]: (r["models"], r["downloaded_bytes"])
               for r in json.loads(locked.stdout)["hosts"]}
        assert got == {"gpu01": (2, 0), "gpu02": (2, 1 << 19), "gpu03": (2, 1 << 19)}
    for host in fleet.hosts:
        assert (host.root / "srv/models/o/m" / q8.name).read_bytes() == q8.read_bytes()
    code, status_rows, _ = _status(fleet)
    assert code == 0
    assert [(r["models_ok"], r["models_total"]) for r in status_rows] == [(2, 2)] * 3
    # A lock that lists nothing is refused before any host is asked.
    empty = tmp_path / "empty.lock"
    empty.write_text("version: 1\nmodels: []\n")
    refused = fleet.hlctl("models", "pull", "--locked", "--all", "--lock", str(empty),
                          "-i", inventory)
    assert refused.returncode == 2 and "lists no models" in refused.stderr


def test_bad_inventory_is_one_line_exit_2(fleet: Lab, tmp_path: Path) -> None:
    missing = fleet.hlctl("status", "--all", "-i", str(tmp_path / "none.yml"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    unknown = fleet.hlctl("status", "gpu09", "-i", str(fleet.inventory()))
    assert unknown.returncode == 2 and "unknown host 'gpu09'" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) <= 2


