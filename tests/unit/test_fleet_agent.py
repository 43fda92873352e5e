"""The resident agent and `hlctl agent status`: real unix sockets, real processes.

The agent is started the way systemd starts it (``systemd-socket-activate`` passes the
listening socket as fd 3 with LISTEN_FDS/LISTEN_PID), and by hand with --socket; the
console script's fast path is run as the installed `hlctl` would run it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hlctl.fleet.agent import bind_listener, serve_until_idle, systemd_listener
from hlctl.fleet.agent_client import ask_agent

HLCTL = Path(sys.executable).parent / "hlctl"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A directory whose socket paths fit sun_path (pytest's tmp_path can be too long)."""
    path = Path(f"/tmp/hla-{os.getpid()}-{time.monotonic_ns() % 10**6}")
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    config = tmp / "hlctl.yaml"
    if not config.exists():
        config.write_text(f"state_dir: {tmp / 'state'}\nmodels_dir: {tmp / 'models'}\n")
    return {**os.environ, "HLCTL_CONFIG": str(config), "DOCKER_HOST": "unix:///nonexistent",
            **extra}


def _serve_in_thread(listener: socket.socket, answer: object,
                     idle_exit_s: float) -> threading.Thread:
    thread = threading.Thread(target=serve_until_idle, args=(listener, answer),
                              kwargs={"idle_exit_s": idle_exit_s}, daemon=True)
    thread.start()
    return thread


def test_answers_each_connection_afresh_then_exits_when_idle(short_tmp: Path) -> None:
    calls: list[int] = []

    def answer() -> bytes:
        calls.append(1)
        return json.dumps({"n": len(calls)}).encode() + b"\n"

    listener = bind_listener(short_tmp / "a.sock")
    assert (short_tmp / "a.sock").stat().st_mode & 0o777 == 0o600
    thread = _serve_in_thread(listener, answer, idle_exit_s=0.5)
    first, second = ask_agent(str(short_tmp / "a.sock")), ask_agent(str(short_tmp / "a.sock"))
    assert (first, second) == (b'{"n": 1}\n', b'{"n": 2}\n')
    thread.join(timeout=5)
    assert not thread.is_alive()  # idle: it returned on its own
    listener.close()


def test_a_failed_answer_is_no_answer_and_the_agent_stays_up(short_tmp: Path) -> None:
    answers = iter([RuntimeError("NVML exploded"), b'{"ok": true}\n', b'{"cut": '])

    def answer() -> bytes:
        item = next(answers)
        if isinstance(item, Exception):
            raise item
        return item

    listener = bind_listener(short_tmp / "a.sock")
    thread = _serve_in_thread(listener, answer, idle_exit_s=0.5)
    path = str(short_tmp / "a.sock")
    assert ask_agent(path) is None             # the caller works it out itself
    assert ask_agent(path) == b'{"ok": true}\n'
    assert ask_agent(path) is None             # an incomplete answer is not used
    thread.join(timeout=5)
    listener.close()


def test_no_agent_is_none(short_tmp: Path) -> None:
    assert ask_agent(str(short_tmp / "missing.sock")) is None
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(short_tmp / "dead.sock"))  # bound, never listening: refused
    assert ask_agent(str(short_tmp / "dead.sock")) is None
    dead.close()


def test_bind_replaces_a_stale_socket_but_never_a_file(short_tmp: Path) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(short_tmp / "a.sock"))
    stale.close()
    bind_listener(short_tmp / "a.sock").close()
    (short_tmp / "b.sock").write_text("not mine")
    with pytest.raises(FileExistsError):
        bind_listener(short_tmp / "b.sock")
    assert (short_tmp / "b.sock").read_text() == "not mine"


