"""`hlctl models search|pull|list|verify|rm`: parse, call hlctl.models, print.

Heavy imports (huggingface_hub, httpx, rich) happen inside the commands, so that help and
other commands stay light.

JSON contracts (``--json``; keys are only ever added):

- search: ``repo, revision, commit, gated, models[]`` with ``name, quant, size, shards,
  complete, files[] {path, size, sha256}``.
- pull: ``models_dir, lock, seconds, models[]`` with ``repo, name, quant, revision, commit,
  size, fit, files[]``; ``fit`` is ``{checked: false, reason}`` or ``{checked: true, fits,
  n_layers, gpu_layers, total_vram_bytes, vram_bytes, full_vram_bytes, ctx, ram_needed_bytes,
  ram_ok, header_bytes_read}`` (absent with --locked); a file is ``path, local_path, size,
  sha256, downloaded, resumed_from, skipped, seconds``.
- list / verify: ``models_dir, lock, files[]`` with ``repo, model, path, state, size,
  expected_size, sha256, expected_sha256``; state is ok, missing, modified, partial or unknown.
- rm: ``repo, name, removed[], lock``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hlctl.cli.output import console, print_json
from hlctl.context import AppContext
from hlctl.errors import HlctlError, UsageError

if TYPE_CHECKING:
    from hlctl.models.hub import RemoteModel
    from hlctl.models.lock import LockedModel, ModelsLock

GIB = 1 << 30
DEFAULT_FIT_CTX = 4096  # llama-server's own default context size

_dir_option = click.option("--dir", "models_dir", type=click.Path(path_type=Path, file_okay=False),
                           help="Models directory (default: models_dir from the lab config); "
                                "files go to DIR/OWNER/NAME/FILE.")
_lock_option = click.option("--lock", "lock_path", type=click.Path(path_type=Path, dir_okay=False),
                            help="Lock file (default: models.lock next to the lab config file, "
                                 "or in the models directory when there is no config file).")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


# -- shared plumbing ------------------------------------------------------------------------------

def _app(ctx: click.Context) -> AppContext:
    app = ctx.find_object(AppContext)
    return app if app is not None else AppContext()


def _models_dir(app: AppContext, explicit: Path | None) -> Path:
    return (explicit or app.config.models_dir).expanduser()


def lock_location(app: AppContext, models_dir: Path, explicit: Path | None) -> Path:
    """models.lock next to the lab config file; in the models dir when defaults are in use."""
    from hlctl.models.lock import lock_path_for

    return explicit if explicit is not None else lock_path_for(app.loaded.source, models_dir)


def _hub_access(app: AppContext) -> tuple[str, str | None]:
    from hlctl.models.hub import default_endpoint, default_token

    return default_endpoint(app.environ), default_token(app.environ)


def _size(count: int | None) -> str:
    if count is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)


class _ProgressDisplay:
    """A rich progress bar (speed, ETA) on a TTY; nothing at all otherwise or in --json."""

    def __init__(self, enabled: bool) -> None:
        self._progress: Any = None
        if enabled:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), TimeRemainingColumn(), console=console(stderr=True),
                transient=False)

    @contextmanager
    def running(self) -> Iterator[_ProgressDisplay]:
        if self._progress is None:
            yield self
            return
        with self._progress:
            yield self

    def task(self, name: str, total: int) -> Callable[[int, int], None] | None:
        if self._progress is None:
            return None
        task_id = self._progress.add_task(name, total=total)
        progress = self._progress
        return lambda done, total_: progress.update(task_id, completed=done, total=total_)

    @property
    def enabled(self) -> bool:
        return self._progress is not None

    def note(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message)


def _tty(as_json: bool) -> bool:
    return not as_json and sys.stderr.isatty()


# -- search ---------------------------------------------------------------------------------------

@click.command()
@click.argument("repo")
@click.option("--revision", default="main", show_default=True, help="Branch, tag or commit.")
@_json_option
@click.pass_context
def search(ctx: click.Context, repo: str, revision: str, as_json: bool) -> None:
    """List the GGUF models of a hub repo: quant, size and shard count.

    \b
    Examples:
      hlctl models search bartowski/Mistral-7B-Instruct-v0.3-GGUF
      hlctl models search unsloth/gemma-3-270m-it-GGUF --json
    """
    from hlctl.models.hub import fetch_listing

    endpoint, token = _hub_access(_app(ctx))
    listing = fetch_listing(repo, revision, endpoint=endpoint, token=token)
    if as_json:
        print_json({"repo": listing.repo, "revision": listing.revision,
                    "commit": listing.commit, "gated": listing.gated,
                    "models": [_model_json(m) for m in listing.models]})
        return
    from rich.table import Table

    table = Table(title=f"{listing.repo} @ {listing.commit[:12]}")
    for column in ("Model", "Quant", "Shards", "Size"):
        table.add_column(column, justify="right" if column in ("Shards", "Size") else "left")
    for model in listing.models:
        table.add_row(model.name, model.quant or "-", str(model.shard_count), _size(model.size))
    console().print(table)
    if not listing.models:
        click.echo(f"{repo} has no GGUF files", err=True)


def _model_json(model: RemoteModel) -> dict[str, Any]:
    return {"name": model.name, "quant": model.quant, "size": model.size,
            "shards": model.shard_count, "complete": model.complete,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in model.files]}


# -- pull -----------------------------------------------------------------------------------------

@click.command()
@click.argument("repo", required=False)
@click.argument("file", required=False)
@click.option("--quant", help="Pick the model with this quant, e.g. Q4_K_M.")
@click.option("--revision", default="main", show_default=True, help="Branch, tag or commit.")
@_dir_option
@_lock_option
@click.option("--locked", is_flag=True,
              help="Pull exactly what models.lock lists (all of it, or REPO's entries), "
                   "at the pinned commits; no fit check.")
@click.option("--no-fit-check", is_flag=True, help="Download even if the model will not fit.")
@click.option("--vram", type=click.FloatRange(min=0, min_open=True), metavar="GIB",
              help="GPU memory for the fit check (default: GPU 0 of this host, read via NVML; "
                   "without either the check is skipped).")
@click.option("--ctx", "fit_ctx", type=click.IntRange(min=1), default=DEFAULT_FIT_CTX,
              show_default=True, help="Context size the fit check plans for.")
@click.option("--host", "hosts", multiple=True, metavar="HOST",
              help="Run the pull on this inventory host (or group) over SSH; repeatable.")
@click.option("--all", "all_hosts", is_flag=True,
              help="Run the pull on every host of the inventory's gpu_hosts group.")
@click.option("-i", "--inventory", "inventory_path",
              type=click.Path(path_type=Path, dir_okay=False),
              help="Inventory (default: $HLCTL_INVENTORY or ./inventory/hosts.yml).")
@click.option("--timeout", type=click.FloatRange(min=1), metavar="SECONDS",
              help="With hosts: give up on a host after this long (default: no limit; a "
                   "dead connection is still noticed within seconds).")
@click.option("--lock-stdin", is_flag=True, hidden=True,
              help="(--locked on a host) Replace this host's models.lock with the lock "
                   "read from stdin first; what --locked --host/--all sends.")
@_json_option
@click.pass_context
def pull(ctx: click.Context, repo: str | None, file: str | None, quant: str | None,
         revision: str, models_dir: Path | None, lock_path: Path | None, locked: bool,
         no_fit_check: bool, vram: float | None, fit_ctx: int, hosts: tuple[str, ...],
         all_hosts: bool, inventory_path: Path | None, timeout: float | None,
         lock_stdin: bool, as_json: bool) -> None:
    """Download a GGUF model, verified by sha256 and resumable, and pin it in models.lock.

    With --host H (repeatable) or --all, each host runs the same pull over SSH and downloads
    straight from the hub onto its own disk, pinning into its own models.lock. With
    --locked, the controller's models.lock is sent to each host first (over the SSH
    session's stdin) and replaces the host's, so every host holds exactly that set.
    One result row per host; exit 1 if any host failed.

    \b
    Examples:
      hlctl models pull bartowski/Mistral-7B-Instruct-v0.3-GGUF --quant Q4_K_M
      hlctl models pull unsloth/gemma-3-270m-it-GGUF gemma-3-270m-it-Q4_K_M.gguf
      hlctl models pull --locked          # the exact set in models.lock, on another host
      hlctl models pull --locked --all    # every GPU host holds the models.lock set
    """
    app = _app(ctx)
    from hlctl.fleet.report import fleet_selection

    selected = fleet_selection(app.environ, inventory_path, hosts, all_hosts)
    if selected is not None:
        if models_dir is not None or lock_stdin:
            raise UsageError("--dir acts on this machine; each host uses its own models_dir")
        if lock_path is not None and not locked:
            raise UsageError("--lock with hosts names the lock to send: use it with --locked")
        argv = ["hlctl", "models", "pull", *([repo] if repo else []), *([file] if file else []),
                *(["--quant", quant] if quant else []), "--revision", revision,
                *(["--locked", "--lock-stdin"] if locked else []),
                *(["--no-fit-check"] if no_fit_check else []),
                *(["--vram", f"{vram:g}"] if vram else []), "--ctx", str(fit_ctx), "--json"]
        stdin = _lock_to_send(app, lock_path) if locked else None
        _pull_on_hosts(selected, argv, stdin, timeout, as_json, app.ssh_reuse())
        return
    root = _models_dir(app, models_dir)
    lock_file = lock_location(app, root, lock_path)
    endpoint, token = _hub_access(app)
    display = _ProgressDisplay(_tty(as_json))
    started = time.monotonic()
    from hlctl.models.pull import FitRequest, PullTarget, pull_locked, pull_model

    target = PullTarget(models_dir=root, lock_file=lock_file, endpoint=endpoint, token=token)
    reporter = _reporter(display)
    if lock_stdin:
        if not locked:
            raise UsageError("--lock-stdin goes with --locked")
        _replace_lock_from_stdin(lock_file)
    if locked:
        if file or quant:
            raise UsageError("--locked pulls what the lock lists; give at most REPO")
        results = pull_locked(target, repo, reporter)
    else:
        if repo is None:
            raise UsageError("give a hub repo (OWNER/NAME), or --locked",
                             hint="e.g. hlctl models pull bartowski/Mistral-7B-Instruct-v0.3-GGUF "
                                  "--quant Q4_K_M")
        if file and quant:
            raise UsageError("give FILE or --quant, not both")
        fit = None if no_fit_check else FitRequest(vram_bytes=int(vram * GIB) if vram else None,
                                                   ctx=fit_ctx)
        results = [pull_model(target, repo, file=file, quant=quant, revision=revision, fit=fit,
                              reporter=reporter, now=app.clock())]
    seconds = time.monotonic() - started
    if as_json:
        print_json({"models_dir": str(root), "lock": str(lock_file), "seconds": round(seconds, 3),
                    "models": results})
        return
    for result in results:
        fit = result.get("fit") or {}
        if fit.get("checked") is False:
            click.echo(f"note: fit check skipped: {fit['reason']}", err=True)
        elif fit.get("fits") == "partial":
            click.echo(f"note: fits only partly: run with -ngl {fit['gpu_layers']} of "
                       f"{fit['n_layers']} layers at context {fit['ctx']}", err=True)
        fetched = sum(f["downloaded"] for f in result["files"])
        state = "already present" if all(f["skipped"] for f in result["files"]) else \
            f"downloaded {_size(fetched)}"
        click.echo(f"{result['repo']}/{result['name']}: {state}, sha256 verified "
                   f"({len(result['files'])} file{'s' if len(result['files']) > 1 else ''}, "
                   f"{_size(result['size'])}) -> {Path(result['files'][0]['local_path']).parent}")
    click.echo(f"pinned in {lock_file}" if not locked else f"matches {lock_file}")


MAX_LOCK_BYTES = 4 << 20  # a lock lists files by name and hash: megabytes is not a lock


def _lock_to_send(app: AppContext, lock_path: Path | None) -> bytes:
    """The controller's models.lock, checked before any host sees it."""
    from hlctl.models.lock import read_lock

    lock_file = lock_location(app, _models_dir(app, None), lock_path)
    lock = read_lock(lock_file)
    if not lock.models:
        raise UsageError(f"{lock_file} lists no models: nothing for the hosts to hold",
                         hint="pull a model here first, or pass --lock PATH")
    return lock_file.read_bytes()


