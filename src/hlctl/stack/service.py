"""`hlctl up|down|restart|logs` as functions: local on this host, or fanned out to hosts.

Local ``up``: render .env (lab config + models.lock + fit), resolve compose.yaml's llama-server
command, check the image's CUDA requirement against the driver (before any container starts),
``docker compose up --wait``, then check in llama-server's log that the layers went to the GPU.
Remote: run the same ``hlctl`` command with ``--json`` on each host through the fleet
transport. Every edge (docker binary, engine URL, snapshot, transport) is injectable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hlctl import __version__
from hlctl.errors import ConfigError, HlctlError
from hlctl.stack import runner
from hlctl.stack.cuda import check_cuda, requirement_from_env
from hlctl.stack.envfile import (
    ENV_FILE_NAME,
    LaunchPlan,
    ModelChoice,
    choose_model,
    env_text,
    launch_plan,
    render_env,
    write_env,
)
from hlctl.stack.interpolate import llama_command, load_compose
from hlctl.stack.offload import check_offload, parse_offload
from hlctl.stack.settings import StackSettings

if TYPE_CHECKING:
    from hlctl.fleet.transport import ConnectionReuse

GIB = 1 << 30


class StackError(HlctlError):
    """The stack cannot start as configured (CUDA mismatch, CPU fallback ...)."""


@dataclass
class StackEdges:
    """What `hlctl up` talks to; tests swap each part."""

    docker: str = "docker"
    docker_url: str | None = None  # None: DOCKER_HOST or the default socket
    snapshot: Callable[[], Any] | None = None  # -> HostSnapshot; None: NVML now
    fit: Callable[[Path, StackSettings, int | None], tuple[int, str]] | None = None


@dataclass
class UpResult:
    host: str
    action: str
    ok: bool = True
    dry_run: bool = False
    image: str | None = None
    model: str | None = None
    n_gpu_layers: int | None = None
    ctx: int | None = None
    parallel: int | None = None
    plan_source: str | None = None
    env_file: str | None = None
    env_changed: bool | None = None
    llama_command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # the .env (no secrets live in it)
    cuda: str | None = None
    offload: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        # The exact file `hlctl up` writes, so the llm_stack role writes the same bytes.
        data["env_text"] = env_text(self.env) if self.env else None
        return data


# -- planning (pure apart from reading files) ---------------------------------------------------

def lock_path(config_source: Path | None, models_dir: Path) -> Path:
    """models.lock beside the lab config file, or in the models dir (as `hlctl models pull`)."""
    return (config_source.parent if config_source else models_dir) / "models.lock"


def _default_fit(model_path: Path, settings: StackSettings, vram: int | None) -> tuple[int, str]:
    from hlctl.models.fit import estimate_fit
    from hlctl.models.gguf import read_model_header

    if vram is None:
        raise ConfigError("stack.n_gpu_layers is auto but the GPU memory is unknown",
                          hint="set stack.vram_gib or stack.n_gpu_layers")
    try:
        header = read_model_header(model_path)
    except OSError as exc:
        raise ConfigError(f"cannot read the model {model_path}: {exc.strerror or exc}",
                          hint="hlctl models pull it first") from None
    estimate = estimate_fit(header, settings.ctx, vram, parallel=settings.parallel)
    return estimate.gpu_layers, str(estimate.fits)


def _vram(settings: StackSettings, snapshot: Any) -> int | None:
    if settings.vram_gib is not None:
        return int(settings.vram_gib * GIB)
    gpus = getattr(snapshot, "gpus", None) or []
    return int(gpus[0].memory_total_bytes) if gpus and gpus[0].memory_total_bytes else None


def plan(settings: StackSettings, *, models_dir: Path, lock: Any, edges: StackEdges,
         snapshot: Any | None, image_tag: str | None = None
         ) -> tuple[ModelChoice, LaunchPlan, dict[str, str]]:
    model = choose_model(settings, lock)
    fit_layers = fit_answer = None
    if settings.n_gpu_layers == "auto":
        fit = edges.fit or _default_fit
        fit_layers, fit_answer = fit(models_dir / model.file, settings,
                                     _vram(settings, snapshot))
    launch = launch_plan(settings, fit_layers, fit_answer)
    env = render_env(settings, models_dir=models_dir, model=model, plan=launch,
                     hlctl_version=__version__, image_tag=image_tag)
    return model, launch, env


def _snapshot(edges: StackEdges) -> Any:
    if edges.snapshot is not None:
        return edges.snapshot()
    from hlctl.gpu.nvml import read_snapshot

    return read_snapshot(kernel_log=False)


def project_of(settings: StackSettings) -> runner.ComposeProject:
    return runner.ComposeProject(directory=settings.project_dir,
                                 env_file=settings.project_dir / ENV_FILE_NAME,
                                 name=settings.project_name)


def _require_compose(project: runner.ComposeProject) -> dict[str, Any]:
    if not project.compose_file.is_file():
        raise ConfigError(f"no {project.compose_file}: the stack is not installed on this host",
                          hint="run 'hlctl provision HOST' (role llm_stack) or set "
                               "stack.project_dir")
    return load_compose(project.compose_file)


# -- local actions -----------------------------------------------------------------------------

def up_local(settings: StackSettings, *, models_dir: Path, lock: Any, host: str,
             edges: StackEdges | None = None, image_tag: str | None = None,
             dry_run: bool = False, recreate: bool = False, check_only: bool = False
             ) -> UpResult:
    """Bring the stack up on this host, or (dry run) say exactly what would run, or
    (check only) also check the image's CUDA against the driver, starting nothing."""
    edges = edges or StackEdges()
    project = project_of(settings)
    compose = _require_compose(project)
    snapshot = None if dry_run and settings.n_gpu_layers != "auto" else _snapshot(edges)
    model, launch, env = plan(settings, models_dir=models_dir, lock=lock, edges=edges,
                              snapshot=snapshot, image_tag=image_tag)
    result = UpResult(host=host, action="restart" if recreate else "up", dry_run=dry_run,
                      image=env["LLAMA_IMAGE"], model=model.label,
                      n_gpu_layers=launch.n_gpu_layers, ctx=launch.ctx,
                      parallel=launch.parallel, plan_source=launch.source,
                      env_file=str(project.env_file), env=env,
                      llama_command=list(llama_command(compose, env)))
    if dry_run:
        return result
    # CUDA before anything starts: the NVIDIA runtime's own refusal comes later and reads
    # worse ("unsatisfied condition: cuda>=12.8").
    attrs = runner.inspect_image(env["LLAMA_IMAGE"], base_url=edges.docker_url)
    try:
        requirement = requirement_from_env(runner.image_env(attrs))
    except ValueError as exc:
        raise StackError(f"image {env['LLAMA_IMAGE']}: {exc}") from None
    verdict = check_cuda(requirement, getattr(snapshot, "cuda_driver_version", None),
                         getattr(snapshot, "driver_version", None), env["LLAMA_IMAGE"])
    result.cuda = verdict.message
    if not verdict.ok:
        raise StackError(verdict.message)
    if check_only:
        return result
    result.env_changed = write_env(project.env_file, env)
    runner.run_compose(runner.compose_argv(project, *runner.up_args(
        settings.timeouts.up_s, recreate=recreate), docker=edges.docker),
        timeout_s=settings.timeouts.up_s + 30)
    log = runner.run_compose(runner.compose_argv(project, *runner.logs_args(
        "llama-server", prefix=False), docker=edges.docker), timeout_s=60)
    offload = check_offload(parse_offload(log), launch.n_gpu_layers)
    result.offload = offload.message
    if not offload.ok:
        raise StackError(offload.message)
    return result


