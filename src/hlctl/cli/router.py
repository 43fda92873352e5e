"""`hlctl router`: serve the OpenAI-compatible, local-first router."""

from __future__ import annotations

import asyncio
import contextlib

import click

from hlctl.context import AppContext


@click.group()
def router() -> None:
    """The OpenAI-compatible router: local first, cloud fallback, private stays home."""


@router.command()
@click.option("--host", help="Listen address (default: router.host from the lab config).")
@click.option("--port", type=click.IntRange(1, 65535),
              help="Listen port (default: router.port from the lab config).")
@click.pass_obj
def serve(app: AppContext, host: str | None, port: int | None) -> None:
    """Serve /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /health, /metrics.

    \b
    Examples:
      hlctl router serve                       host and port from hlctl.yaml
      hlctl router serve --host 0.0.0.0 --port 8088
      curl -H "Authorization: Bearer $KEY" localhost:8088/v1/models
    """
    from hlctl.router.app import Router, serve_forever
    from hlctl.router.config import settings_from_lab

    settings = settings_from_lab(app.config)
    service = Router(settings, environ=app.environ, state_dir=app.state_dir, clock=app.clock)
    host = host or settings.host
    port = port or settings.port
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    click.echo(f"hlctl router on http://{host}:{port}/v1 ({len(settings.local)} local, "
               f"{'1 cloud' if settings.cloud else 'no cloud'}; ledger in {app.state_dir})",
               err=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(service, host, port))
