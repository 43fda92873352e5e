"""What a request cost: cloud tokens at the price table, local time at the power price."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @classmethod
    def from_json(cls, data: Any) -> Usage | None:
        if not isinstance(data, dict):
            return None
        return cls(_int(data.get("prompt_tokens")), _int(data.get("completion_tokens")))


@dataclass(frozen=True)
class Timings:
    """llama-server's ``timings``: milliseconds spent on the prompt and on generation."""

    prompt_ms: float = 0.0
    predicted_ms: float = 0.0

    @property
    def busy_ms(self) -> float:
        return self.prompt_ms + self.predicted_ms

    @classmethod
    def from_json(cls, data: Any) -> Timings | None:
        if not isinstance(data, dict):
            return None
        return cls(_float(data.get("prompt_ms")), _float(data.get("predicted_ms")))


@dataclass(frozen=True)
class CloudPrices:
    input_usd_per_1m: float
    output_usd_per_1m: float


@dataclass(frozen=True)
class EnergyPrice:
    watts: float
    usd_per_kwh: float


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and value >= 0 else 0.0


def cloud_cost(usage: Usage, prices: CloudPrices) -> float:
    return (usage.prompt_tokens * prices.input_usd_per_1m
            + usage.completion_tokens * prices.output_usd_per_1m) / 1_000_000


def energy_cost(busy_ms: float, energy: EnergyPrice) -> float:
    """Watts times hours times price: W * ms / 3.6e9 is kWh."""
    return energy.watts * busy_ms / 3_600_000_000 * energy.usd_per_kwh


def cost(route: str, usage: Usage, timings: Timings | None, elapsed_ms: float,
         prices: CloudPrices | None, energy: EnergyPrice) -> float:
    """The cost of one request; local time is llama-server's own when it reported it."""
    if route == "cloud":
        return cloud_cost(usage, prices) if prices is not None else 0.0
    if route == "local":
        busy = timings.busy_ms if timings is not None and timings.busy_ms > 0 else elapsed_ms
        return energy_cost(busy, energy)
    return 0.0
