"""`hlctl usage`: tokens and cost from the router's ledger, local against cloud."""

from __future__ import annotations

import click

from hlctl.cli.output import console, print_json
from hlctl.context import AppContext


@click.command()
@click.option("--month", metavar="YYYY-MM", help="A calendar month (default: this month).")
@click.option("--since", metavar="N[h|d|w]", help="A rolling window instead, e.g. 7d.")
@click.option("--by", "by", type=click.Choice(["route", "model", "key"]), default="route",
              show_default=True, help="Split the table by route, upstream model or key name.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def usage(app: AppContext, month: str | None, since: str | None, by: str,
          as_json: bool) -> None:
    """Tokens and cost local against cloud, and what an all-cloud month would have cost.

    \b
    Examples:
      hlctl usage                      this month
      hlctl usage --month 2024-02      a past month
      hlctl usage --since 7d --by key  the last week, per key
    """
    from hlctl.router.config import settings_from_lab
    from hlctl.router.ledger import LEDGER_FILE
    from hlctl.router.pricing import CloudPrices
    from hlctl.router.usage import parse_period, read_aggregates, story, summarize

    period = parse_period(month, since, app.clock())
    settings = settings_from_lab(app.config)
    prices = (CloudPrices(settings.cloud.input_usd_per_1m, settings.cloud.output_usd_per_1m)
              if settings.cloud is not None else None)
    ledger = app.state_dir / LEDGER_FILE
    report = summarize(read_aggregates(ledger, period, by), period, by, prices)  # type: ignore[arg-type]
    if as_json:
        print_json(report.to_json(ledger))
        return
    from rich.table import Table

    table = Table(title=f"Router usage, {period.label}")
    for column in (by, "route", "requests", "prompt", "completion", "cost"):
        table.add_column(column, justify="left" if column in (by, "route") else "right")
    for g in report.groups:
        table.add_row(g.group or "-", g.route, f"{g.requests:,}", f"{g.prompt_tokens:,}",
                      f"{g.completion_tokens:,}", f"${g.cost_usd:,.4f}")
    out = console()
    if report.groups:
        out.print(table)
    else:
        out.print(f"No requests in {period.label} (ledger: {ledger}).")
    out.print(story(report))
    if prices is None:
        out.print("No cloud price table (router.cloud) is configured: no all-cloud figure.")
