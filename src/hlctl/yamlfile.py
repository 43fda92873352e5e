"""Read one YAML file (the lab config, the inventory): a missing file or a syntax error is one
ConfigError line that names the file, and the line and column of the error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hlctl.errors import ConfigError


def read_yaml_file(path: Path, *, what: str, missing_hint: str | None = None) -> Any:
    """The parsed document (None for an empty file); ``what`` names the file in errors."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist", hint=missing_hint) from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        line = f"{what} {path}:{where} {problem}"
        raise ConfigError(line, problems=[line]) from None