def _replace_lock_from_stdin(lock_file: Path) -> None:
    """(On a host) the controller's lock from stdin replaces this host's, atomically."""
    import yaml

    from hlctl.errors import ConfigError
    from hlctl.models.lock import from_data, write_lock

    raw = click.get_binary_stream("stdin").read(MAX_LOCK_BYTES + 1)
    if len(raw) > MAX_LOCK_BYTES:
        raise ConfigError(f"the lock on stdin is larger than {MAX_LOCK_BYTES} bytes")
    try:
        data = yaml.safe_load(raw.decode())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the lock on stdin is not valid YAML: {exc}") from None
    write_lock(lock_file, from_data(data, Path("<stdin>")))


def _pull_on_hosts(hosts: list[Any], argv: list[str], stdin: bytes | None,
                   timeout: float | None, as_json: bool, reuse: Any) -> None:
    import math
    from dataclasses import asdict

    from hlctl.fleet.report import pull_exit_code, pull_from_run
    from hlctl.fleet.transport import run_on_hosts

    if not as_json:
        click.echo(f"pulling on {len(hosts)} host(s): {', '.join(h.name for h in hosts)}",
                   err=True)
    runs = run_on_hosts(hosts, argv, timeout_s=timeout if timeout else math.inf, stdin=stdin,
                        reuse=reuse)
    results = [pull_from_run(run) for run in runs]
    if as_json:
        print_json({"schema": "hlctl.fleet-pull/1", "hosts": [asdict(r) for r in results]})
    else:
        from rich.table import Table

        table = Table(pad_edge=False)
        for column in ("host", "result", "models", "files", "downloaded", "time"):
            table.add_column(column)
        for r in results:
            table.add_row(r.host, "[green]ok[/]" if r.ok else f"[red]failed[/]: {r.error}",
                          str(r.models), str(r.files), _size(r.downloaded_bytes),
                          f"{r.seconds:.1f}s")
        console().print(table)
    raise click.exceptions.Exit(pull_exit_code(results))


