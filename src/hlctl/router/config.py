"""The ``router`` section of the lab config: keys, upstreams, aliases, rules, budget, prices.

Secrets (router keys, upstream API keys) are ``{env: NAME}`` or ``{file: PATH}`` references,
never inline; they are read once when the router starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from hlctl.secret import SecretRef
from hlctl.settingsmodel import StrictModel, require_unique_names

if TYPE_CHECKING:
    from hlctl.config import LabConfig

BUILTIN_ALIASES = ("local", "cloud", "auto")


class RouterKey(StrictModel):
    name: str = Field(min_length=1, description=(
        "who holds the key; shown in the ledger and `hlctl usage --by key`, never the key"))
    secret: SecretRef = Field(description="the bearer key itself: {env: NAME} or {file: PATH}")
    scope: Literal["full", "local-only"] = Field("full", description=(
        "local-only keys make every request private: it never reaches the cloud"))


class LocalBackend(StrictModel):
    name: str = Field(min_length=1, description="label in /health, metrics and the ledger")
    url: str = Field(pattern=r"^https?://[^/]+", description=(
        "llama-server base URL without /v1, e.g. http://gpu01:8080"))
    model: str | None = Field(None, description=(
        "model name sent upstream (llama-server serves one model and ignores it)"))
    api_key: SecretRef | None = Field(None, description="llama-server --api-key, if set")
    context_tokens: int = Field(8192, ge=256, description=(
        "the server's context size; prompts estimated above it go to the cloud under auto"))


class CloudProvider(StrictModel):
    name: str = Field("cloud", min_length=1, description="label in metrics and the ledger")
    url: str = Field(pattern=r"^https?://[^/]+", description=(
        "OpenAI-compatible base URL including /v1, e.g. https://api.openai.com/v1"))
    api_key: SecretRef | None = Field(None, description=(
        "provider key: {env: NAME} or {file: PATH} (0600); never logged or stored"))
    model: str = Field(min_length=1, description="model name sent to the provider")
    input_usd_per_1m: float = Field(ge=0, description="price per 1M prompt tokens, USD")
    output_usd_per_1m: float = Field(ge=0, description="price per 1M completion tokens, USD")


class AliasSpec(StrictModel):
    route: Literal["local", "cloud", "auto"] = Field(description="where this alias goes")
    private: bool = Field(False, description="requests naming this alias never reach the cloud")
    model: str | None = Field(None, description=(
        "model name sent to a local upstream instead of the alias (the cloud always gets "
        "cloud.model)"))


class ComplexityRules(StrictModel):
    keywords: tuple[str, ...] = Field((), description=(
        "under auto, a prompt containing any of these (case-insensitive) goes to the cloud"))
    max_prompt_chars: int | None = Field(None, ge=1, description=(
        "under auto, prompts longer than this many characters go to the cloud"))
    reasoning_hint: bool = Field(True, description=(
        "under auto, a request with reasoning_effort set goes to the cloud"))


class RouterTimeouts(StrictModel):
    connect_s: float = Field(2, gt=0, le=60, description="TCP connect to an upstream")
    first_chunk_s: float = Field(20, gt=0, le=600, description=(
        "streaming: no chunk with choices by then is a failure (falls back before commit)"))
    response_s: float = Field(300, gt=0, le=3600, description=(
        "non-streaming: the whole upstream answer must arrive within this"))
    stream_idle_s: float = Field(60, gt=0, le=3600, description=(
        "streaming: the longest silence between chunks after the first"))
    keepalive_s: float = Field(4, gt=0, le=300, description=(
        "idle upstream connections close after this; keep it below the upstream's own "
        "keep-alive (llama-server: 5 s) so a reused socket is never already closed"))


class Energy(StrictModel):
    watts: float = Field(350, gt=0, description=(
        "GPU power while generating, used when NVML cannot be read"))
    use_nvml: bool = Field(True, description="read the GPUs' power draw when NVML is available")
    usd_per_kwh: float = Field(0.12, ge=0, description="electricity price")


class GpuHealth(StrictModel):
    divert: bool = Field(True, description=(
        "while the local GPU's latest health result is CRITICAL, send non-private auto "
        "traffic to the cloud (reason local_unhealthy); private and explicit local stay local"))
    path: str | None = Field(None, description=(
        "the host's latest `hlctl health` result; default <state_dir>/health/last.json "
        "(the router container mounts the host's /var/lib/hlctl/health there read-only)"))
    stale_after_s: float = Field(180, gt=0, description=(
        "a result older than this (by its checked_at) is ignored: unknown, no diversion; "
        "3x the gpu_healthcheck timer's minutely interval"))
    recheck_s: float = Field(1, gt=0, le=60, description=(
        "the file's mtime is checked at most this often; it is read only when it changed"))


class EconomicsDefaults(StrictModel):
    gpu_price_usd: float = Field(1500, ge=0, description="what the GPU cost")
    gpu_lifetime_years: float = Field(3, gt=0, description="years to write the GPU off over")
    hours_per_day: float = Field(8, ge=0, le=24, description="hours a day the GPU works")
    monthly_tokens: int = Field(2_000_000, ge=0, description="tokens a month to compare at")
    input_share: float = Field(0.75, ge=0, le=1, description=(
        "share of those tokens that are prompt (input) tokens"))


class RouterSettings(StrictModel):
    """Everything `hlctl router serve` needs; see hlctl.example.yaml."""

    host: str = Field("127.0.0.1", description="listen address (0.0.0.0 for the LAN)")
    port: int = Field(8088, ge=1, le=65535, description="listen port")
    keys: list[RouterKey] = Field([], description=(
        "bearer keys accepted; every request needs one (no keys: every request gets 401)"))
    local: list[LocalBackend] = Field([], description=(
        "llama-server backends; the least busy healthy one serves each request"))
    cloud: CloudProvider | None = Field(None, description="the cloud provider for fallback")
    aliases: dict[str, AliasSpec] = Field({}, description=(
        "extra model names clients may ask for (local, cloud and auto always exist)"))
    default_alias: str = Field("auto", description="alias used when a request names none")
    rules: ComplexityRules = Field(ComplexityRules(), description="what auto sends to cloud")
    monthly_cloud_budget_usd: float | None = Field(None, ge=0, description=(
        "once the month's cloud cost reaches this, auto stays local and cloud gets 429"))
    timeouts: RouterTimeouts = Field(RouterTimeouts(), description="upstream timeouts")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description=(
        "larger request bodies get 413"))
    failures_to_mark_down: int = Field(2, ge=1, description=(
        "consecutive failures after which a local backend is taken out until a probe passes"))
    probe_interval_s: float = Field(5, gt=0, le=3600, description=(
        "how often each backend's /health is probed"))
    max_connections: int = Field(512, ge=1, description="upstream connection pool size")
    ledger_flush_s: float = Field(0.5, gt=0, le=1, description=(
        "the ledger writes its rows in batches this often (a crash loses at most this)"))
    energy: Energy = Field(Energy(), description="local cost: power times time times price")
    gpu_health: GpuHealth = Field(GpuHealth(), description=(
        "health-aware routing from the host's latest GPU health result"))
    economics: EconomicsDefaults = Field(EconomicsDefaults(), description=(
        "defaults for `hlctl economics`"))

    @field_validator("keys")
    @classmethod
    def _unique_key_names(cls, keys: list[RouterKey]) -> list[RouterKey]:
        require_unique_names((k.name for k in keys), "key name")
        return keys

    @field_validator("local")
    @classmethod
    def _unique_backend_names(cls, local: list[LocalBackend]) -> list[LocalBackend]:
        require_unique_names((b.name for b in local), "backend name")
        return local

    @model_validator(mode="after")
    def _aliases_resolve(self) -> RouterSettings:
        for name in self.aliases:
            if name in BUILTIN_ALIASES:
                raise ValueError(f"alias {name!r} is built in and cannot be redefined")
        if self.default_alias not in (*BUILTIN_ALIASES, *self.aliases):
            raise ValueError(f"default_alias {self.default_alias!r} is not an alias")
        return self

    def alias_table(self) -> dict[str, AliasSpec]:
        """Every alias a client may name, built-ins first."""
        table = {name: AliasSpec(route=name) for name in BUILTIN_ALIASES}  # type: ignore[arg-type]
        table.update(self.aliases)
        return table


def settings_from_lab(config: LabConfig) -> RouterSettings:
    """The router section of a loaded lab config, validated, with ``router.`` key paths.

    Works before and after LabConfig.router is typed as RouterSettings.
    """
    from hlctl.config import describe_errors
    from hlctl.errors import ConfigError

    section = config.router
    if isinstance(section, RouterSettings):
        return section
    data = {**section.model_dump(), **(section.model_extra or {})}
    try:
        return RouterSettings.model_validate(data)
    except ValidationError as exc:
        problems = [f"router.{p}" for p in describe_errors(exc)]
        count = f"{len(problems)} problems" if len(problems) > 1 else "1 problem"
        raise ConfigError(f"{count}: {problems[0]}" + (" ..." if len(problems) > 1 else ""),
                          problems=problems, hint="see hlctl.example.yaml") from None
