"""The break-even calculator: a GPU of your own against a cloud API, per month."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

DAYS_PER_MONTH = 365.25 / 12


@dataclass(frozen=True)
class EconomicsInput:
    gpu_price_usd: float
    gpu_lifetime_years: float
    watts: float
    hours_per_day: float
    usd_per_kwh: float
    input_usd_per_1m: float
    output_usd_per_1m: float
    monthly_tokens: int
    input_share: float


@dataclass(frozen=True)
class EconomicsResult:
    hardware_usd_month: float
    energy_usd_month: float
    local_usd_month: float
    cloud_usd_month: float
    cloud_usd_per_1m: float  # blended over input and output at input_share
    break_even_tokens_month: float | None  # None when the cloud is free
    cheaper: str  # "local" or "cloud" at monthly_tokens

    def to_json(self, given: EconomicsInput) -> dict[str, Any]:
        return {"input": asdict(given), **asdict(self)}


def compute(given: EconomicsInput) -> EconomicsResult:
    """Write the GPU off over its lifetime, add its energy, set against the cloud price.

    The local side is a fixed monthly cost (the card works ``hours_per_day`` whatever the
    load), so break-even is the token volume whose cloud bill equals it.
    """
    hardware = given.gpu_price_usd / (given.gpu_lifetime_years * 12)
    kwh = given.watts / 1000 * given.hours_per_day * DAYS_PER_MONTH
    energy = kwh * given.usd_per_kwh
    blended = (given.input_share * given.input_usd_per_1m
               + (1 - given.input_share) * given.output_usd_per_1m)
    cloud = given.monthly_tokens / 1_000_000 * blended
    local = hardware + energy
    break_even = local / blended * 1_000_000 if blended > 0 else None
    return EconomicsResult(hardware, energy, local, cloud, blended, break_even,
                           "local" if local < cloud else "cloud")
