"""The hlctl root command: it only composes the groups, which load when they are used."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import click

from hlctl import __version__
from hlctl.context import AppContext

# name -> (module:attribute, one-line help). The help lives here so that `hlctl --help`
# lists every command without importing any of them.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("hlctl.cli.init:init", "Write a starter hlctl.yaml and inventory/hosts.yml."),
    "config": ("hlctl.cli.config:config", "Check or show the lab config."),
    "gpu": ("hlctl.cli.gpu:gpu", "Read the GPUs of this machine through NVML."),
    "health": ("hlctl.cli.health:health", "Check GPU health and thermals (Nagios exit codes)."),
    "status": ("hlctl.cli.status:status", "One screen: GPUs, Docker, models, health."),
    "models": ("hlctl.cli.models:models", "GGUF models: fit, pull, list, verify."),
    "provision": ("hlctl.cli.provision:provision",
                  "Create the GPU VMs on Proxmox and configure the hosts."),
    "vm": ("hlctl.cli.vm:vm", "The lab's VMs on Proxmox: list, destroy."),
    "router": ("hlctl.cli.router:router", "Serve the OpenAI-compatible, local-first router."),
    "usage": ("hlctl.cli.usage:usage", "Router tokens and cost, local against cloud."),
    "economics": ("hlctl.cli.economics:economics",
                  "Break-even: your own GPU against a cloud API."),
    "up": ("hlctl.cli.stack:up", "Start llama-server and the router, here or on inventory hosts."),
    "down": ("hlctl.cli.stack:down", "Stop the llama-server + router stack, here or on hosts."),
    "restart": ("hlctl.cli.stack:restart", "Recreate the stack's containers, here or on hosts."),
    "logs": ("hlctl.cli.stack:logs", "Print the logs of llama-server or the router."),
    "agent": ("hlctl.cli.agent:agent",
              "This host's status for fleet commands, and the resident agent."),
}


class HlctlGroup(click.Group):
    """A group that maps hlctl's typed errors to one line and an exit code, in one place."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            from hlctl.errors import ExitStatus, HlctlError

            app = ctx.find_object(AppContext)
            if app is not None and app.debug:
                raise
            if isinstance(exc, HlctlError):
                click.echo(f"error: {exc}", err=True)
                if app is not None and app.verbose:
                    for problem in getattr(exc, "problems", [])[1:]:
                        click.echo(f"  {problem}", err=True)
                ctx.exit(exc.exit_status)
            if isinstance(exc, KeyboardInterrupt):
                ctx.exit(130)
            click.echo(f"error: internal error: {type(exc).__name__}: {exc} "
                       "(set HLCTL_DEBUG=1 for the traceback)", err=True)
            ctx.exit(ExitStatus.FAILURE)


class LazyGroup(HlctlGroup):
    """Import a subcommand's module only when that subcommand runs or shows its help."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module_name, attr = self.lazy[cmd_name][0].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.lazy[name][1]) for name in self.list_commands(ctx)
                if name in self.lazy]
        rows += [(name, cmd.get_short_help_str()) for name, cmd in self.commands.items()
                 if name not in self.lazy]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(sorted(rows))


@click.group(cls=LazyGroup, lazy=LAZY_COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"],
                               "auto_envvar_prefix": None})
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Lab config file (default: $HLCTL_CONFIG, ./hlctl.yaml, "
                   "$XDG_CONFIG_HOME/hlctl/hlctl.yaml, /etc/hlctl/hlctl.yaml).")
@click.option("-v", "--verbose", count=True, help="More detail; -vv for more still.")
@click.version_option(__version__, prog_name="hlctl")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, verbose: int) -> None:
    """Take a Proxmox host with a GPU to a running, monitored, local-first LLM endpoint.

    \b
    Examples:
      hlctl init                 write a starter hlctl.yaml and inventory
      hlctl health               check this machine's GPUs (Nagios exit codes)
      hlctl status               one screen for this machine
    """
    ctx.obj = AppContext(config_path=config_path, verbose=verbose)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="hlctl")


if __name__ == "__main__":
    sys.exit(main())
