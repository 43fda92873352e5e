"""`hlctl health`: evaluate GPU health, with Nagios exit codes (0 OK .. 3 UNKNOWN)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hlctl.cli.output import print_json
from hlctl.context import AppContext

if TYPE_CHECKING:
    from hlctl.gpu.health import HealthReport
    from hlctl.gpu.snapshot import HostSnapshot
    from hlctl.inventory import InventoryHost

UNKNOWN = 3


def live_snapshot(app: AppContext) -> HostSnapshot:
    """Read this machine's GPUs through NVML, with XIDs from the kernel log since last run."""
    from hlctl.gpu.nvml import read_snapshot

    return read_snapshot(state_dir=app.state_dir,
                         kernel_log=app.config.health.xid.kernel_log)


def _unknown(message: str) -> None:
    click.echo(f"GPU UNKNOWN - {message}")
    raise click.exceptions.Exit(UNKNOWN)


def _detail_lines(report: HealthReport, snapshot: HostSnapshot) -> list[str]:
    from hlctl.gpu.health import State

    rated = [c for c in report.checks if c.state is not State.NA]
    na = len(report.checks) - len(rated)
    findings = report.findings
    lines = [f"{report.host}: {len(rated) - len(findings)} of {len(rated)} checks OK "
             f"on {len(snapshot.gpus)} GPU(s)"
             + (f", {na} n/a (not supported by this card)" if na else "")]
    for f in findings:
        where = "host" if f.gpu is None else f"gpu{f.gpu}"
        lines.append(f"  {f.state.value.upper():<8} {where} {f.check}: {f.message}")
        if f.action:
            lines.append(f"           -> {f.action}")
    return lines


def _print_report(report: HealthReport, snapshot: HostSnapshot, line: str) -> None:
    details = _detail_lines(report, snapshot)
    if sys.stdout.isatty():
        # People read the findings first; the plugin line closes the output.
        for text in details:
            click.echo(text)
        click.echo(line)
    else:
        # Nagios, Icinga and Checkmk parse the first line (status | perfdata) and keep the
        # rest as long output, so a plugin run leads with the plugin line.
        click.echo(line)
        for text in details:
            click.echo(text)


def evaluate_once(app: AppContext, from_file: Path | None, prometheus: Path | None,
                  notify: bool, as_json: bool, quiet: bool = False) -> int:
    """One run: snapshot, evaluate, record, export, notify, print. Returns the Nagios code."""
    from hlctl.errors import HlctlError
    from hlctl.gpu.check import load_snapshot_file, record_result, report_to_dict
    from hlctl.gpu.health import evaluate_health
    from hlctl.gpu.nagios import nagios_line
    from hlctl.gpu.snapshot import SnapshotError

    try:
        thresholds = app.config.health
        snapshot = load_snapshot_file(from_file) if from_file else live_snapshot(app)
    except (SnapshotError, HlctlError) as exc:
        _unknown(str(exc))
    report = evaluate_health(snapshot, thresholds)
    code = report.state.nagios
    checked_at = app.clock().isoformat(timespec="seconds")
    warnings: list[str] = []
    try:
        record_result(app.state_dir, report, code, checked_at,
                      str(from_file) if from_file else "live")
    except OSError as exc:
        warnings.append(f"could not record the result in {app.state_dir}: {exc.strerror}")
    if prometheus is not None:
        from hlctl.gpu.prometheus import write_textfile

        try:
            write_textfile(prometheus, snapshot, report, run_at=app.clock())
        except OSError as exc:
            warnings.append(f"could not write {prometheus}: {exc.strerror or exc}")
    if notify:
        from hlctl.gpu.alerts import notify as send_alerts

        result = send_alerts(report, app.config.alerts, app.state_dir, exit_code=code,
                             clock=app.clock, environ=app.environ)
        warnings.extend(result.warnings)
    # A failing side channel is reported, never a change of the check's exit code.
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        print_json(report_to_dict(report, code))
    elif not quiet:
        _print_report(report, snapshot, nagios_line(report, snapshot, thresholds))
    return code


