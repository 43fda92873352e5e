"""Compose interpolation as the compose spec defines it, and the .env reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from hlctl.errors import ConfigError
from hlctl.stack.interpolate import (
    InterpolationError,
    interpolate,
    interpolate_text,
    llama_command,
    load_compose,
    parse_env_text,
    resolve_service,
)

REPO = Path(__file__).resolve().parents[2]
ENV = {"SET": "value", "EMPTY": "", "PORT": "8080"}


@pytest.mark.parametrize(("text", "expected"), [
    ("plain", "plain"),
    ("$SET", "value"),
    ("${SET}", "value"),
    ("a${SET}b", "avalueb"),
    ("$SET.txt", "value.txt"),
    ("${UNSET}", ""),
    ("${UNSET:-dflt}", "dflt"),
    ("${EMPTY:-dflt}", "dflt"),
    ("${EMPTY-dflt}", ""),  # set but empty: only ":-" replaces it
    ("${UNSET-dflt}", "dflt"),
    ("${SET:-dflt}", "value"),
    ("${UNSET:--1}", "-1"),  # a default that starts with a dash
    ("${SET:+alt}", "alt"),
    ("${EMPTY:+alt}", ""),
    ("${EMPTY+alt}", "alt"),
    ("${UNSET+alt}", ""),
    ("${UNSET:-${PORT}}", "8080"),  # nested default
    ("${UNSET:-http://h:${PORT}/x}", "http://h:8080/x"),
    ("$$SET", "$SET"),  # $$ escapes
    ("cost $5", "cost $5"),  # a lone $ stays
    ("${SET:?must be set}", "value"),
])
def test_interpolation(text: str, expected: str) -> None:
    assert interpolate_text(text, ENV) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("${UNSET:?set UNSET in .env}", "required variable UNSET is missing a value: set UNSET"),
    ("${EMPTY:?no}", "required variable EMPTY"),
    ("${UNSET?}", "UNSET is required"),
    ("${SET", "unclosed"),
    ("${1BAD}", "invalid variable name"),
    ("${SET!x}", "invalid interpolation"),
])
def test_interpolation_errors(text: str, message: str) -> None:
    with pytest.raises(InterpolationError, match=message.replace("$", r"\$")):
        interpolate_text(text, ENV, "services.x.image")


def test_empty_with_plain_question_mark_is_accepted() -> None:
    assert interpolate_text("${EMPTY?no}", ENV) == ""


def test_keys_are_not_interpolated() -> None:
    assert interpolate({"$SET": ["${SET}", 3, True]}, ENV) == {"$SET": ["value", 3, True]}


def test_env_file_forms() -> None:
    env = parse_env_text(
        "# comment\n\nA=1\nexport B = two words  # trailing comment\nC='lit ${A} $$'\n"
        'D="x\\ny ${A}"\nE=${A}-${MISSING:-d}\nF=\n', base={})
    assert env == {"A": "1", "B": "two words", "C": "lit ${A} $$", "D": "x\ny 1",
                   "E": "1-d", "F": ""}
    with pytest.raises(ConfigError, match="line 1"):
        parse_env_text("not a pair")
    with pytest.raises(ConfigError, match="unclosed single quote"):
        parse_env_text("A='x")


def test_llama_server_command_from_the_real_compose_file() -> None:
    compose = load_compose(REPO / "compose" / "compose.yaml")
    env = {"LLAMA_IMAGE": "hlctl/llama-server-cuda:t", "LLAMA_MODEL_FILE": "org/m.gguf",
           "LLAMA_N_GPU_LAYERS": "99", "LLAMA_CTX_SIZE": "8192", "LLAMA_PARALLEL": "2",
           "HLCTL_MODELS_DIR": "/srv/models"}
    argv = llama_command(compose, env)
    assert argv[0] == "/app/llama-server"
    pairs = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert argv[argv.index("--model") + 1] == "/models/org/m.gguf"
    assert argv[argv.index("--n-gpu-layers") + 1] == "99"
    assert argv[argv.index("--ctx-size") + 1] == "8192"
    assert argv[argv.index("--parallel") + 1] == "2"
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert argv[argv.index("--port") + 1] == "8080"
    assert "--metrics" in argv and pairs
    service = resolve_service(compose, "llama-server", env)
    assert service.image == "hlctl/llama-server-cuda:t"
    assert service.mounts == (("/srv/models", "/models", True),)


def test_missing_required_variable_names_it() -> None:
    compose = load_compose(REPO / "compose" / "compose.yaml")
    with pytest.raises(InterpolationError, match="LLAMA_N_GPU_LAYERS"):
        llama_command(compose, {"LLAMA_IMAGE": "x:y", "LLAMA_MODEL_FILE": "m.gguf",
                                "HLCTL_MODELS_DIR": "/m"})
