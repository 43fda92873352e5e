"""`hlctl init`: write a starter lab config and inventory."""

from __future__ import annotations

from pathlib import Path

import click

from hlctl.errors import UsageError
from hlctl.templates import starter_files


@click.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path, file_okay=False),
              default=Path("."), show_default=True, help="Where to write the files.")
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
def init(directory: Path, force: bool) -> None:
    """Write a commented hlctl.yaml and inventory/hosts.yml.

    \b
    Example:
      hlctl init && hlctl config check
    """
    files = starter_files()
    targets = {directory / name: text for name, text in files.items()}
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise UsageError(f"{', '.join(existing)} already exists",
                         hint="use --force to overwrite")
    for path, text in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        click.echo(f"wrote {path}")