def _reporter(display: _ProgressDisplay) -> Any:
    from hlctl.models.pull import Reporter

    def waiting(dest: Path) -> None:
        message = f"another pull of {dest.name} is running; waiting for it"
        if display.enabled:
            display.note(message)
        else:
            click.echo(message, err=True)

    return Reporter(task=display.task, waiting=waiting, running=display.running)


# -- list / verify / rm -----------------------------------------------------------------------

def _read(app: AppContext, models_dir: Path | None,
          lock_path: Path | None) -> tuple[Path, Path, ModelsLock]:
    from hlctl.models.lock import read_lock

    root = _models_dir(app, models_dir)
    lock_file = lock_location(app, root, lock_path)
    return root, lock_file, read_lock(lock_file)


def _print_states(states: list[Any], root: Path, lock_file: Path, as_json: bool) -> None:
    if as_json:
        print_json({"models_dir": str(root), "lock": str(lock_file),
                    "files": [s.to_json() for s in states]})
        return
    if not states:
        click.echo(f"no models in {root} and none in {lock_file}")
        return
    from rich.table import Table

    colours = {"ok": "green", "missing": "red", "modified": "red", "unknown": "yellow",
               "partial": "yellow"}
    table = Table(caption=f"{root} against {lock_file}")
    for column in ("Model", "File", "State", "Size"):
        table.add_column(column, justify="right" if column == "Size" else "left")
    for state in states:
        try:
            shown = state.path.relative_to(root)
        except ValueError:
            shown = state.path
        model = f"{state.repo}/{state.model}" if state.repo else "-"
        table.add_row(model, str(shown), f"[{colours[state.state]}]{state.state}[/]",
                      _size(state.size))
    console().print(table)


