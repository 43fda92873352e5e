"""Run one command on many inventory hosts at once, over OpenSSH, each bounded by a timeout.

One ``ssh`` process per host, each watched by its own thread: a host that does not answer
costs its own timeout and nothing else, so a fan-out takes about as long as the slowest host
that answers. OpenSSH rather than pyinfra's API: pyinfra 3 runs on gevent greenlets with
paramiko, which wants monkeypatching that a click CLI (and the stack commands' threads) does
not control; its connect and command timeouts are global settings of a State; and OpenSSH
honours the user's ~/.ssh/config, agent, ProxyJump and known_hosts exactly as Ansible does.

Connections are reused (``ConnectionReuse``: OpenSSH's ControlMaster with ControlPersist, the
sockets in a 0700 directory of the state dir): the key exchange costs more CPU than a
host's answer (0.13 s on each side with OpenSSH 9's default sntrup761 KEX), and a fleet
command is often run again within a minute (``watch hlctl status --all``).

The remote command is ``argv`` shell-quoted. When ``argv[0]`` is ``hlctl``, each host's
``hlctl_bin`` inventory variable (default ``hlctl`` on the PATH, which the hlctl_agent role
links to /usr/local/bin/hlctl) replaces it.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from hlctl.inventory import InventoryHost

# ssh exits 255 when it could not connect or authenticate (the remote command's own code
# otherwise); hlctl itself never exits 255.
SSH_FAILURE = 255
# A lab is a handful of hosts; the cap only keeps a typo'd group from forking hundreds of ssh.
MAX_PARALLEL = 64
# A unix socket's path holds at most 107 bytes (Linux sun_path): the directory, a 16-digit
# name, and the 17-byte temporary suffix ssh adds while it binds. (OpenSSH's own %C token is
# 40 digits, which left too little room for a state dir under a home directory.)
_CONTROL_NAME_LEN = 16
_MAX_CONTROL_DIR = 107 - 1 - _CONTROL_NAME_LEN - 17


@dataclass(frozen=True)
class ConnectionReuse:
    """Share one SSH connection per host between commands, kept ``persist_s`` after use."""

    control_dir: Path
    persist_s: int

    def control_path(self, host: InventoryHost) -> Path:
        """One socket per connection: address, port, user, key and extra options (any
        difference is another connection; the connect timeout is not)."""
        identity = [host.address, *(str(host.vars.get(key) or "") for key in (
            "ansible_port", "ansible_user", "ansible_ssh_private_key_file",
            "ansible_ssh_common_args", "ansible_ssh_extra_args"))]
        name = hashlib.sha256("\0".join(identity).encode()).hexdigest()[:_CONTROL_NAME_LEN]
        return self.control_dir / name

    def ssh_options(self, host: InventoryHost) -> list[str]:
        return ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_path(host)}",
                "-o", f"ControlPersist={self.persist_s}"]

    def close(self, host: InventoryHost, ssh: str = "ssh") -> None:
        """End ``host``'s shared connection (it holds a timed-out command's pipes open)."""
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run([ssh, "-o", f"ControlPath={self.control_path(host)}", "-O", "exit",
                            host.address], stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=5, check=False)


def connection_reuse(state_dir: Path, persist_s: float) -> ConnectionReuse | None:
    """The reuse settings for ``state_dir``, or None (new connections) where it cannot work:
    reuse switched off, a state dir too deep for a socket path, or one hlctl cannot write."""
    if persist_s <= 0:
        return None
    control_dir = state_dir / "ssh"
    if len(os.fsencode(control_dir)) > _MAX_CONTROL_DIR:
        return None
    try:
        control_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The sockets let anyone who can reach them run commands as this user on the hosts.
        control_dir.chmod(0o700)
    except OSError:
        return None
    return ConnectionReuse(control_dir, max(1, math.ceil(persist_s)))


@dataclass(frozen=True)
class HostRun:
    host: str            # inventory name
    reachable: bool
    exit_code: int | None
    stdout: str
    stderr: str
    seconds: float
    error: str | None    # one line: why unreachable / timed out, else None


def remote_argv(host: InventoryHost, argv: Sequence[str]) -> list[str]:
    """``argv`` with ``hlctl`` replaced by the host's ``hlctl_bin`` variable."""
    out = list(argv)
    if out and out[0] == "hlctl":
        out[0] = str(host.vars.get("hlctl_bin") or "hlctl")
    return out


