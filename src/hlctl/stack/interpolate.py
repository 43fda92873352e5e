"""Compose's variable interpolation, to know exactly what compose.yaml runs (pure).

Follows the compose specification's rules: ``$VAR`` and ``${VAR}``; ``${VAR:-default}``
(unset or empty), ``${VAR-default}`` (unset); ``${VAR:?error}`` / ``${VAR?error}`` (fail);
``${VAR:+alt}`` / ``${VAR+alt}``; ``$$`` for a literal ``$``; defaults may themselves hold
interpolations. Values are interpolated, mapping keys are not. `hlctl up --dry-run` and the
integration test use it to derive llama-server's command line from compose.yaml and a .env.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hlctl.errors import ConfigError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPS = (":-", ":?", ":+", "-", "?", "+")
LLAMA_SERVICE = "llama-server"
# What llama.cpp's server image runs (ENTRYPOINT of the `server` target of
# .devops/cuda.Dockerfile); compose.yaml's `command:` is its argument list.
LLAMA_ENTRYPOINT = ("/app/llama-server",)


class InterpolationError(ConfigError):
    """A required variable is missing, or the text is not valid interpolation syntax."""


def _closing_brace(text: str, start: int) -> int:
    """Index of the ``}`` that closes the ``${`` whose body starts at ``start``."""
    depth, i = 1, start
    while i < len(text):
        if text.startswith("${", i):
            depth, i = depth + 1, i + 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise InterpolationError(f"unclosed '${{' in {text!r}")


def _braced(body: str, env: Mapping[str, str], where: str) -> str:
    match = _NAME.match(body)
    if match is None:
        raise InterpolationError(f"{where}: invalid variable name in '${{{body}}}'")
    name, rest = match.group(), body[match.end():]
    if not rest:
        return env.get(name, "")
    op = next((o for o in _OPS if rest.startswith(o)), None)
    if op is None:
        raise InterpolationError(f"{where}: invalid interpolation '${{{body}}}'")
    arg = rest[len(op):]
    value = env.get(name)
    unset_or_empty = not value
    missing = unset_or_empty if op.startswith(":") else value is None
    if op in (":-", "-"):
        return interpolate_text(arg, env, where) if missing else str(value)
    if op in (":?", "?"):
        if missing:
            message = interpolate_text(arg, env, where) or f"{name} is required"
            raise InterpolationError(f"{where}: required variable {name} is missing a value: "
                                     f"{message}", hint="set it in .env (see .env.example)")
        return str(value)
    return "" if missing else interpolate_text(arg, env, where)  # ":+" and "+"


def interpolate_text(text: str, env: Mapping[str, str], where: str = "value") -> str:
    """Resolve every ``$`` expression of one string value as compose does."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$":
            out.append(char)
            i += 1
            continue
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 2)
            out.append(_braced(text[i + 2:end], env, where))
            i = end + 1
        else:
            match = _NAME.match(text, i + 1)
            if match is None:  # a lone "$" stays as it is
                out.append("$")
                i += 1
            else:
                out.append(env.get(match.group(), ""))
                i = match.end()
    return "".join(out)


def interpolate(value: Any, env: Mapping[str, str], where: str = "") -> Any:
    """Interpolate every string value in a parsed compose document (keys stay as they are)."""
    if isinstance(value, str):
        return interpolate_text(value, env, where or "value")
    if isinstance(value, list):
        return [interpolate(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{where}.{k}" if where else str(k))
                for k, v in value.items()}
    return value


# -- .env files --------------------------------------------------------------------------------

_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


def parse_env_text(text: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Read a .env file as compose does for the forms hlctl writes and people commonly use.

    ``KEY=value`` (value interpolated against earlier keys, ``# comment`` after a space
    dropped), ``KEY='literal'`` (no interpolation, no escapes), ``KEY="text"`` (\\n, \\",
    \\\\ escapes and interpolation); blank lines and ``#`` lines are skipped.
    """
    env: dict[str, str] = {}
    scope = dict(base or {})
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _ENV_LINE.match(line)
        if match is None:
            raise ConfigError(f".env line {number}: expected KEY=VALUE, got {stripped[:40]!r}")
        key, raw = match.groups()
        raw = raw.strip()
        if raw.startswith("'"):
            end = raw.find("'", 1)
            if end < 0:
                raise ConfigError(f".env line {number}: unclosed single quote")
            value = raw[1:end]
        elif raw.startswith('"'):
            chars, i = [], 1
            while i < len(raw) and raw[i] != '"':
                if raw[i] == "\\" and i + 1 < len(raw):
                    nxt = raw[i + 1]
                    chars.append({"n": "\n", "t": "\t"}.get(nxt, nxt))
                    i += 2
                    continue
                chars.append(raw[i])
                i += 1
            if i >= len(raw):
                raise ConfigError(f".env line {number}: unclosed double quote")
            value = interpolate_text("".join(chars), scope, f".env line {number}")
        else:
            value = re.split(r"\s+#", raw, maxsplit=1)[0].rstrip()
            value = interpolate_text(value, scope, f".env line {number}")
        env[key] = value
        scope[key] = value
    return env


# -- what compose.yaml runs --------------------------------------------------------------------

@dataclass(frozen=True)
class ResolvedService:
    name: str
    image: str | None
    command: tuple[str, ...]
    mounts: tuple[tuple[str, str, bool], ...]  # (host source, container target, read only)
    raw: dict[str, Any]


def load_compose(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise ConfigError(f"{path}: no services: mapping, not a compose file")
    return data


def _mount(entry: Any) -> tuple[str, str, bool]:
    if isinstance(entry, dict):
        return str(entry.get("source", "")), str(entry["target"]), bool(entry.get("read_only"))
    parts = str(entry).split(":")
    read_only = len(parts) > 2 and "ro" in parts[2].split(",")
    return parts[0], parts[1] if len(parts) > 1 else parts[0], read_only


def resolve_service(compose: Mapping[str, Any], service: str,
                    env: Mapping[str, str]) -> ResolvedService:
    """One service of a parsed compose file with its variables resolved from ``env``."""
    raw = compose["services"].get(service)
    if raw is None:
        raise ConfigError(f"compose file has no service {service!r}")
    resolved = interpolate(raw, env, f"services.{service}")
    command = resolved.get("command") or []
    if isinstance(command, str):
        import shlex

        command = shlex.split(command)
    mounts = tuple(_mount(v) for v in resolved.get("volumes") or [])
    return ResolvedService(name=service, image=resolved.get("image"),
                           command=tuple(str(c) for c in command), mounts=mounts, raw=resolved)


def llama_command(compose: Mapping[str, Any], env: Mapping[str, str]) -> tuple[str, ...]:
    """llama-server's full argv in the container: the image's entrypoint and compose's command."""
    return LLAMA_ENTRYPOINT + resolve_service(compose, LLAMA_SERVICE, env).command
