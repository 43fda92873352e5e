"""The resident agent: answers `hlctl agent status` on a unix socket with a warm process.

A fleet command asks every host at once, and on hosts that share CPUs (or a busy GPU box)
the cost that adds up is each host starting hlctl: 0.3-0.4 s of CPU to import the CLI and
validate the config, for an answer whose own work is a few milliseconds. The agent pays the
start once. systemd starts it on the first connection (socket activation, the hlctl_agent
role's hlctl-agent.socket) and it exits after ``idle_exit_s`` without a request, so it costs
nothing between fleet commands and an upgrade takes effect at the latest one idle period on.

Every answer is worked out afresh under a new AppContext (config re-read, NVML read now):
the agent caches imports, never results. Without an agent (no socket, not allowed, or it
failed) `hlctl agent status` does the same work in its own process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

# systemd's socket activation: the first passed descriptor is 3 (sd_listen_fds(3)).
SD_LISTEN_FDS_START = 3


def systemd_listener(environ: Mapping[str, str], pid: int) -> socket.socket | None:
    """The listening socket systemd passed to this process, if it passed exactly one."""
    if environ.get("LISTEN_PID") != str(pid) or environ.get("LISTEN_FDS") != "1":
        return None
    return socket.socket(fileno=SD_LISTEN_FDS_START)


def bind_listener(path: Path) -> socket.socket:
    """Listen on ``path`` (mode 0600: the answer is for this user alone), replacing a socket
    left by an agent that died; any other file there is an error, never removed."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_umask)
    listener.listen(16)
    return listener


def _answer_one(conn: socket.socket, answer: Callable[[], bytes]) -> None:
    with conn:
        try:
            body = answer()
        except Exception:  # the client falls back to its own answer; the agent stays up
            log.exception("status answer failed")
            return
        with contextlib.suppress(OSError):  # the client went away
            conn.sendall(body)


def serve_until_idle(listener: socket.socket, answer: Callable[[], bytes], *,
          idle_exit_s: float | None) -> None:
    """Answer each connection with ``answer()`` on a thread of its own (one slow Docker
    engine holds up no other request); return after ``idle_exit_s`` without a connection."""
    listener.settimeout(idle_exit_s)
    in_flight: list[threading.Thread] = []
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            break
        conn.settimeout(None)
        thread = threading.Thread(target=_answer_one, args=(conn, answer), daemon=True,
                                  name="hlctl-agent-answer")
        thread.start()
        in_flight = [t for t in in_flight if t.is_alive()] + [thread]
    for thread in in_flight:  # an answer under way is finished before the agent exits
        thread.join()
