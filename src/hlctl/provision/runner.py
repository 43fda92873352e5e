"""Run ``ansible-playbook`` as a subprocess and turn its events into progress and a summary.

Variables go to Ansible in 0600 files inside a 0700 temporary directory (extra vars for the
whole run, an inventory fragment for per-host values), the token secret in the child's
environment: never on the command line, where every user of the machine can read it.
Progress comes from the ``hlctl_events`` callback through a pipe; Ansible's own output is
kept for ``-v`` and for errors that happen before any task runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from hlctl.errors import ConfigError, HlctlError

PLUGIN_DIR = Path(__file__).parent / "ansible_plugins"


@dataclass(frozen=True)
class PlaybookRun:
    """One ansible-playbook invocation, described without any I/O."""

    playbook: Path
    inventory: Path
    limit: tuple[str, ...] = ()
    extra_vars: Mapping[str, Any] = field(default_factory=dict)
    host_vars: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    secret_env: Mapping[str, str] = field(default_factory=dict)
    check: bool = False
    diff: bool = False
    verbose: int = 0


@dataclass
class HostSummary:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "changed": self.changed, "failed": self.failed,
                "unreachable": self.unreachable, "skipped": self.skipped,
                "seconds": round(self.seconds, 1)}


@dataclass(frozen=True)
class Failure:
    host: str
    task: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"host": self.host, "task": self.task, "message": self.message}


@dataclass
class RunResult:
    playbook: str
    returncode: int
    hosts: dict[str, HostSummary] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    output_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"playbook": self.playbook, "ok": self.ok, "returncode": self.returncode,
                "hosts": {h: s.to_dict() for h, s in sorted(self.hosts.items())},
                "failures": [f.to_dict() for f in self.failures]}


class EventTally:
    """Fold callback events into per-host summaries and failures (pure, for tests too)."""

    def __init__(self) -> None:
        self.hosts: dict[str, HostSummary] = {}
        self.failures: list[Failure] = []
        self._first: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._task_start: float | None = None

    def add(self, event: Mapping[str, Any]) -> None:
        kind = event.get("event")
        now = float(event.get("t", 0.0))
        if kind == "task":
            self._task_start = now
        elif kind == "result":
            host = str(event.get("host"))
            summary = self.hosts.setdefault(host, HostSummary())
            self._first.setdefault(host, self._task_start or now)
            self._last[host] = now
            summary.seconds = self._last[host] - self._first[host]
            status = event.get("status")
            if status == "failed" and event.get("ignored"):
                status = "ok"
            if status == "changed":
                summary.ok += 1
                summary.changed += 1
            elif status in ("ok", "failed", "unreachable", "skipped"):
                setattr(summary, str(status), getattr(summary, str(status)) + 1)
            if status in ("failed", "unreachable"):
                self.failures.append(Failure(host, str(event.get("task")),
                                             str(event.get("msg") or "")))
        elif kind == "stats":
            for host, stats in (event.get("hosts") or {}).items():
                summary = self.hosts.setdefault(host, HostSummary())
                summary.ok = int(stats.get("ok", summary.ok))
                summary.changed = int(stats.get("changed", summary.changed))
                summary.failed = int(stats.get("failures", summary.failed))
                summary.unreachable = int(stats.get("unreachable", summary.unreachable))
                summary.skipped = int(stats.get("skipped", summary.skipped))


def find_ansible_dir(environ: Mapping[str, str], cwd: Path | None = None) -> Path:
    """Where playbooks/ and roles/ are: $HLCTL_ANSIBLE_DIR, the cwd, inside the installed
    package (hlctl/ansible/, when the wheel ships them there), or this source checkout."""
    candidates = []
    if environ.get("HLCTL_ANSIBLE_DIR"):
        candidates.append(Path(environ["HLCTL_ANSIBLE_DIR"]))
    here = Path(__file__).resolve()
    candidates += [cwd or Path.cwd(), here.parents[1] / "ansible", here.parents[3]]
    for candidate in candidates:
        if (candidate / "playbooks").is_dir() and (candidate / "roles").is_dir():
            return candidate
    raise ConfigError("cannot find hlctl's playbooks/ and roles/",
                      hint="run from the hlctl checkout or set HLCTL_ANSIBLE_DIR")


def find_ansible_playbook(environ: Mapping[str, str]) -> str:
    # Prefer the one next to this Python: its interpreter has proxmoxer and the collections.
    sibling = Path(sys.executable).parent / "ansible-playbook"
    if sibling.exists():
        return str(sibling)
    found = shutil.which("ansible-playbook", path=environ.get("PATH"))
    if not found:
        raise HlctlError("ansible-playbook not found",
                         hint="pip install 'hlctl[provision]'")
    return found


def build_command(run: PlaybookRun, executable: str, vars_file: Path,
                  host_vars_file: Path | None) -> list[str]:
    """The argument list: paths and flags only, never a variable's value."""
    cmd = [executable, "-i", str(run.inventory)]
    if host_vars_file is not None:
        cmd += ["-i", str(host_vars_file)]
    cmd += ["-e", f"@{vars_file}"]
    if run.limit:
        cmd += ["--limit", ",".join(run.limit)]
    if run.check:
        cmd.append("--check")
    if run.diff:
        cmd.append("--diff")
    if run.verbose > 1:
        cmd.append("-" + "v" * (run.verbose - 1))
    cmd.append(str(run.playbook))
    return cmd