def test_systemd_listener_only_for_this_process() -> None:
    assert systemd_listener({"LISTEN_PID": "1", "LISTEN_FDS": "1"}, pid=2) is None
    assert systemd_listener({"LISTEN_PID": "2", "LISTEN_FDS": "2"}, pid=2) is None
    assert systemd_listener({}, pid=2) is None


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is not installed (apt-get install systemd)")
def test_socket_activated_agent_answers_hlctl_agent_status(short_tmp: Path) -> None:
    """As hlctl-agent.socket starts it: the answer is this host's status under the agent's
    config, the same document `hlctl status --json` prints; then it exits when idle."""
    sock = short_tmp / "agent.sock"
    env = _env(short_tmp)
    # systemd-socket-activate passes only the variables named with -E, as a unit's
    # Environment= does.
    agent = subprocess.Popen(["systemd-socket-activate", "-l", str(sock), "-E", "HLCTL_CONFIG",
                              "-E", "DOCKER_HOST", str(HLCTL), "agent", "serve",
                              "--idle-exit", "3"], env=env,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert agent.stderr is not None
        assert "Listening on" in agent.stderr.readline()  # bound and listening (not just bound)
        client = subprocess.run([str(HLCTL), "agent", "status"], capture_output=True,
                                env={**env, "HLCTL_AGENT_SOCKET": str(sock),
                                     "HLCTL_CONFIG": "/nonexistent.yaml"},
                                timeout=60, check=False)
        assert client.returncode == 0, client.stderr
        answer = json.loads(client.stdout)
        assert answer["schema"] == "hlctl.status/1"
        # the agent's config, not the client's (which does not exist): it was the agent
        assert answer["config_source"] == env["HLCTL_CONFIG"]
        assert answer["config_error"] is None
        local = json.loads(subprocess.run([str(HLCTL), "status", "--json"], env=env,
                                          capture_output=True, timeout=60).stdout)
        assert set(answer) == set(local)
        assert agent.wait(timeout=20) == 0, agent.stderr.read() if agent.stderr else ""
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


def test_fast_path_loads_neither_click_nor_the_config(short_tmp: Path) -> None:
    listener = bind_listener(short_tmp / "a.sock")
    thread = _serve_in_thread(listener, lambda: b'{"schema": "recorded"}\n', idle_exit_s=2)
    probe = ("import sys; sys.argv = ['hlctl', 'agent', 'status']\n"
             "from hlctl.cli.entry import main; main()\n"
             "print(sorted(m for m in sys.modules if m in ('click', 'pydantic', 'hlctl.config')),"
             " file=sys.stderr)")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**os.environ, "HLCTL_AGENT_SOCKET": str(short_tmp / "a.sock")},
                         timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout == '{"schema": "recorded"}\n'
    assert run.stderr.strip() == "[]"
    thread.join(timeout=10)
    listener.close()


def test_without_an_agent_the_command_answers_itself(short_tmp: Path) -> None:
    env = _env(short_tmp, HLCTL_AGENT_SOCKET=str(short_tmp / "none.sock"))
    run = subprocess.run([str(HLCTL), "agent", "status"], capture_output=True, text=True,
                         env=env, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert answer["schema"] == "hlctl.status/1"
    assert answer["config_source"] == env["HLCTL_CONFIG"]


def test_serve_on_a_path_it_cannot_take_is_one_line(short_tmp: Path) -> None:
    (short_tmp / "file").write_text("x")
    run = subprocess.run([str(HLCTL), "agent", "serve", "--socket", str(short_tmp / "file")],
                         capture_output=True, text=True, env=_env(short_tmp), timeout=60)
    assert run.returncode != 0
    assert "cannot listen on" in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_each_answer_reads_the_config_afresh(short_tmp: Path) -> None:
    """The agent keeps imports warm, never results: a config edited between two requests
    shows in the second answer without a restart."""
    from hlctl.cli.agent import status_answer
    from hlctl.context import AppContext

    config = short_tmp / "hlctl.yaml"
    config.write_text(f"models_dir: {short_tmp / 'one'}\nstate_dir: {short_tmp / 'state'}\n")
    environ = {"DOCKER_HOST": "unix:///nonexistent"}
    listener = bind_listener(short_tmp / "a.sock")
    thread = _serve_in_thread(
        listener, lambda: status_answer(AppContext(config_path=config, environ=environ)),
        idle_exit_s=1)
    first = json.loads(ask_agent(str(short_tmp / "a.sock")) or b"null")
    config.write_text(f"models_dir: {short_tmp / 'two'}\nstate_dir: {short_tmp / 'state'}\n")
    second = json.loads(ask_agent(str(short_tmp / "a.sock")) or b"null")
    thread.join(timeout=10)
    listener.close()
    assert first["models_dir"]["path"] == str(short_tmp / "one")
    assert second["models_dir"]["path"] == str(short_tmp / "two")
