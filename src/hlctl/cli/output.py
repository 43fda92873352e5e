"""Printing shared by every command: stable JSON for scripts, rich tables for people."""

from __future__ import annotations

import json
import sys
from typing import Any


def print_json(data: Any) -> None:
    """Stable, machine-readable output: sorted keys would reorder documented contracts, so no."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def console(stderr: bool = False) -> Any:
    """A rich console, imported only when a table is printed."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)
