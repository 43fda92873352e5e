"""Routing policy as data: each tests/unit/routing_cases/*.yaml is one request and its answer.

A case gives ``config`` (merged over a base router section with one local backend and a
cloud), ``request``, ``health``, ``budget`` and ``expect``; ``fallback`` optionally says
what happens when the chosen local upstream then fails before the first byte.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hlctl.router.config import RouterSettings
from hlctl.router.policy import (
    Budget,
    Health,
    PolicyConfig,
    RouteDecision,
    RouteRequest,
    decide_fallback,
    decide_route,
    estimate_tokens,
)

CASES = sorted((Path(__file__).parent / "routing_cases").glob("*.yaml"))
BASE: dict[str, Any] = {
    "local": [{"name": "gpu01", "url": "http://gpu01:8080", "context_tokens": 8192}],
    "cloud": {"url": "https://cloud.example/v1", "api_key": {"env": "CLOUD_KEY"},
              "model": "big", "input_usd_per_1m": 3, "output_usd_per_1m": 15},
}
CASE_KEYS = {"description", "config", "request", "health", "budget", "expect", "fallback"}


def _request(data: dict[str, Any]) -> RouteRequest:
    data = dict(data)
    if "prompt_chars" in data:
        data["prompt_text"] = "x" * data.pop("prompt_chars")
    if "prompt" in data:
        data["prompt_text"] = data.pop("prompt")
    data.setdefault("model", "auto")
    return RouteRequest(**data)


def _check(decision: RouteDecision, expect: dict[str, Any]) -> None:
    if "status" in expect:
        assert decision.error is not None, f"expected an error, got {decision}"
        assert decision.target is None
        assert decision.error.status == expect["status"]
        assert decision.error.code == expect["code"]
    else:
        assert decision.error is None, f"unexpected error {decision.error}"
    for key in ("target", "reason", "fallback", "private", "alias", "upstream_model"):
        if key in expect:
            assert getattr(decision, key) == expect[key], key


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_routing_case(path: Path) -> None:
    case = yaml.safe_load(path.read_text())
    assert set(case) <= CASE_KEYS, f"unknown keys {set(case) - CASE_KEYS}"
    assert case.get("description"), "every case says what it shows"
    settings = RouterSettings.model_validate({**BASE, **case.get("config", {})})
    config = PolicyConfig.from_settings(settings)
    health = Health(cloud_configured=settings.cloud is not None,
                    **{"local_up": True, **case.get("health", {})})
    budget = Budget(limit_usd=settings.monthly_cloud_budget_usd,
                    **{"spent_usd": 0.0, **case.get("budget", {})})
    decision = decide_route(_request(case.get("request", {})), health, budget, config)
    _check(decision, case["expect"])
    if "fallback" in case:
        _check(decide_fallback(decision, case["fallback"]["failure"]),
               case["fallback"]["expect"])


def test_there_are_cases() -> None:
    assert len(CASES) >= 20


def test_private_never_reaches_cloud_exhaustively() -> None:
    """Across every alias, override, health, budget and failure: private never gets cloud."""
    settings = RouterSettings.model_validate(
        {**BASE, "aliases": {"home": {"route": "cloud", "private": False}},
         "rules": {"keywords": ["prove"]}, "monthly_cloud_budget_usd": 5})
    config = PolicyConfig.from_settings(settings)
    for model in ("auto", "local", "cloud", "home", None):
        for override in (None, "local", "cloud"):
            for local_up, critical in ((True, False), (False, False), (True, True),
                                       (False, True)):
                for spent in (0.0, 9.0):
                    for endpoint in ("chat", "embeddings"):
                        request = RouteRequest(model=model, key_scope="local-only",
                                               route_override=override, prompt_text="prove",
                                               endpoint=endpoint)
                        decision = decide_route(request, Health(local_up, True, critical),
                                                Budget(5, spent), config)
                        assert decision.target != "cloud", request
                        assert decision.private
                        after = decide_fallback(decision, "connect")
                        assert after.target != "cloud", request


def test_local_critical_diverts_only_non_private_auto() -> None:
    """Every request that a CRITICAL GPU sends to the cloud is auto, not private, not forced."""
    settings = RouterSettings.model_validate(
        {**BASE, "aliases": {"home": {"route": "auto", "private": True}}})
    config = PolicyConfig.from_settings(settings)
    diverted = []
    for model in ("auto", "local", "home", None):
        for override in (None, "local"):
            for private in (False, True):
                request = RouteRequest(model=model, private_header=private,
                                       route_override=override)
                calm = decide_route(request, Health(True, True, False), Budget(None, 0), config)
                hot = decide_route(request, Health(True, True, True), Budget(None, 0), config)
                assert calm.target == "local", request
                if hot.target == "cloud":
                    diverted.append(request)
                    assert hot.reason == "local_unhealthy"
                else:
                    assert hot == calm, request
    assert diverted == [RouteRequest(model=m) for m in ("auto", None)]


def test_estimate_tokens_rounds_up() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abc") == 1
    assert estimate_tokens("abcde") == 2
