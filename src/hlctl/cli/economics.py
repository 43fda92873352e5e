"""`hlctl economics`: the break-even between a GPU of your own and a cloud API."""

from __future__ import annotations

from typing import Any

import click

from hlctl.cli.output import console, print_json
from hlctl.context import AppContext
from hlctl.errors import UsageError

_NUMBER = click.FloatRange(min=0)


@click.command()
@click.option("--gpu-price", type=_NUMBER, help="GPU price, USD (default: config, 1500).")
@click.option("--lifetime-years", type=click.FloatRange(min=0, min_open=True),
              help="Years to write the GPU off over (default: config, 3).")
@click.option("--watts", type=_NUMBER, help="Power while working (default: router.energy.watts).")
@click.option("--hours-per-day", type=click.FloatRange(0, 24), help="Hours a day it works.")
@click.option("--kwh-price", type=_NUMBER, help="Electricity, USD per kWh.")
@click.option("--input-price", type=_NUMBER, help="Cloud USD per 1M prompt tokens.")
@click.option("--output-price", type=_NUMBER, help="Cloud USD per 1M completion tokens.")
@click.option("--tokens", type=click.IntRange(min=0), help="Tokens a month to compare at.")
@click.option("--input-share", type=click.FloatRange(0, 1),
              help="Share of tokens that are prompt tokens (default: 0.75).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_obj
def economics(app: AppContext, as_json: bool, **flags: Any) -> None:
    """Monthly cost of the GPU against the cloud, and the break-even tokens per month.

    Defaults come from router.economics, router.energy and router.cloud in the lab config.

    \b
    Examples:
      hlctl economics
      hlctl economics --gpu-price 1500 --lifetime-years 3 --watts 350 --hours-per-day 8 \\
          --kwh-price 0.12 --input-price 3 --output-price 15 --tokens 5000000
    """
    from hlctl.router.config import settings_from_lab
    from hlctl.router.economics import EconomicsInput, compute

    settings = settings_from_lab(app.config)
    e, cloud = settings.economics, settings.cloud

    def pick(flag: str, default: float | None) -> float:
        value = flags[flag] if flags[flag] is not None else default
        if value is None:
            raise UsageError(f"no cloud price: give --{flag.replace('_', '-')} "
                             "or configure router.cloud in the lab config")
        return value

    given = EconomicsInput(
        gpu_price_usd=pick("gpu_price", e.gpu_price_usd),
        gpu_lifetime_years=pick("lifetime_years", e.gpu_lifetime_years),
        watts=pick("watts", settings.energy.watts),
        hours_per_day=pick("hours_per_day", e.hours_per_day),
        usd_per_kwh=pick("kwh_price", settings.energy.usd_per_kwh),
        input_usd_per_1m=pick("input_price", cloud.input_usd_per_1m if cloud else None),
        output_usd_per_1m=pick("output_price", cloud.output_usd_per_1m if cloud else None),
        monthly_tokens=int(pick("tokens", e.monthly_tokens)),
        input_share=pick("input_share", e.input_share))
    result = compute(given)
    if as_json:
        print_json(result.to_json(given))
        return
    from rich.table import Table

    table = Table(title="Monthly cost, local GPU against cloud")
    table.add_column("item")
    table.add_column("USD / month", justify="right")
    table.add_row(f"GPU ${given.gpu_price_usd:,.0f} over {given.gpu_lifetime_years:g} years",
                  f"{result.hardware_usd_month:,.2f}")
    table.add_row(f"energy {given.watts:g} W x {given.hours_per_day:g} h/day at "
                  f"${given.usd_per_kwh:g}/kWh", f"{result.energy_usd_month:,.2f}")
    table.add_row("local total", f"{result.local_usd_month:,.2f}")
    table.add_row(f"cloud for {given.monthly_tokens:,} tokens at "
                  f"${result.cloud_usd_per_1m:,.2f}/1M blended", f"{result.cloud_usd_month:,.2f}")
    out = console()
    out.print(table)
    if result.break_even_tokens_month is None:
        out.print("The cloud price is zero: the GPU never breaks even.")
    else:
        out.print(f"Break-even: {result.break_even_tokens_month:,.0f} tokens a month; "
                  f"at {given.monthly_tokens:,} the {result.cheaper} is cheaper.")
