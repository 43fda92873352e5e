"""The routing decision: a pure function of the request, upstream health, budget and config.

No I/O here: the app gathers the facts (which alias, which key scope, is any local backend
up, how much of the month's cloud budget is spent) and acts on the decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from hlctl.router.config import AliasSpec, RouterSettings

Target = Literal["local", "cloud"]
Endpoint = Literal["chat", "completions", "embeddings"]

# A rough but cheap estimate: English text averages about 4 characters per token, and the
# decision only needs to know whether a prompt is clearly over the local context.
CHARS_PER_TOKEN = 4
LOCAL_UNHEALTHY = "local_unhealthy"  # the X-HL-Route-Reason the issue names


@dataclass(frozen=True)
class RouteRequest:
    """The facts about one request that routing looks at."""

    model: str | None = None
    key_scope: str = "full"
    private_header: bool = False
    route_override: str | None = None  # the X-HL-Route header, as sent
    prompt_text: str = ""
    reasoning: bool = False
    endpoint: Endpoint = "chat"

    @property
    def prompt_tokens(self) -> int:
        return estimate_tokens(self.prompt_text)


@dataclass(frozen=True)
class Health:
    local_up: bool
    cloud_configured: bool
    # The host's latest GPU health result is a fresh CRITICAL (thermal slowdown, XID, GPU
    # lost). Unknown or stale counts as False: only a known-bad GPU diverts traffic.
    local_critical: bool = False


@dataclass(frozen=True)
class Budget:
    limit_usd: float | None
    spent_usd: float

    @property
    def exhausted(self) -> bool:
        return self.limit_usd is not None and self.spent_usd >= self.limit_usd


@dataclass(frozen=True)
class PolicyConfig:
    aliases: Mapping[str, AliasSpec]
    default_alias: str = "auto"
    local_context_tokens: int = 8192
    keywords: tuple[str, ...] = ()
    max_prompt_chars: int | None = None
    reasoning_hint: bool = True

    @classmethod
    def from_settings(cls, settings: RouterSettings) -> PolicyConfig:
        contexts = [b.context_tokens for b in settings.local]
        return cls(
            aliases=settings.alias_table(),
            default_alias=settings.default_alias,
            local_context_tokens=min(contexts) if contexts else 8192,
            keywords=tuple(k.lower() for k in settings.rules.keywords),
            max_prompt_chars=settings.rules.max_prompt_chars,
            reasoning_hint=settings.rules.reasoning_hint,
        )


@dataclass(frozen=True)
class RouteError:
    """An answer the router gives itself, in OpenAI's error shape."""

    status: int
    code: str
    message: str
    type: str = "invalid_request_error"


@dataclass(frozen=True)
class RouteDecision:
    alias: str
    target: Target | None
    reason: str
    private: bool = False
    fallback: bool = False  # may go to the cloud if local fails before the first byte
    upstream_model: str | None = None
    error: RouteError | None = field(default=None)


def estimate_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def _local_unavailable(alias: str, reason: str, private: bool) -> RouteDecision:
    why = "the request is private" if private else "no cloud fallback is possible"
    return RouteDecision(alias, None, reason, private=private, error=RouteError(
        503, "local_unavailable", f"local model is unavailable and {why}", "service_unavailable"))


def _budget_spent(alias: str, private: bool) -> RouteDecision:
    return RouteDecision(alias, None, "budget-spent", private=private, error=RouteError(
        429, "budget_exceeded", "the monthly cloud budget is spent; use model 'local' or "
        "'auto'", "insufficient_quota"))


def _auto_wants_cloud(request: RouteRequest, config: PolicyConfig) -> str | None:
    """The first complexity rule the prompt meets, or None for a plain local prompt."""
    if request.prompt_tokens > config.local_context_tokens:
        return "context"
    if config.reasoning_hint and request.reasoning:
        return "reasoning"
    if config.max_prompt_chars is not None and len(request.prompt_text) > config.max_prompt_chars:
        return "length"
    if config.keywords:
        lowered = request.prompt_text.lower()
        for word in config.keywords:
            if word in lowered:
                return f"keyword:{word}"
    return None


