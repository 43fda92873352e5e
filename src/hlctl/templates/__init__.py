"""Starter files that `hlctl init` writes; the example config is the config's documentation."""

from __future__ import annotations

from importlib.resources import files


def example_config() -> str:
    return files(__package__).joinpath("hlctl.example.yaml").read_text()


def starter_files() -> dict[str, str]:
    """Relative path -> text of each file `hlctl init` writes."""
    return {
        "hlctl.yaml": example_config(),
        "inventory/hosts.yml": files(__package__).joinpath("hosts.example.yml").read_text(),
    }
