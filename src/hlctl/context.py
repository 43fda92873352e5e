"""The environment a command runs in, injected so tests can swap any part of it."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hlctl.config import LabConfig, LoadedConfig
    from hlctl.fleet.transport import ConnectionReuse


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class AppContext:
    """Config path, environment, clock and verbosity; the config loads on first use."""

    config_path: Path | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    clock: Callable[[], datetime] = utc_now
    verbose: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)
    _loaded: LoadedConfig | None = None

    @property
    def loaded(self) -> LoadedConfig:
        if self._loaded is None:
            from hlctl.config import load_config

            self._loaded = load_config(self.config_path, environ=self.environ,
                                       overrides=self.overrides)
        return self._loaded

    @property
    def config(self) -> LabConfig:
        return self.loaded.config

    @property
    def state_dir(self) -> Path:
        return self.config.state_dir

    def ssh_reuse(self) -> ConnectionReuse | None:
        """How fleet commands share each host's SSH connection (lab config fleet.ssh_reuse_s)."""
        from hlctl.fleet.transport import connection_reuse

        return connection_reuse(self.state_dir, self.config.fleet.ssh_reuse_s)

    @property
    def debug(self) -> bool:
        return self.environ.get("HLCTL_DEBUG", "") not in ("", "0")
