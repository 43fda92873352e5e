"""`hlctl config check|show|schema`."""

from __future__ import annotations

import json

import click

from hlctl.cli.output import print_json
from hlctl.context import AppContext
from hlctl.errors import ConfigError


@click.group()
def config() -> None:
    """Check or show the lab config (hlctl.yaml)."""


@config.command()
@click.pass_obj
def check(app: AppContext) -> None:
    """Validate the lab config and list every problem with its key path.

    \b
    Example:
      hlctl config check && echo valid
    """
    try:
        loaded = app.loaded
    except ConfigError as exc:
        for problem in exc.problems or [exc.message]:
            click.echo(problem, err=True)
        raise click.exceptions.Exit(exc.exit_status) from None
    where = loaded.source or "defaults (no config file found)"
    click.echo(f"{where}: ok")


@config.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def show(app: AppContext, as_json: bool) -> None:
    """Print the effective config (file, env and defaults) with secrets redacted.

    \b
    Example:
      hlctl config show --json | jq .health
    """
    from hlctl.config import redacted

    data = redacted(app.config)
    if as_json:
        print_json({"source": str(app.loaded.source) if app.loaded.source else None,
                    "config": data})
        return
    import yaml

    click.echo(f"# from {app.loaded.source or 'defaults'}")
    click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())


@config.command()
def schema() -> None:
    """Print the lab config's JSON Schema (for editors and CI)."""
    from hlctl.config import LabConfig

    click.echo(json.dumps(LabConfig.model_json_schema(), indent=2))