def _fleet(app: AppContext, hosts: list[InventoryHost], timeout: float | None,
           as_json: bool) -> int:
    """`hlctl health --json` on every host at once; the worst code is the command's."""
    from dataclasses import asdict

    from hlctl.fleet.report import health_from_run, worst_exit_code
    from hlctl.fleet.transport import run_on_hosts

    timeout_s = timeout if timeout is not None else app.config.fleet.timeout_s
    results = [health_from_run(run) for run in
               run_on_hosts(hosts, ["hlctl", "health", "--json"], timeout_s=timeout_s,
                            reuse=app.ssh_reuse())]
    worst = worst_exit_code(r.exit_code for r in results)
    if as_json:
        print_json({"schema": "hlctl.fleet-health/1", "exit_code": worst,
                    "hosts": [asdict(r) for r in results]})
        return worst
    names = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}
    width = max(len(r.host) for r in results)
    for r in results:
        click.echo(f"{r.host:<{width}}  {names[r.exit_code]:<8} (exit {r.exit_code})  "
                   f"{r.summary}")
    click.echo(f"lab: {names[worst]} (worst of {len(results)} host(s))")
    return worst


@click.command()
@click.argument("hosts", nargs=-1, metavar="[HOST]...")
@click.option("--all", "all_hosts", is_flag=True,
              help="Check every host of the inventory's gpu_hosts group over SSH.")
@click.option("--timeout", type=click.FloatRange(min=0.5), metavar="SECONDS",
              help="With hosts: wait at most this long for each (default: fleet.timeout_s).")
@click.option("-i", "--inventory", "inventory_path",
              type=click.Path(path_type=Path, dir_okay=False),
              help="Inventory (default: $HLCTL_INVENTORY or ./inventory/hosts.yml).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--from", "from_file", type=click.Path(path_type=Path, dir_okay=False),
              help="Evaluate a recorded snapshot (hlctl gpu info --json) instead of NVML.")
@click.option("--prometheus", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write a node_exporter textfile here (atomically).")
@click.option("--notify", is_flag=True,
              help="Send alerts on state changes and ping the heartbeat URL.")
@click.option("--watch", type=click.FloatRange(min=0.5), metavar="SECONDS",
              help="Re-evaluate every SECONDS in place, for a person at a terminal.")
@click.pass_obj
def health(app: AppContext, hosts: tuple[str, ...], all_hosts: bool, timeout: float | None,
           inventory_path: Path | None, as_json: bool, from_file: Path | None,
           prometheus: Path | None, notify: bool, watch: float | None) -> None:
    """Check GPU health and thermals; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.

    With --all or HOST names (inventory hosts or groups), every host runs `hlctl health`
    at once over SSH (recording its result, as the timer's runs do); each host's line shows
    its exit code, and the command exits with the worst: CRITICAL (2) beats UNKNOWN (3)
    beats WARNING (1) beats OK (0). A host that does not answer counts as UNKNOWN.

    \b
    Examples:
      hlctl health                          check this machine now
      hlctl health --from snapshot.json     evaluate a recorded snapshot
      hlctl health --notify --prometheus /var/lib/node_exporter/hlctl.prom
      hlctl health --all                    every GPU host, worst exit code wins
    """
    from hlctl.fleet.report import fleet_selection

    selected = fleet_selection(app.environ, inventory_path, hosts, all_hosts)
    if selected is not None:
        if from_file or prometheus or notify or watch is not None:
            from hlctl.errors import UsageError

            raise UsageError("--from, --prometheus, --notify and --watch act on this machine; "
                             "drop them with --all or HOST")
        raise click.exceptions.Exit(_fleet(app, selected, timeout, as_json))
    if watch is None:
        raise click.exceptions.Exit(
            evaluate_once(app, from_file, prometheus, notify, as_json))
    code = UNKNOWN
    try:
        while True:
            if sys.stdout.isatty() and not as_json:
                click.clear()
            click.echo(f"hlctl health every {watch:g}s (Ctrl-C to stop)  "
                       f"{app.clock().isoformat(timespec='seconds')}")
            try:
                code = evaluate_once(app, from_file, prometheus, notify, as_json)
            except click.exceptions.Exit as exc:
                code = exc.exit_code
            time.sleep(watch)
    except KeyboardInterrupt:
        pass
    raise click.exceptions.Exit(code)
