"""Prometheus metrics of the router, in a registry of its own (no global state)."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("hlctl_router_requests", "Requests answered, by route and "
                                "HTTP status", ["route", "status"], registry=r)
        self.tokens = Counter("hlctl_router_tokens", "Tokens by route and kind "
                              "(prompt, completion)", ["route", "kind"], registry=r)
        self.cost = Counter("hlctl_router_cost_usd", "Cost in USD by route", ["route"],
                            registry=r)
        self.latency = Histogram("hlctl_router_request_seconds", "Request latency by route",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("hlctl_router_time_to_first_token_seconds",
                              "Time to the first streamed chunk, by route", ["route"],
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.overhead = Histogram("hlctl_router_overhead_seconds",
                                  "Time spent in the router itself", buckets=_OVERHEAD_BUCKETS,
                                  registry=r)
        self.fallbacks = Counter("hlctl_router_fallbacks", "Requests that went to the cloud "
                                 "instead of local, by why: what failed (connect, status-503, "
                                 "timeout ...) or local_unhealthy (the GPU's health is "
                                 "CRITICAL)", ["failure"], registry=r)
        self.local_gpu_health = Gauge("hlctl_router_local_gpu_health", "The local GPU's "
                                      "latest health result as routing sees it, in Nagios "
                                      "codes: 0 OK, 1 WARNING, 2 CRITICAL (auto diverts to the "
                                      "cloud), 3 UNKNOWN (missing, unreadable or stale)",
                                      registry=r)
        self.upstream_up = Gauge("hlctl_router_upstream_up", "1 when an upstream is routable "
                                 "(cloud: configured)", ["upstream", "kind"], registry=r)
        self.upstream_in_flight = Gauge("hlctl_router_upstream_in_flight",
                                        "Requests in flight per upstream", ["upstream"],
                                        registry=r)
        self.ledger_rows = Gauge("hlctl_router_ledger_rows_written", "Ledger rows written "
                                 "since start", registry=r)
        self.ledger_errors = Gauge("hlctl_router_ledger_write_errors", "Ledger rows that "
                                   "could not be written since start", registry=r)

        self._children: dict[tuple[str, int], tuple[Any, ...]] = {}

    def _for(self, route: str, status: int) -> tuple[Any, ...]:
        # labels() takes a lock and builds a key each call; the label sets are few.
        key = (route, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(route, str(status)), self.latency.labels(route),
                        self.ttft.labels(route), self.tokens.labels(route, "prompt"),
                        self.tokens.labels(route, "completion"), self.cost.labels(route))
            self._children[key] = children
        return children

    def observe(self, route: str, status: int, latency_s: float, ttft_s: float | None,
                prompt_tokens: int, completion_tokens: int, cost_usd: float) -> None:
        requests, latency, ttft, prompt, completion, cost = self._for(route, status)
        requests.inc()
        latency.observe(latency_s)
        if ttft_s is not None:
            ttft.observe(ttft_s)
        if prompt_tokens:
            prompt.inc(prompt_tokens)
        if completion_tokens:
            completion.inc(completion_tokens)
        if cost_usd:
            cost.inc(cost_usd)

    def render(self) -> bytes:
        return generate_latest(self.registry)