def down_local(settings: StackSettings, *, host: str, edges: StackEdges | None = None
               ) -> UpResult:
    edges = edges or StackEdges()
    project = project_of(settings)
    _require_compose(project)
    if not project.env_file.is_file():
        raise ConfigError(f"no {project.env_file}: the stack was never brought up here",
                          hint="nothing to stop; 'hlctl up' writes it")
    runner.run_compose(runner.compose_argv(project, *runner.down_args(), docker=edges.docker),
                       timeout_s=settings.timeouts.down_s)
    return UpResult(host=host, action="down", env_file=str(project.env_file))


def logs_local(settings: StackSettings, service: str, *, follow: bool, tail: int | None,
               on_line: Callable[[str], None], edges: StackEdges | None = None) -> None:
    edges = edges or StackEdges()
    if service not in runner.SERVICES:
        raise ConfigError(f"unknown service {service!r}: one of {', '.join(runner.SERVICES)}")
    project = project_of(settings)
    _require_compose(project)
    runner.run_compose(runner.compose_argv(project, *runner.logs_args(
        service, follow=follow, tail=tail), docker=edges.docker),
        timeout_s=None if follow else 120, on_line=on_line)


# -- remote: the same command on each host ------------------------------------------------------

@dataclass(frozen=True)
class HostOutcome:
    host: str
    ok: bool
    reachable: bool
    exit_code: int | None
    seconds: float
    message: str
    result: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    line = (errors or lines or ["no message"])[-1]
    return line.removeprefix("error:").strip()


def outcome_of(run: Any, *, expect_json: bool = True) -> HostOutcome:
    """One host's HostRun (from the fleet transport) as a verdict with its JSON result."""
    result = None
    if run.exit_code == 0 and expect_json:
        try:
            result = json.loads(run.stdout)
        except ValueError:
            return HostOutcome(run.host, False, True, 0, run.seconds,
                               "the host's hlctl printed no JSON (is its agent too old?)", None)
        message = "ok"
    elif not run.reachable:
        message = run.error or "unreachable"
    else:
        message = run.error or _error_line(run.stderr)
    return HostOutcome(run.host, run.exit_code == 0, run.reachable, run.exit_code,
                       run.seconds, message, result)


def run_remote(hosts: Sequence[Any], argv: Sequence[str], *, timeout_s: float,
               reuse: ConnectionReuse | None = None,
               on_output: Callable[[str, str], None] | None = None,
               expect_json: bool = True) -> list[HostOutcome]:
    """Run ``argv`` (an ``hlctl ... --json`` command) on every host in parallel."""
    from hlctl.fleet.transport import run_on_hosts

    runs = run_on_hosts(hosts, list(argv), timeout_s=timeout_s, on_output=on_output,
                        reuse=reuse)
    return [outcome_of(r, expect_json=expect_json) for r in runs]


def remote_argv(action: str, *, image_tag: str | None = None, dry_run: bool = False,
                check_only: bool = False) -> list[str]:
    argv = ["hlctl", action, "--json"]
    if image_tag:
        argv += ["--image-tag", image_tag]
    if dry_run:
        argv.append("--dry-run")
    if check_only:
        argv.append("--check")
    return argv