def decide_route(request: RouteRequest, health: Health, budget: Budget,
                 config: PolicyConfig) -> RouteDecision:
    """Pick local or cloud for one request, or the error it gets instead."""
    alias = request.model or config.default_alias
    spec = config.aliases.get(alias)
    if spec is None:
        return RouteDecision(alias, None, "unknown-alias", error=RouteError(
            404, "model_not_found", f"model {alias!r} is not served here; "
            f"known: {', '.join(sorted(config.aliases))}"))
    private = request.key_scope == "local-only" or request.private_header or spec.private
    route: str = spec.route
    forced = False
    if request.route_override:
        if request.route_override not in ("local", "cloud"):
            return RouteDecision(alias, None, "bad-override", private=private, error=RouteError(
                400, "invalid_route", "X-HL-Route must be 'local' or 'cloud'"))
        route, forced = request.route_override, True
    if request.endpoint == "embeddings":
        # Embeddings come only from the local model: cloud vectors would not be comparable.
        if route == "cloud" and forced:
            return RouteDecision(alias, None, "embeddings-local-only", private=private,
                                 error=RouteError(400, "invalid_route",
                                                  "embeddings are served by the local model only"))
        route = "local"
        if not health.local_up:
            return _local_unavailable(alias, "local-down", private)
        return RouteDecision(alias, "local", "embeddings", private, False, spec.model)

    if route == "cloud":
        if private:
            return RouteDecision(alias, None, "private", private=True, error=RouteError(
                403, "private_request", "a private request is never sent to the cloud",
                "permission_error"))
        if not health.cloud_configured:
            return RouteDecision(alias, None, "no-cloud", error=RouteError(
                503, "cloud_unavailable", "no cloud provider is configured",
                "service_unavailable"))
        if budget.exhausted:
            return _budget_spent(alias, private)
        return RouteDecision(alias, "cloud", "override" if forced else "alias", False, False,
                             spec.model)

    reason = "override" if forced else ("alias" if route == "local" else "default-local")
    if route == "auto" and private:
        reason = "private"
    elif route == "auto":
        why = _auto_wants_cloud(request, config)
        if why is None and health.local_critical:
            # A CRITICAL GPU still answers, but slowly or wrongly: send what may leave the
            # house elsewhere. Private and explicit local requests still get it (above/below).
            why = LOCAL_UNHEALTHY
        if why is not None and health.cloud_configured and not budget.exhausted:
            return RouteDecision(alias, "cloud", why, False, False, spec.model)
        if why is not None and health.cloud_configured:
            reason = "budget-spent"
        elif why is not None:
            reason = "no-cloud"
    can_fall_back = (not private and not forced and health.cloud_configured
                     and not budget.exhausted)
    if not health.local_up:
        if can_fall_back:
            return RouteDecision(alias, "cloud", "local-down", False, False, spec.model)
        return _local_unavailable(alias, "local-down", private)
    return RouteDecision(alias, "local", reason, private, can_fall_back, spec.model)


def decide_fallback(decision: RouteDecision, failure: str) -> RouteDecision:
    """Local failed before the first byte reached the client: go to the cloud, or say why not.

    ``failure`` names what happened (``connect``, ``status-503``, ``timeout`` ...) and becomes
    part of the reason recorded in the ledger.
    """
    if decision.target == "local" and decision.fallback:
        return replace(decision, target="cloud", reason=f"fallback:{failure}", fallback=False)
    if decision.private:
        return _local_unavailable(decision.alias, f"local-failed:{failure}", private=True)
    return RouteDecision(decision.alias, None, f"{decision.target}-failed:{failure}",
                         decision.private, error=RouteError(
                             502, "upstream_error",
                             f"the {decision.target} upstream failed ({failure})",
                             "upstream_error"))
