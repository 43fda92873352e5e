"""`hlctl models`: search, fit, pull, list, verify, rm."""

from __future__ import annotations

import click

from hlctl.cli.main import LazyGroup

# fit lives in its own module (header reading and the estimate); the rest handle files.
MODELS_COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("hlctl.cli.models_fit:fit", "Will a GGUF model fit the GPU? Asked before download."),
    "search": ("hlctl.cli.models_pull:search", "List the GGUF files of a hub repo."),
    "pull": ("hlctl.cli.models_pull:pull", "Download a GGUF model, verified and resumable."),
    "list": ("hlctl.cli.models_pull:list_models", "Show models on disk against models.lock."),
    "verify": ("hlctl.cli.models_pull:verify", "Re-hash models on disk against models.lock."),
    "rm": ("hlctl.cli.models_pull:rm", "Remove a model from disk and models.lock."),
}


@click.group(cls=LazyGroup, lazy=MODELS_COMMANDS)
def models() -> None:
    """GGUF models from Hugging Face: fit before download, verified pulls, a lock file."""
