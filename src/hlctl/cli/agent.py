"""`hlctl agent status|serve`: this host's status for the fleet, and the resident agent."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from hlctl.context import AppContext
from hlctl.fleet.agent_client import AGENT_SOCKET_ENV, DEFAULT_AGENT_SOCKET, agent_socket_path


def status_answer(app: AppContext) -> bytes:
    """This host's status as `hlctl status --json` prints it, one JSON document and a newline."""
    from hlctl.fleet.local_status import collect_local_status

    return (json.dumps(collect_local_status(app).to_dict(), indent=2) + "\n").encode()


@click.group()
def agent() -> None:
    """What `hlctl status --all` runs on each host, and the resident agent that answers it.

    The hlctl_agent role installs hlctl-agent.socket: systemd starts `hlctl agent serve` on
    the first request, and it exits after a while without one.
    """


@agent.command("status")
@click.option("--socket", "socket_path", default=None,
              help=f"Ask the resident agent listening here (the console script asks "
                   f"${AGENT_SOCKET_ENV} or {DEFAULT_AGENT_SOCKET} before anything else "
                   "is loaded).")
@click.pass_obj
def status(app: AppContext, socket_path: str | None) -> None:
    """Print this host's status (schema hlctl.status/1) for a fleet command.

    From the resident agent when it answers (a warm process: milliseconds), else worked out
    here as `hlctl status --json` does.
    """
    from hlctl.fleet.agent_client import ask_agent

    answer = (ask_agent(socket_path) if socket_path else None) or status_answer(app)
    sys.stdout.buffer.write(answer)
    sys.stdout.flush()


@agent.command("serve")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), default=None,
              help="Listen here (default: the socket systemd passes, else "
                   f"${AGENT_SOCKET_ENV} or {DEFAULT_AGENT_SOCKET}).")
@click.option("--idle-exit", type=click.FloatRange(min=0), default=300, show_default=True,
              metavar="SECONDS", help="Exit after this long without a request (0: never).")
@click.pass_obj
def serve(app: AppContext, socket_path: Path | None, idle_exit: float) -> None:
    """Answer `hlctl agent status` requests on a unix socket until idle.

    Each answer is worked out afresh (config re-read, GPUs read now); only the imports are
    kept warm.
    """
    from hlctl.fleet.agent import bind_listener, serve_until_idle, systemd_listener

    listener = None if socket_path else systemd_listener(os.environ, os.getpid())
    if listener is None:
        where = socket_path or Path(agent_socket_path())
        try:
            listener = bind_listener(where)
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {where}: {exc.strerror or exc}") from exc
    # The config, environment and clock the agent was started with, read again per answer.
    config_path, overrides = app.config_path, dict(app.overrides)
    with listener:
        serve_until_idle(listener, lambda: status_answer(
            AppContext(config_path=config_path, overrides=overrides)),
            idle_exit_s=idle_exit or None)
