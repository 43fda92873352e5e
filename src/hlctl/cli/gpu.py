"""`hlctl gpu`: read this machine's GPUs through NVML and print them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hlctl.cli.output import console, print_json
from hlctl.context import AppContext

if TYPE_CHECKING:
    from hlctl.gpu.snapshot import GpuSnapshot, HostSnapshot
    from hlctl.gpu.xid import XidSource


def xid_source_for(state_dir: Path | None, kernel_log: bool) -> XidSource:
    """Peek at the kernel log: show what the next health check will see, cursor untouched.

    A module-level function so tests can swap in a fixed source.
    """
    from hlctl.gpu.xid import KernelLogXidSource, NoXidSource

    return KernelLogXidSource(state_dir, consume=False) if kernel_log else NoXidSource()


def _settings(app: AppContext) -> tuple[Path | None, bool]:
    """(state dir, read the kernel log?) from the config; defaults when it cannot load."""
    from hlctl.config import LabConfig
    from hlctl.errors import HlctlError

    try:
        config = app.config
    except HlctlError as exc:
        # A diagnostic command should run even on a broken config; say what was ignored.
        click.echo(f"warning: ignoring the lab config: {exc}", err=True)
        config = LabConfig()
    return config.state_dir, config.health.xid.kernel_log


@click.group()
def gpu() -> None:
    """Read the GPUs of this machine through NVML.

    \b
    Examples:
      hlctl gpu info              a table of every GPU
      hlctl gpu info --json       the snapshot (schema hlctl.gpu-snapshot/1)
      hlctl gpu watch             XID errors as NVML reports them
    """


@gpu.command()
@click.option("--json", "as_json", is_flag=True,
              help="Print the snapshot as JSON (hlctl.gpu-snapshot/1, docs/gpu-snapshot.md).")
@click.pass_obj
def info(app: AppContext | None, as_json: bool) -> None:
    """Print every GPU: temperature, power, memory, clocks, ECC, PCIe, XIDs.

    XIDs are those the kernel logged since the last `hlctl health` run; this command only
    looks, so the next health check still sees them. Exits 1 when NVML cannot start.

    \b
    Examples:
      hlctl gpu info
      hlctl gpu info --json | jq '.gpus[].temperature_c'
    """
    from hlctl.gpu.nvml import read_snapshot

    app = app if app is not None else AppContext()
    state_dir, kernel_log = _settings(app)
    snapshot = read_snapshot(clock=app.clock, xid_source=xid_source_for(state_dir, kernel_log))
    if as_json:
        print_json(snapshot.to_dict())
    else:
        _print(snapshot)
    if snapshot.error is not None:
        raise click.exceptions.Exit(1)


@gpu.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event and line.")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Stop after this many events.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0), default=None,
              help="Stop after this many seconds.")
def watch(as_json: bool, count: int | None, timeout_s: float | None) -> None:
    """Print critical XID errors the moment NVML reports them, until Ctrl-C.

    NVML tells only a process that is listening; `hlctl health` reads the kernel log instead,
    so nothing is missed between checks. Exits 1 when NVML cannot start.

    \b
    Examples:
      hlctl gpu watch
      hlctl gpu watch --json --count 1     wait for the next XID, print it, exit
    """
    import json
    import time

    from hlctl.gpu.nvml import NvmlUnavailable, watch_xid_events

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    seen = 0

    def stop() -> bool:
        return (count is not None and seen >= count) or (
            deadline is not None and time.monotonic() >= deadline)

    try:
        events = watch_xid_events(stop=stop, timeout_ms=500)
        if not as_json:
            click.echo("listening for XID errors (Ctrl-C to stop)", err=True)
        for event in events:
            seen += 1
            if as_json:
                click.echo(json.dumps({"gpu": event.gpu, "xid": event.xid, "at": event.at}))
            else:
                click.echo(f"{event.at}  GPU {event.gpu}  XID {event.xid}")
    except NvmlUnavailable as exc:
        click.echo(f"error: NVML could not start ({exc.kind}): {exc}", err=True)
        raise click.exceptions.Exit(1) from None
    except KeyboardInterrupt:
        return
    if seen == 0 and count is not None and not stop():
        click.echo("error: no GPU here supports XID events", err=True)
        raise click.exceptions.Exit(1)


# ---------------------------------------------------------------------------------------------
# Human output.

_NA = "n/a"


def _num(value: float | None, unit: str = "", digits: int = 0) -> str:
    return _NA if value is None else f"{value:.{digits}f}{unit}"


def _pair(value: float | None, limit: float | None, unit: str, digits: int = 0) -> str:
    if value is None and limit is None:
        return _NA
    return f"{_num(value, digits=digits)} / {_num(limit, digits=digits)}{unit}"


def _gib(value: int | None) -> float | None:
    return None if value is None else value / 2**30


def _rows(gpu: GpuSnapshot) -> list[tuple[str, str]]:
    ident = [("name", gpu.name or _NA), ("uuid", gpu.uuid or _NA),
             ("pci bus id", gpu.pci_bus_id or _NA)]
    if gpu.lost:
        return [*ident, ("state", "[red]LOST: fallen off the bus, reboot required[/]"),
                ("xid since last check", _xids(gpu))]
    ecc = (_NA if gpu.ecc is None else
           f"uncorr {gpu.ecc.volatile_uncorrected} (total {gpu.ecc.aggregate_uncorrected}), "
           f"corr {gpu.ecc.volatile_corrected}")
    rows = gpu.remapped_rows
    remap = (_NA if rows is None else
             f"corr {rows.correctable}, uncorr {rows.uncorrectable}"
             + (", [yellow]pending[/]" if rows.pending else "")
             + (", [red]FAILED[/]" if rows.failure else ""))
    link = gpu.pcie
    pcie = (_NA if link is None else
            f"gen {_num(link.gen)}/{_num(link.gen_max)} "
            f"x{_num(link.width)}/x{_num(link.width_max)}, "
            f"replays {_num(link.replay_counter)}")
    reasons = (_NA if gpu.clocks_event_reasons is None
               else ", ".join(gpu.clocks_event_reasons) or "none")
    return [
        *ident,
        ("state", "present"),
        ("temperature C (slowdown / shutdown)",
         f"{_num(gpu.temperature_c)} ({_num(gpu.temperature_slowdown_c)} / "
         f"{_num(gpu.temperature_shutdown_c)})"),
        ("fan", _num(gpu.fan_speed_pct, "%")),
        ("power W (draw / limit)", _pair(gpu.power_draw_w, gpu.power_limit_w, "", 1)),
        ("memory GiB (used / total)",
         _pair(_gib(gpu.memory_used_bytes), _gib(gpu.memory_total_bytes), "", 1)),
        ("utilization", _num(gpu.utilization_gpu_pct, "%")),
        ("clock events", reasons),
        ("ecc", ecc),
        ("remapped rows", remap),
        ("pcie (now/max)", pcie),
        ("xid since last check", _xids(gpu)),
    ]


def _xids(gpu: GpuSnapshot) -> str:
    if not gpu.xid_events:
        return "none"
    return ", ".join(f"{e.xid} at {e.at}" for e in gpu.xid_events)


def _print(snapshot: HostSnapshot) -> None:
    from rich.table import Table

    from hlctl.gpu.snapshot import cuda_version_text

    if snapshot.error is not None:
        click.echo(f"error: NVML could not start on {snapshot.host} ({snapshot.error_kind}): "
                   f"{snapshot.error}", err=True)
        return
    out = console()
    out.print(f"[bold]{snapshot.host}[/]  driver {snapshot.driver_version or _NA}  "
              f"CUDA {cuda_version_text(snapshot.cuda_driver_version)}  "
              f"NVML {snapshot.nvml_version or _NA}  at {snapshot.taken_at}")
    if not snapshot.gpus:
        out.print("no GPU found (is the GPU passed through to this machine? check lspci)")
        return
    table = Table(show_header=True, header_style="bold")
    table.add_column("")
    per_gpu: list[dict[str, str]] = []
    labels: list[str] = []
    for g in snapshot.gpus:
        table.add_column(f"GPU {g.index}")
        rows = dict(_rows(g))
        per_gpu.append(rows)
        labels += [label for label in rows if label not in labels]
    for label in labels:
        cells: list[Any] = [rows.get(label, "") for rows in per_gpu]
        table.add_row(label, *cells)
    out.print(table)
