"""The fan-out: command lines from inventory vars, parallelism, timeouts, streaming.

Hosts with ``ansible_connection: local`` run the command as a local process, so the
parallel/timeout machinery runs for real without SSH (the real-SSH path is in
tests/integration/test_fleet_status.py).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from hlctl.fleet.transport import connection_reuse, run_on_hosts, ssh_command
from hlctl.inventory import InventoryHost


def _local(name: str) -> InventoryHost:
    return InventoryHost(name, ("all",), {"ansible_connection": "local"})


def test_ssh_command_uses_ansible_vars_and_quotes() -> None:
    host = InventoryHost("gpu01", ("all",), {
        "ansible_host": "10.0.0.5", "ansible_user": "root", "ansible_port": 2222,
        "ansible_ssh_private_key_file": "/k/id", "hlctl_bin": "/opt/hlctl/bin/hlctl",
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no"})
    cmd = ssh_command(host, ["hlctl", "models", "pull", "a b;rm"], timeout_s=4)
    assert cmd[:3] == ["ssh", "-o", "StrictHostKeyChecking=no"]  # inventory's option first
    assert "ConnectTimeout=4" in cmd and "BatchMode=yes" in cmd
    assert cmd[cmd.index("-p") + 1] == "2222" and cmd[cmd.index("-l") + 1] == "root"
    assert cmd[cmd.index("-i") + 1] == "/k/id"
    assert cmd[-3:] == ["--", "10.0.0.5", "/opt/hlctl/bin/hlctl models pull 'a b;rm'"]


def test_connect_timeout_is_capped_and_whole() -> None:
    host = InventoryHost("h", ("all",), {})
    assert "ConnectTimeout=10" in ssh_command(host, ["true"], timeout_s=600)
    assert "ConnectTimeout=1" in ssh_command(host, ["true"], timeout_s=0.2)


def test_parallel_in_order_and_slow_host_bounded(tmp_path: Path) -> None:
    """A silent host costs its own timeout; the others answer in parallel, in order."""
    def agent(name: str, sleep: float) -> InventoryHost:
        script = tmp_path / f"hlctl-{name}"
        script.write_text(f"#!/bin/sh\nsleep {sleep}\necho {name} \"$@\"\n")
        script.chmod(0o755)
        return InventoryHost(name, ("all",), {"ansible_connection": "local",
                                              "hlctl_bin": str(script)})

    hosts = [agent("slow", 30), agent("a", 1), agent("b", 1), agent("c", 1)]
    started = time.monotonic()
    runs = run_on_hosts(hosts, ["hlctl", "status"], timeout_s=2)
    elapsed = time.monotonic() - started
    assert [r.host for r in runs] == ["slow", "a", "b", "c"]
    assert not runs[0].reachable and runs[0].error == "no answer within 2s"
    assert [r.stdout for r in runs[1:]] == ["a status\n", "b status\n", "c status\n"]
    assert all(r.reachable and r.exit_code == 0 for r in runs[1:])
    # In series this would be 2 + 3 x 1 s.
    assert elapsed < 4


def test_each_host_result_and_streaming() -> None:
    seen: list[tuple[str, str]] = []
    lock = threading.Lock()

    def sink(host: str, line: str) -> None:
        with lock:
            seen.append((host, line))

    script = "import sys; print('one'); print('two'); print('err', file=sys.stderr); sys.exit(3)"
    runs = run_on_hosts([_local("x"), _local("y")], [sys.executable, "-c", script],
                        timeout_s=20, on_output=sink)
    for run in runs:
        assert run.reachable and run.exit_code == 3 and run.error is None
        assert run.stdout == "one\ntwo\n" and run.stderr == "err\n"
    assert sorted(seen) == [("x", "one"), ("x", "two"), ("y", "one"), ("y", "two")]


def test_stdin_reaches_every_host() -> None:
    runs = run_on_hosts([_local("x"), _local("y")],
                        [sys.executable, "-c", "import sys; print(sys.stdin.read().upper())"],
                        timeout_s=20, stdin=b"lock\n")
    assert [r.stdout for r in runs] == ["LOCK\n\n", "LOCK\n\n"]


def test_unreachable_ssh_is_a_line_not_an_exception() -> None:
    # Port 1 on loopback refuses at once: a real ssh, a real failure to connect.
    host = InventoryHost("gone", ("all",), {"ansible_host": "127.0.0.1", "ansible_port": 1})
    [run] = run_on_hosts([host], ["hlctl", "status"], timeout_s=5)
    assert not run.reachable and run.exit_code is None
    assert run.error and "refused" in run.error.lower() and "\n" not in run.error


def test_no_hosts_no_work() -> None:
    assert run_on_hosts([], ["true"], timeout_s=1) == []


def test_connection_reuse_shares_one_socket_per_connection(tmp_path: Path) -> None:
    reuse = connection_reuse(tmp_path / "state", 60)
    assert reuse is not None and reuse.persist_s == 60
    assert (tmp_path / "state" / "ssh").stat().st_mode & 0o777 == 0o700

    def control_path(vars_: dict[str, object], timeout_s: float = 20) -> str:
        cmd = ssh_command(InventoryHost("h", ("all",), vars_), ["true"], timeout_s=timeout_s,
                          reuse=reuse)
        assert "ControlMaster=auto" in cmd and "ControlPersist=60" in cmd
        return next(o for o in cmd if o.startswith("ControlPath="))

    root = {"ansible_host": "10.0.0.5", "ansible_user": "root"}
    assert control_path(root) == control_path(root, timeout_s=3)  # same connection
    assert control_path(root) != control_path({**root, "ansible_user": "admin"})
    assert control_path(root) != control_path({**root, "ansible_port": 2222})
    assert len(control_path(root).removeprefix("ControlPath=")) < 107 - 17


def test_connection_reuse_off_or_impossible_is_none(tmp_path: Path) -> None:
    assert connection_reuse(tmp_path, 0) is None
    assert connection_reuse(tmp_path / ("d" * 80), 60) is None  # no room for a socket path
    (tmp_path / "file").write_text("")
    assert connection_reuse(tmp_path / "file", 60) is None      # cannot make the directory
    host = InventoryHost("h", ("all",), {})
    assert not any("Control" in o for o in ssh_command(host, ["true"], timeout_s=5))