def build_env(base: Mapping[str, str], ansible_dir: Path, events_fd: int,
              secret_env: Mapping[str, str], verbose: int) -> dict[str, str]:
    env = dict(base)
    env.update(secret_env)
    collections = [str(ansible_dir / "collections"),
                   env.get("ANSIBLE_COLLECTIONS_PATH", "~/.ansible/collections:"
                                                       "/usr/share/ansible/collections")]
    env.update({
        "ANSIBLE_ROLES_PATH": str(ansible_dir / "roles"),
        "ANSIBLE_COLLECTIONS_PATH": ":".join(collections),
        "ANSIBLE_CALLBACK_PLUGINS": str(PLUGIN_DIR / "callback"),
        "ANSIBLE_CALLBACKS_ENABLED": "hlctl_events",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "HLCTL_EVENTS_FD": str(events_fd),
    })
    if not verbose:
        env["ANSIBLE_NOCOLOR"] = "1"
    return env


@contextmanager
def private_files(run: PlaybookRun) -> Iterator[tuple[Path, Path | None]]:
    """Write extra vars and per-host vars to 0600 files in a 0700 directory; remove after."""
    directory = Path(tempfile.mkdtemp(prefix="hlctl-ansible-"))
    try:
        os.chmod(directory, 0o700)
        vars_file = directory / "extra-vars.yml"
        _write_private(vars_file, dict(run.extra_vars))
        host_file = None
        if run.host_vars:
            host_file = directory / "hosts-from-lab-config.yml"
            _write_private(host_file, {"all": {"hosts": {
                h: dict(v) for h, v in run.host_vars.items()}}})
        yield vars_file, host_file
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _write_private(path: Path, data: Any) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(data, handle, sort_keys=False)


def run_playbook(run: PlaybookRun, *, ansible_dir: Path, environ: Mapping[str, str],
                 on_event: Callable[[Mapping[str, Any]], None] = lambda _: None,
                 raw_output: IO[str] | None = None) -> RunResult:
    """Run the playbook; feed each event to ``on_event``; return the tally.

    With ``raw_output`` (``-v``), Ansible's own output is copied there as it comes.
    """
    if not run.playbook.is_file():
        raise ConfigError(f"playbook {run.playbook} does not exist",
                          hint="it ships with hlctl's roles; check HLCTL_ANSIBLE_DIR")
    executable = find_ansible_playbook(environ)
    tally = EventTally()
    read_fd, write_fd = os.pipe()
    tail: list[str] = []
    with private_files(run) as (vars_file, host_file):
        cmd = build_command(run, executable, vars_file, host_file)
        env = build_env(environ, ansible_dir, write_fd, run.secret_env, run.verbose)
        try:
            process = subprocess.Popen(cmd, cwd=ansible_dir, env=env, pass_fds=(write_fd,),
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, text=True)
        finally:
            os.close(write_fd)  # the child holds its copy; EOF comes when it exits

        def pump_output() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                tail.append(line)
                del tail[:-60]
                if raw_output is not None:
                    raw_output.write(line)
                    raw_output.flush()

        def pump_events() -> None:
            with os.fdopen(read_fd, "r") as events:
                for line in events:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    tally.add(event)
                    on_event(event)

        threads = [threading.Thread(target=pump_output, daemon=True),
                   threading.Thread(target=pump_events, daemon=True)]
        for thread in threads:
            thread.start()
        returncode = process.wait()
        # A stray child of Ansible could hold the pipe open: do not wait on it for long.
        for thread in threads:
            thread.join(timeout=10)
    result = RunResult(playbook=run.playbook.name, returncode=returncode, hosts=tally.hosts,
                       failures=tally.failures, output_tail="".join(tail[-20:]))
    if returncode != 0 and not tally.failures:
        # Ansible stopped before any task failed (syntax, inventory, missing role): its last
        # error line is the message.
        lines = [ln.strip() for ln in tail if ln.strip()]
        errors = [ln for ln in lines if "ERROR" in ln] or lines[-1:] or ["no output"]
        result.failures.append(Failure("-", "ansible-playbook", errors[0]))
    return result
