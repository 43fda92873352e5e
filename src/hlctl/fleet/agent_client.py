"""Ask the resident agent for this host's status: the fast path of `hlctl agent status`.

Imported before click and the config by the console script (hlctl.cli.entry), so it uses
the standard library's socket alone: a fleet-wide `hlctl status --all` then costs each
host a Python start and a socket read, not a CLI start and a config validation.
"""

from __future__ import annotations

import os
import socket

DEFAULT_AGENT_SOCKET = "/run/hlctl/agent.sock"
# Another place to ask (and to serve on): for an agent run by hand as a user, or in tests.
AGENT_SOCKET_ENV = "HLCTL_AGENT_SOCKET"
# Status work on the agent's side: NVML, the Docker engine (3 s timeout), a models scan.
_ANSWER_TIMEOUT_S = 15.0


def agent_socket_path() -> str:
    return os.environ.get(AGENT_SOCKET_ENV) or DEFAULT_AGENT_SOCKET


def ask_agent(path: str | None = None, timeout_s: float = _ANSWER_TIMEOUT_S) -> bytes | None:
    """The agent's whole answer, or None when none answers (no socket, refused, not allowed,
    timed out, or it closed without a complete answer): the caller then works it out itself."""
    chunks: list[bytes] = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout_s)
            conn.connect(path or agent_socket_path())
            while chunk := conn.recv(65536):
                chunks.append(chunk)
    except OSError:
        return None
    answer = b"".join(chunks)
    # A complete answer is one JSON document ending in a newline; anything else (the agent
    # failed mid-way) is no answer.
    return answer if answer.endswith(b"}\n") else None
