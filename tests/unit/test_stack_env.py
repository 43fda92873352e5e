"""The stack's .env: model choice, -ngl from config or fit, rendering, 0600 atomic writing."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from hlctl.errors import ConfigError, UsageError
from hlctl.models.lock import ModelsLock
from hlctl.stack.envfile import (
    LaunchPlan,
    choose_model,
    env_text,
    launch_plan,
    render_env,
    write_env,
)
from hlctl.stack.interpolate import llama_command, load_compose, parse_env_text
from hlctl.stack.settings import StackSettings
from tests.fixtures.compose_env import GEMMA_FILE, GEMMA_REPO, gemma_lock, settings, two_model_lock

REPO = Path(__file__).resolve().parents[2]


def test_only_model_in_the_lock_is_the_default(tmp_path: Path) -> None:
    choice = choose_model(settings(tmp_path), gemma_lock())
    assert choice.file == f"{GEMMA_REPO}/{GEMMA_FILE}"
    assert choice.locked is not None and choice.label == f"{GEMMA_REPO}/gemma-3-270m-q4_k_m"


def test_model_must_be_named_when_the_lock_has_several(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds 2 models"):
        choose_model(settings(tmp_path), two_model_lock())
    chosen = choose_model(settings(tmp_path, model="Mistral-7B-Instruct-v0.3-Q4_K_M"),
                          two_model_lock())
    assert chosen.file.endswith("Mistral-7B-Instruct-v0.3-Q4_K_M.gguf")
    with pytest.raises(ConfigError, match="matches no model"):
        choose_model(settings(tmp_path, model="llama"), two_model_lock())
    with pytest.raises(ConfigError, match="holds 0 models"):
        choose_model(settings(tmp_path), ModelsLock())


def test_a_gguf_path_outside_the_lock_stays_inside_models_dir(tmp_path: Path) -> None:
    assert choose_model(settings(tmp_path, model="local/x.gguf"), ModelsLock()).file == \
        "local/x.gguf"
    for bad in ("/etc/x.gguf", "../x.gguf"):
        with pytest.raises(ConfigError, match="inside models_dir"):
            choose_model(settings(tmp_path, model=bad), ModelsLock())


def test_ngl_from_config_or_fit(tmp_path: Path) -> None:
    assert launch_plan(settings(tmp_path, n_gpu_layers=20), None) == LaunchPlan(20, 8192, 2,
                                                                               "config")
    assert launch_plan(settings(tmp_path), 33, "offload").n_gpu_layers == 33
    with pytest.raises(ConfigError, match="does not fit"):
        launch_plan(settings(tmp_path), 0, "no")
    with pytest.raises(ConfigError, match="no fit estimate"):
        launch_plan(settings(tmp_path), None)


def test_render_env_feeds_every_required_compose_variable(tmp_path: Path) -> None:
    s = settings(tmp_path, ctx=16384, parallel=4, router_port=9000)
    env = render_env(s, models_dir=Path("/srv/models"), model=choose_model(s, gemma_lock()),
                     plan=launch_plan(s, 99, "fully"), hlctl_version="0.1.0")
    assert env["LLAMA_IMAGE"] == "hlctl/llama-server-cuda:b11434-cuda12.1.1-sm86"
    assert env["LLAMA_N_GPU_LAYERS"] == "99" and env["LLAMA_CTX_SIZE"] == "16384"
    assert env["LLAMA_PARALLEL"] == "4" and env["LLAMA_CTX_PER_SLOT"] == "4096"
    assert env["ROUTER_PORT"] == "9000" and env["HLCTL_SECRETS_DIR"] == str(tmp_path / "secrets")
    # every variable compose.yaml requires resolves; the example documents every key we write
    compose = load_compose(REPO / "compose" / "compose.yaml")
    argv = llama_command(compose, parse_env_text(env_text(env)))
    assert f"/models/{GEMMA_REPO}/{GEMMA_FILE}" in argv
    example = parse_env_text((REPO / "compose" / ".env.example").read_text())
    assert set(env) <= set(example), set(env) - set(example)


def test_image_tag_and_digest(tmp_path: Path) -> None:
    s = settings(tmp_path, image_digest="sha256:" + "ab" * 32)
    assert s.image() == "hlctl/llama-server-cuda@sha256:" + "ab" * 32
    assert s.image("b11400-cuda12.1.1-sm86") == "hlctl/llama-server-cuda:b11400-cuda12.1.1-sm86"
    with pytest.raises(UsageError, match="not a valid image tag"):
        s.image("bad tag")


def test_settings_errors_have_key_paths() -> None:
    from hlctl.config import build_config

    with pytest.raises(ConfigError) as info:
        build_config({"stack": {"cuda_version": "12", "n_gpu_layers": -1}})
    assert any(p.startswith("stack.cuda_version:") for p in info.value.problems)
    assert build_config({}).stack == StackSettings()


def test_write_env_is_0600_atomic_and_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "proj" / ".env"
    env = {"A": "1", "B": "two words", "C": "${NOT_EXPANDED}"}
    assert write_env(path, env) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert parse_env_text(path.read_text()) == env  # quoting keeps values literal
    assert write_env(path, env) is False
    assert [p.name for p in path.parent.iterdir()] == [".env"]  # no temp file left
    with pytest.raises(ConfigError, match="quote or newline"):
        write_env(path, {"A": "it's"})


@pytest.mark.parametrize("repo", ["hlctl/llama:latest", "a@sha256:00", "with space/x", ""])
def test_image_repo_takes_no_tag_or_digest(repo: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        StackSettings(image_repo=repo)
    assert StackSettings(image_repo="registry.lan:5000/ml/llama-server").image().startswith(
        "registry.lan:5000/ml/llama-server:b11434-")