@click.command("list")
@_dir_option
@_lock_option
@_json_option
@click.pass_context
def list_models(ctx: click.Context, models_dir: Path | None, lock_path: Path | None,
                as_json: bool) -> None:
    """Show the models on disk against models.lock: ok, missing, modified, partial, unknown.

    Cheap: it compares sizes and hlctl's verification mark; `hlctl models verify` re-hashes.

    \b
    Examples:
      hlctl models list
      hlctl models list --json
    """
    from hlctl.models.store import scan

    root, lock_file, lock = _read(_app(ctx), models_dir, lock_path)
    _print_states(scan(root, lock), root, lock_file, as_json)


@click.command()
@click.argument("name", required=False)
@_dir_option
@_lock_option
@_json_option
@click.pass_context
def verify(ctx: click.Context, name: str | None, models_dir: Path | None,
           lock_path: Path | None, as_json: bool) -> None:
    """Re-hash models on disk against the sha256 in models.lock; exit 1 on any mismatch.

    \b
    Examples:
      hlctl models verify
      hlctl models verify Mistral-7B-Instruct-v0.3-Q4_K_M --json
    """
    from hlctl.models.store import OK, scan

    root, lock_file, lock = _read(_app(ctx), models_dir, lock_path)
    only = _find(lock, name, lock_file) if name else list(lock.models)
    display = _ProgressDisplay(_tty(as_json))
    tasks: dict[Path, Any] = {}

    def progress(path: Path, done: int, total: int) -> None:
        if path not in tasks:
            tasks[path] = display.task(f"verify {path.name}", total)
        if tasks[path]:
            tasks[path](done, total)

    with display.running():
        states = scan(root, lock, rehash=True, only=only, progress=progress)
    _print_states(states, root, lock_file, as_json)
    bad = [s for s in states if s.state != OK]
    if bad:
        raise _Quiet(f"{len(bad)} of {len(states)} files are not ok"
                     + ("" if as_json else ": " + ", ".join(f"{s.path.name} ({s.state})"
                                                          for s in bad[:5])))


