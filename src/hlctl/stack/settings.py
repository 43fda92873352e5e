"""The ``stack`` section of the lab config: what `hlctl up` runs on a GPU host.

Read by `hlctl up|down|restart|logs` (as ``LabConfig.stack``, with the usual HLCTL_STACK__*
precedence) and by the llm_stack role (which gets the lab config as ``hlctl_lab_config``);
a missing section means the defaults.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from hlctl.settingsmodel import StrictModel

# [registry[:port]/]path, lower case, no tag and no digest
_IMAGE_REPO = re.compile(r"^(?:[a-zA-Z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:(?:[._-]|__|/)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CUDA = re.compile(r"^\d+\.\d+\.\d+$")
_ARCH = re.compile(r"^\d+\.\d+$")


class StackTimeouts(StrictModel):
    up_s: float = Field(900, gt=0, le=7200, description=(
        "`docker compose up --wait` may take this long (a large model loads for minutes)"))
    down_s: float = Field(120, gt=0, le=3600, description=(
        "`docker compose down` may take this long"))
    remote_s: float = Field(1200, gt=0, le=7200, description=(
        "a remote `hlctl up|down|restart` on a host (over SSH) may take this long"))


class StackSettings(StrictModel):
    """What runs on each GPU host; see hlctl.example.yaml."""

    image_repo: str = Field("hlctl/llama-server-cuda", description=(
        "llama-server image repository (the llm_stack role builds it under this name)"))
    image_tag: str | None = Field(None, description=(
        "exact image tag; default: <llama_cpp_release>-cuda<cuda_version>-sm<arch without dot>"))
    image_digest: str | None = Field(None, description=(
        "sha256:... to pin the image by digest instead of a tag (wins over image_tag)"))
    llama_cpp_release: str = Field("b11434", pattern=r"^b\d+$", description=(
        "llama.cpp release tag whose .devops/cuda.Dockerfile builds the image"))
    cuda_version: str = Field("12.1.1", description=(
        "CUDA toolkit of the image build: at most what the host's driver supports "
        "(12.1.x for the 530 driver branch)"))
    cuda_arch: str = Field("8.6", description=(
        "GPU compute capability to build for (8.6: RTX 3090/A-series Ampere)"))
    model: str | None = Field(None, description=(
        "model to serve: a models.lock name (or repo/name), or a .gguf path under models_dir; "
        "default: the only model in models.lock"))
    ctx: int = Field(8192, ge=0, description="context size in tokens for all slots together")
    parallel: int = Field(2, ge=1, le=256, description="llama-server slots (--parallel)")
    n_gpu_layers: int | Literal["auto"] = Field("auto", description=(
        "-ngl: a number, or auto = what `hlctl models fit` says fits the GPU"))
    vram_gib: float | None = Field(None, gt=0, description=(
        "GPU memory for the fit when n_gpu_layers is auto; default: read GPU 0 through NVML"))
    router_port: int = Field(8088, ge=1, le=65535, description="router's port on the LAN")
    router_bind: str = Field("0.0.0.0", description="host address the router port binds to")
    project_dir: Path = Field(Path("/opt/hlctl/compose"), description=(
        "where compose/ lives on the host (.env and secrets/ beside compose.yaml)"))
    project_name: str = Field("hlctl", pattern=r"^[a-z0-9][a-z0-9_-]*$", description=(
        "docker compose project name"))
    secrets_dir: Path | None = Field(None, description=(
        "directory of the 0600 secret files; default: project_dir/secrets"))
    health_dir: Path = Field(Path("/var/lib/hlctl/health"), description=(
        "the host's health result directory, mounted read-only into the router"))
    lab_config_file: Path = Field(Path("/etc/hlctl/hlctl.yaml"), description=(
        "the host's lab config, mounted read-only into the router"))
    timeouts: StackTimeouts = Field(StackTimeouts(), description="how long each step may take")

    @field_validator("image_repo")
    @classmethod
    def _repo(cls, value: str) -> str:
        if not _IMAGE_REPO.match(value) or "@" in value:
            raise ValueError(f"{value!r} is not an image repository (no tag, no digest)")
        return value

    @field_validator("image_tag")
    @classmethod
    def _tag(cls, value: str | None) -> str | None:
        if value is not None and not _TAG.match(value):
            raise ValueError(f"{value!r} is not a valid image tag")
        return value

    @field_validator("image_digest")
    @classmethod
    def _digest(cls, value: str | None) -> str | None:
        if value is not None and not _DIGEST.match(value):
            raise ValueError("must be sha256: followed by 64 hex digits")
        return value

    @field_validator("cuda_version")
    @classmethod
    def _cuda(cls, value: str) -> str:
        if not _CUDA.match(value):
            raise ValueError(f"{value!r} is not a CUDA version like 12.1.1")
        return value

    @field_validator("cuda_arch")
    @classmethod
    def _arch(cls, value: str) -> str:
        if not _ARCH.match(value):
            raise ValueError(f"{value!r} is not a compute capability like 8.6")
        return value

    @model_validator(mode="after")
    def _ngl(self) -> StackSettings:
        if isinstance(self.n_gpu_layers, int) and self.n_gpu_layers < 0:
            raise ValueError("n_gpu_layers must be 0 or more, or auto")
        return self

    @property
    def default_tag(self) -> str:
        return (f"{self.llama_cpp_release}-cuda{self.cuda_version}-"
                f"sm{self.cuda_arch.replace('.', '')}")

    def image(self, tag: str | None = None) -> str:
        """The image reference compose runs: repo@digest, or repo:tag (``tag`` overrides)."""
        if tag is not None:
            if not _TAG.match(tag):
                from hlctl.errors import UsageError

                raise UsageError(f"--image-tag {tag!r} is not a valid image tag")
            return f"{self.image_repo}:{tag}"
        if self.image_digest:
            return f"{self.image_repo}@{self.image_digest}"
        return f"{self.image_repo}:{self.image_tag or self.default_tag}"

    @property
    def effective_secrets_dir(self) -> Path:
        return self.secrets_dir or self.project_dir / "secrets"