def ssh_command(host: InventoryHost, argv: Sequence[str], *, timeout_s: float,
                ssh: str = "ssh", reuse: ConnectionReuse | None = None) -> list[str]:
    """The local command line that runs ``argv`` on ``host`` (Ansible's connection vars)."""
    v: Mapping[str, Any] = host.vars
    if str(v.get("ansible_connection", "ssh")) == "local":
        return remote_argv(host, argv)
    connect = max(1, math.ceil(min(timeout_s, 10))) if math.isfinite(timeout_s) else 10
    cmd = [ssh, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect}",
           # Trust on first use, as a fresh host would otherwise stop a batch run; a key that
           # changed is still refused. ansible_ssh_common_args can say otherwise.
           "-o", "StrictHostKeyChecking=accept-new",
           # A host that dies mid-command is noticed within the timeout, not a TCP timeout.
           "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=2",
           "-o", "LogLevel=ERROR"]
    if v.get("ansible_port") is not None:
        cmd += ["-p", str(v["ansible_port"])]
    if v.get("ansible_user"):
        cmd += ["-l", str(v["ansible_user"])]
    if v.get("ansible_ssh_private_key_file"):
        cmd += ["-i", str(v["ansible_ssh_private_key_file"]), "-o", "IdentitiesOnly=yes"]
    for key in ("ansible_ssh_common_args", "ansible_ssh_extra_args"):
        if v.get(key):
            # Later -o options lose to earlier ones in OpenSSH: the inventory's go first.
            cmd[1:1] = shlex.split(str(v[key]))
    if reuse is not None:
        cmd += reuse.ssh_options(host)
    return [*cmd, "--", host.address, shlex.join(remote_argv(host, argv))]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _pump(stream: IO[str], sink: list[str], host: str,
          on_output: Callable[[str, str], None] | None) -> None:
    for line in stream:
        sink.append(line)
        if on_output is not None:
            on_output(host, line.rstrip("\n"))


def run_one(host: InventoryHost, argv: Sequence[str], *, timeout_s: float,
            on_output: Callable[[str, str], None] | None = None,
            stdin: bytes | None = None, ssh: str = "ssh",
            reuse: ConnectionReuse | None = None) -> HostRun:
    """Run ``argv`` on one host; never raises for a host that fails or does not answer."""
    cmd = ssh_command(host, argv, timeout_s=timeout_s, ssh=ssh, reuse=reuse)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin is not None
                                else subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace",
                                start_new_session=True)
    except OSError as exc:
        return HostRun(host.name, False, None, "", "", time.monotonic() - started,
                       f"cannot run {cmd[0]}: {exc.strerror or exc}")
    out: list[str] = []
    err: list[str] = []
    assert proc.stdout is not None and proc.stderr is not None
    readers = [threading.Thread(target=_pump, args=(proc.stdout, out, host.name, on_output),
                                daemon=True),
               threading.Thread(target=_pump, args=(proc.stderr, err, host.name, None),
                                daemon=True)]
    for reader in readers:
        reader.start()
    if stdin is not None and proc.stdin is not None:
        try:
            # Text mode: the bytes go through as UTF-8 (models.lock is YAML text).
            proc.stdin.write(stdin.decode())
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # ssh gave up before reading; its exit code says why
    timed_out = False
    try:
        proc.wait(timeout=timeout_s if math.isfinite(timeout_s) else None)
    except subprocess.TimeoutExpired:
        timed_out = True
        # The whole session: a local command's children hold the pipes open otherwise.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if reuse is not None and cmd[0] == ssh:
            # The shared connection was handed our pipes and waits on a host that does not
            # answer: end it, so the pipes close and the next command connects afresh.
            reuse.close(host, ssh)
    for reader in readers:
        reader.join(timeout=2)
    seconds = time.monotonic() - started
    stdout, stderr = "".join(out), "".join(err)
    if timed_out:
        return HostRun(host.name, False, None, stdout, stderr, seconds,
                       f"no answer within {timeout_s:g}s")
    is_ssh = cmd[0] == ssh
    if is_ssh and proc.returncode == SSH_FAILURE:
        why = _last_line(stderr) or "ssh failed without a message"
        return HostRun(host.name, False, None, stdout, stderr, seconds, why)
    if proc.returncode == 127 and "not found" in stderr:
        # Reached, but no agent there: reachable, with a line that says what to do.
        return HostRun(host.name, True, 127, stdout, stderr, seconds,
                       f"{remote_argv(host, argv)[0]} not found on the host "
                       "(install the agent: hlctl provision, role hlctl_agent; or set hlctl_bin)")
    return HostRun(host.name, True, proc.returncode, stdout, stderr, seconds, None)


def run_on_hosts(hosts: Sequence[InventoryHost], argv: Sequence[str], *, timeout_s: float,
                 on_output: Callable[[str, str], None] | None = None,
                 stdin: bytes | None = None, ssh: str = "ssh",
                 reuse: ConnectionReuse | None = None) -> list[HostRun]:
    """Run ``argv`` on every host in parallel; results in the order of ``hosts``.

    ``timeout_s`` bounds each host (connect and command together; ``math.inf`` for none,
    e.g. ``logs --follow``). ``on_output(host, line)`` gets stdout lines as they arrive,
    from the hosts' threads (the callee serialises if it must). ``stdin`` is sent to every
    host's command. ``reuse`` shares each host's connection between commands.
    """
    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=min(len(hosts), MAX_PARALLEL),
                            thread_name_prefix="hlctl-ssh") as pool:
        futures = [pool.submit(run_one, h, argv, timeout_s=timeout_s, on_output=on_output,
                               stdin=stdin, ssh=ssh, reuse=reuse) for h in hosts]
        return [f.result() for f in futures]