class _Quiet(HlctlError):
    """A failure whose detail was already printed; exit 1 with a one-line summary."""


@click.command()
@click.argument("name")
@_dir_option
@_lock_option
@_json_option
@click.pass_context
def rm(ctx: click.Context, name: str, models_dir: Path | None, lock_path: Path | None,
       as_json: bool) -> None:
    """Remove a model's files from disk and its entry from models.lock.

    NAME is a model name (as `hlctl models list` shows it), REPO/NAME, or a repo with one model.

    \b
    Examples:
      hlctl models rm Mistral-7B-Instruct-v0.3-Q4_K_M
    """
    from hlctl.models.lock import locked_update
    from hlctl.models.store import remove_model

    root, lock_file, lock = _read(_app(ctx), models_dir, lock_path)
    (model,) = _find(lock, name, lock_file, single=True)
    removed = remove_model(root, model)
    with locked_update(lock_file) as fresh:
        fresh.remove(model.key)
    if as_json:
        print_json({"repo": model.repo, "name": model.name, "removed": [str(p) for p in removed],
                    "lock": str(lock_file)})
        return
    click.echo(f"removed {model.repo}/{model.name}: {len(removed)} file"
               f"{'' if len(removed) == 1 else 's'} deleted, dropped from {lock_file}")


def _find(lock: ModelsLock, name: str, lock_file: Path, single: bool = False) -> list[LockedModel]:
    found = lock.find(name)
    if not found:
        known = ", ".join(f"{m.repo}/{m.name}" for m in lock.models[:6]) or "none"
        raise UsageError(f"{name!r} is not in {lock_file}", hint=f"models: {known}")
    if single and len(found) > 1:
        raise UsageError(f"{name!r} matches {len(found)} models",
                         hint="name one: " + ", ".join(f"{m.repo}/{m.name}" for m in found))
    return found
