"""The lab config (hlctl.yaml): schema, location, precedence and validation with key paths.

Precedence: flags > ``HLCTL_*`` env > the file > defaults. Secrets are never inline: a secret
field is ``{env: NAME}`` or ``{file: PATH}`` (mode 0600), resolved only when used.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hlctl.errors import ConfigError
from hlctl.fleet.settings import FleetSettings
from hlctl.provision.settings import ProxmoxSettings, VmSettings
from hlctl.router.config import RouterSettings
from hlctl.secret import SecretRef
from hlctl.settingsmodel import StrictModel, require_unique_names
from hlctl.stack.settings import StackSettings
from hlctl.yamlfile import read_yaml_file

__all__ = ["ConfigError", "LabConfig", "SecretRef", "load_config"]

CONFIG_FILE_NAME = "hlctl.yaml"
HOST_CONFIG_PATH = Path("/etc/hlctl/hlctl.yaml")
# Env vars that steer hlctl itself rather than override a config key.
_RESERVED_ENV = {"HLCTL_CONFIG", "HLCTL_DEBUG"}


class TemperatureThresholds(StrictModel):
    slowdown_margin_c: float = Field(5, ge=0, le=30, description=(
        "WARNING this many degrees below the card's own slowdown threshold"))
    crit_c: float = Field(90, gt=0, le=150, description=(
        "CRITICAL at or above this when the card reports no slowdown threshold"))
    warn_c: float = Field(83, gt=0, le=150, description=(
        "WARNING at or above this when the card reports no slowdown threshold"))

    @field_validator("warn_c")
    @classmethod
    def _warn_below_crit(cls, warn: float, info: ValidationInfo) -> float:
        crit = info.data.get("crit_c")
        if crit is not None and warn >= crit:
            raise ValueError(f"must be below crit_c ({warn:g} >= {crit:g})")
        return warn


# After NVIDIA's XID catalog: reset/reboot-class errors are critical, application-class warnings.
DEFAULT_CRITICAL_XIDS = (46, 48, 62, 64, 74, 79, 95, 119, 120)
DEFAULT_WARNING_XIDS = (13, 31, 43, 45, 63, 68, 92, 94, 109)


class XidThresholds(StrictModel):
    critical: tuple[int, ...] = DEFAULT_CRITICAL_XIDS
    warning: tuple[int, ...] = DEFAULT_WARNING_XIDS
    kernel_log: bool = Field(True, description="read NVRM Xid lines from the kernel log")

    @model_validator(mode="after")
    def _disjoint(self) -> XidThresholds:
        both = sorted(set(self.critical) & set(self.warning))
        if both:
            raise ValueError(f"XID {both[0]} is listed as both critical and warning")
        return self


class HealthThresholds(StrictModel):
    temperature: TemperatureThresholds = TemperatureThresholds()
    fan_stopped_above_c: float = Field(60, ge=0, le=150, description=(
        "a fan at 0% above this temperature is a WARNING"))
    min_cuda_driver_version: int = Field(12010, ge=1000, description=(
        "CRITICAL when the driver supports an older CUDA than this (12010 is CUDA 12.1)"))
    xid: XidThresholds = XidThresholds()


class Webhook(StrictModel):
    name: str = Field(min_length=1)
    url: str = Field(pattern=r"^https?://")
    kind: Literal["json", "ntfy"] = "json"
    token: SecretRef | None = None  # sent as a bearer token


class Alerts(StrictModel):
    webhooks: list[Webhook] = Field(default_factory=list)
    heartbeat_url: str | None = Field(None, pattern=r"^https?://")
    timeout_s: float = Field(5, gt=0, le=60)

    @field_validator("webhooks")
    @classmethod
    def _unique_names(cls, hooks: list[Webhook]) -> list[Webhook]:
        require_unique_names((h.name for h in hooks), "webhook name")
        return hooks


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


class LabConfig(StrictModel):
    models_dir: Path = Field(default_factory=lambda: _xdg("XDG_DATA_HOME", ".local/share")
                             / "hlctl" / "models")
    state_dir: Path = Field(default_factory=lambda: _xdg("XDG_STATE_HOME", ".local/state")
                            / "hlctl")
    health: HealthThresholds = HealthThresholds()
    alerts: Alerts = Alerts()
    router: RouterSettings = RouterSettings()
    stack: StackSettings = StackSettings()
    fleet: FleetSettings = FleetSettings()
    proxmox: ProxmoxSettings | None = None
    vms: dict[str, VmSettings] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _vms_need_proxmox(self) -> LabConfig:
        if self.vms and self.proxmox is None:
            raise ValueError("vms are configured but the proxmox section is missing")
        return self

    @field_validator("models_dir", "state_dir")
    @classmethod
    def _expand_home(cls, path: Path) -> Path:
        return path.expanduser()


class LoadedConfig(BaseModel):
    """The effective config and where it came from (``source`` is None for pure defaults)."""

    model_config = ConfigDict(frozen=True)
    config: LabConfig
    source: Path | None


def find_config_file(explicit: Path | None, environ: Mapping[str, str]) -> Path | None:
    """Apply DESIGN.md's search order; an explicit path must exist, the others may not."""
    if explicit is not None:
        return explicit
    if environ.get("HLCTL_CONFIG"):
        return Path(environ["HLCTL_CONFIG"])
    candidates = [Path.cwd() / CONFIG_FILE_NAME]
    xdg = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    candidates.append(Path(xdg) / "hlctl" / CONFIG_FILE_NAME)
    candidates.append(HOST_CONFIG_PATH)
    return next((c for c in candidates if c.is_file()), None)


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``HLCTL_HEALTH__TEMPERATURE__CRIT_C=88`` -> {"health": {"temperature": {"crit_c": 88}}}."""
    tree: dict[str, Any] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith("HLCTL_") or name in _RESERVED_ENV:
            continue
        path = [part.lower() for part in name[len("HLCTL_"):].split("__") if part]
        # Only names that start at a config section override it; other HLCTL_* variables
        # (HLCTL_INVENTORY, HLCTL_ANSIBLE_DIR, test knobs) steer hlctl in other ways.
        if not path or path[0] not in LabConfig.model_fields:
            continue
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            try:
                node[path[-1]] = yaml.safe_load(raw) if raw else raw
            except yaml.YAMLError:
                node[path[-1]] = raw
    return tree


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _path_of(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def describe_errors(exc: ValidationError) -> list[str]:
    """Turn pydantic's errors into ``key.path: message`` lines, one per problem."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if p not in ("function-after", "function-before"))
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against hlctl.example.yaml)"
        elif message.startswith("Value error, "):
            message = message[len("Value error, "):]
        elif err["type"] == "missing":
            message = "is required"
        problems.append(f"{_path_of(loc)}: {message}")
    return problems


