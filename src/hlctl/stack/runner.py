"""The edges to Docker: the ``docker compose`` CLI as a subprocess, the engine through the
docker SDK (image inspect).

No Docker engine and no compose plugin run where hlctl is tested: the tests check the argv
these functions build and run them against a stand-in executable, and the image-inspect path
against tests/fixtures/docker_engine_sim.py (an Engine API simulator on a unix socket,
extended with ``GET /images/{name}/json`` by tests/fixtures/compose_engine.py).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hlctl.errors import HlctlError

COMPOSE_FILE_NAME = "compose.yaml"
SERVICES = ("llama-server", "router")


class DockerError(HlctlError):
    """docker or its compose plugin is missing, failed, or the engine cannot be reached."""


@dataclass(frozen=True)
class ComposeProject:
    directory: Path
    env_file: Path
    name: str = "hlctl"

    @property
    def compose_file(self) -> Path:
        return self.directory / COMPOSE_FILE_NAME


def compose_argv(project: ComposeProject, *args: str, docker: str = "docker") -> list[str]:
    """``docker compose`` with the project pinned down, whatever the caller's cwd and env."""
    return [docker, "compose", "--project-directory", str(project.directory),
            "--project-name", project.name, "--env-file", str(project.env_file),
            "--file", str(project.compose_file), *args]


def up_args(wait_timeout_s: float, *, recreate: bool = False, build: bool = False
            ) -> list[str]:
    # --wait returns once every service is healthy (or fails with the one that is not);
    # --no-build by default: images are built by the llm_stack role, never as a side effect.
    args = ["up", "--detach", "--wait", "--wait-timeout", str(int(wait_timeout_s))]
    args += ["--build"] if build else ["--no-build"]
    if recreate:
        args.append("--force-recreate")
    return args


def down_args(timeout_s: float = 30) -> list[str]:
    # Named volumes (the router's ledger) survive: no --volumes.
    return ["down", "--timeout", str(int(timeout_s))]


def logs_args(service: str, *, follow: bool = False, tail: int | None = None,
              prefix: bool = True) -> list[str]:
    args = ["logs", "--no-color"]
    if not prefix:
        args.append("--no-log-prefix")
    if tail is not None:
        args += ["--tail", str(tail)]
    if follow:
        args.append("--follow")
    return [*args, service]


def _why(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def run_compose(argv: Sequence[str], *, timeout_s: float | None,
                on_line: Callable[[str], None] | None = None) -> str:
    """Run a compose command; its stdout, or DockerError with compose's last line."""
    try:
        if on_line is None:
            proc = subprocess.run(list(argv), capture_output=True, text=True,
                                  timeout=timeout_s, check=False, stdin=subprocess.DEVNULL)
            stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
        else:
            with subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, stdin=subprocess.DEVNULL) as live:
                assert live.stdout is not None and live.stderr is not None
                for line in live.stdout:
                    on_line(line.rstrip("\n"))
                stderr = live.stderr.read()
                code = live.wait(timeout_s)
                stdout = ""
    except FileNotFoundError:
        raise DockerError(f"{argv[0]} is not installed",
                          hint="hlctl provision installs Docker on GPU hosts") from None
    except subprocess.TimeoutExpired:
        raise DockerError(f"docker compose did not finish within {timeout_s:g}s",
                          hint="see 'hlctl logs llama-server'") from None
    if code != 0:
        why = _why(stderr)
        if "is not a docker command" in stderr or "unknown command" in stderr:
            raise DockerError("the docker compose plugin is not installed",
                              hint="install docker-compose-plugin (the docker role does)")
        raise DockerError(f"docker compose failed (exit {code}): {why}")
    return stdout


def inspect_image(reference: str, *, base_url: str | None = None) -> dict[str, Any]:
    """The engine's inspect document of a local image (``Config.Env`` holds the CUDA need)."""
    import docker
    from docker.errors import DockerException, ImageNotFound

    try:
        client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
    except DockerException as exc:
        raise DockerError(f"cannot reach the Docker engine: {exc}") from None
    try:
        return dict(client.images.get(reference).attrs)
    except ImageNotFound:
        raise DockerError(f"image {reference} is not on this host",
                          hint="build it with 'hlctl provision' (role llm_stack) or docker "
                               "pull it; then hlctl up") from None
    except DockerException as exc:
        raise DockerError(f"cannot inspect image {reference}: {exc}") from None
    finally:
        client.close()


def image_env(attrs: dict[str, Any]) -> list[str]:
    config = attrs.get("Config") or {}
    return [str(e) for e in config.get("Env") or []]
