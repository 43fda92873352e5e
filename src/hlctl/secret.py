"""Where a secret lives: never inline in the lab config, only an env var or a 0600 file."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from hlctl.errors import ConfigError


class SecretRef(BaseModel):
    """Where a secret lives: an environment variable or a file readable only by its owner."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _not_inline(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("secrets are never written inline: use {env: NAME} or {file: PATH}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env or file")
        return self

    def describe(self) -> str:
        return f"env:{self.env}" if self.env else f"file:{self.file}"

    def reveal(self, environ: Mapping[str, str] | None = None) -> str:
        """Read the secret now; raise ConfigError saying where it was looked for."""
        environ = os.environ if environ is None else environ
        if self.env:
            value = environ.get(self.env)
            if not value:
                raise ConfigError(f"secret env var {self.env} is not set",
                                  hint=f"export {self.env}=... before running hlctl")
            return value
        assert self.file is not None
        try:
            info = self.file.stat()
        except OSError as exc:
            raise ConfigError(f"secret file {self.file}: {exc.strerror}") from None
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"secret file {self.file} is readable by others",
                              hint=f"chmod 600 {self.file}")
        return self.file.read_text().strip()