def read_config_file(path: Path) -> dict[str, Any]:
    """Read YAML into a mapping; raise ConfigError with the line of a syntax error."""
    data = read_yaml_file(path, what="config file",
                          missing_hint="run 'hlctl init' to write a starter config")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys",
                          problems=["(top level): must be a mapping of keys"])
    return data


def build_config(data: Mapping[str, Any], source: Path | None = None) -> LabConfig:
    try:
        return LabConfig.model_validate(dict(data))
    except ValidationError as exc:
        problems = describe_errors(exc)
        where = f"{source}: " if source else ""
        count = f"{len(problems)} problems" if len(problems) > 1 else "1 problem"
        raise ConfigError(f"{where}{count}: {problems[0]}"
                          + (" ..." if len(problems) > 1 else ""),
                          problems=problems, hint="run 'hlctl config check' to list them") from None


def load_config(explicit: Path | None = None, *, environ: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> LoadedConfig:
    """Load the effective config: defaults, then the file, then env, then flag overrides."""
    environ = os.environ if environ is None else environ
    source = find_config_file(explicit, environ)
    data = read_config_file(source) if source is not None else {}
    data = _merge(data, env_overrides(environ))
    if overrides:
        data = _merge(data, overrides)
    return LoadedConfig(config=build_config(data, source), source=source)


def _redact(value: Any) -> Any:
    if isinstance(value, SecretRef):
        return f"<secret {value.describe()}>"
    if isinstance(value, BaseModel):
        extra = value.model_extra or {}
        fields = {name: getattr(value, name) for name in type(value).model_fields}
        return {k: _redact(v) for k, v in {**fields, **extra}.items()}
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def redacted(config: LabConfig) -> dict[str, Any]:
    """The config as JSON-able data with every secret shown only by where it lives."""
    return _redact(config)
