"""The stack's .env: rendered from the lab config, models.lock and the fit (pure), written
0600 and atomically (edge).

compose.yaml reads every setting from it; compose/.env.example documents each key.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hlctl.errors import ConfigError
from hlctl.models.lock import LockedModel, ModelsLock
from hlctl.stack.settings import StackSettings

ENV_FILE_NAME = ".env"
_PLAIN = re.compile(r"^[A-Za-z0-9_./:@+,=%-]*$")


@dataclass(frozen=True)
class ModelChoice:
    file: str  # relative to the models dir (the container's /models)
    label: str  # repo/name, or the path
    locked: LockedModel | None


@dataclass(frozen=True)
class LaunchPlan:
    """The fitted launch: what -ngl, --ctx-size and --parallel will be."""

    n_gpu_layers: int
    ctx: int
    parallel: int
    source: str  # "config" or "fit"


def choose_model(settings: StackSettings, lock: ModelsLock) -> ModelChoice:
    """The model to serve: the configured models.lock entry (or .gguf path), else the only one."""
    wanted = settings.model
    if wanted is None:
        if len(lock.models) != 1:
            names = ", ".join(f"{m.repo}/{m.name}" for m in lock.models) or "none"
            raise ConfigError(f"stack.model is not set and models.lock holds "
                              f"{len(lock.models)} models ({names})",
                              hint="set stack.model to one of them")
        found = lock.models
    else:
        found = lock.find(wanted)
        if not found and wanted.endswith(".gguf"):
            path = PurePosixPath(wanted)
            if path.is_absolute() or ".." in path.parts:
                raise ConfigError(f"stack.model {wanted!r}: give a path inside models_dir")
            return ModelChoice(file=str(path), label=str(path), locked=None)
        if len(found) != 1:
            what = "matches no model" if not found else f"matches {len(found)} models"
            raise ConfigError(f"stack.model {wanted!r} {what} in models.lock",
                              hint="run 'hlctl models list' or pull it first")
    model = found[0]
    # Split models load from their first shard; llama-server finds the others beside it.
    first = sorted(f.path for f in model.files)[0]
    return ModelChoice(file=f"{model.repo}/{first}", label=f"{model.repo}/{model.name}",
                       locked=model)


def launch_plan(settings: StackSettings, fit_gpu_layers: int | None,
                fit_answer: str | None = None) -> LaunchPlan:
    """-ngl from the config, or from the fit when it says auto; a model that does not fit
    at all must not start (it would OOM, maybe 45 minutes into a run)."""
    if settings.n_gpu_layers != "auto":
        return LaunchPlan(int(settings.n_gpu_layers), settings.ctx, settings.parallel, "config")
    if fit_gpu_layers is None:
        raise ConfigError("stack.n_gpu_layers is auto but no fit estimate was made",
                          hint="set stack.n_gpu_layers or make the model file readable")
    if fit_answer == "no":
        raise ConfigError(f"the model does not fit at context {settings.ctx} with "
                          f"{settings.parallel} slots, not even with offload to RAM",
                          hint="lower stack.ctx or stack.parallel, or pick a smaller quant "
                               "(hlctl models fit)")
    return LaunchPlan(fit_gpu_layers, settings.ctx, settings.parallel, "fit")


def render_env(settings: StackSettings, *, models_dir: Path, model: ModelChoice,
               plan: LaunchPlan, hlctl_version: str, image_tag: str | None = None
               ) -> dict[str, str]:
    """Every variable compose.yaml reads, as strings, in .env.example's order."""
    per_slot = plan.ctx // plan.parallel if plan.ctx else 0
    return {
        "LLAMA_IMAGE": settings.image(image_tag),
        "HLCTL_MODELS_DIR": str(models_dir),
        "LLAMA_MODEL_FILE": model.file,
        "LLAMA_MODEL_ALIAS": model.locked.name if model.locked else PurePosixPath(
            model.file).stem,
        "LLAMA_N_GPU_LAYERS": str(plan.n_gpu_layers),
        "LLAMA_CTX_SIZE": str(plan.ctx),
        "LLAMA_PARALLEL": str(plan.parallel),
        "LLAMA_CTX_PER_SLOT": str(max(per_slot, 256)),
        "LLAMA_PORT": "8080",
        "HLCTL_VERSION": hlctl_version,
        "ROUTER_PORT": str(settings.router_port),
        "ROUTER_BIND": settings.router_bind,
        "HLCTL_SECRETS_DIR": str(settings.effective_secrets_dir),
        "HLCTL_HEALTH_DIR": str(settings.health_dir),
        "HLCTL_LAB_CONFIG": str(settings.lab_config_file),
    }


def _quote(key: str, value: str) -> str:
    if _PLAIN.match(value):
        return value
    if "'" in value or "\n" in value:
        raise ConfigError(f".env value of {key} holds a quote or newline; refusing to write it")
    return f"'{value}'"  # single quotes: compose does not interpolate inside them


def env_text(env: dict[str, str]) -> str:
    lines = ["# Written by hlctl up / the llm_stack role from the lab config; do not edit.",
             "# compose/.env.example documents every key."]
    lines += [f"{key}={_quote(key, value)}" for key, value in env.items()]
    return "\n".join(lines) + "\n"


def write_env(path: Path, env: dict[str, str]) -> bool:
    """Replace ``path`` atomically with mode 0600; False when the content was already so."""
    text = env_text(env)
    try:
        if path.read_text() == text and (path.stat().st_mode & 0o777) == 0o600:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".env.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True
