"""Time `hlctl status --all` over 1, 3 and 6 hosts: the fan-out should cost about one host.

Six real Debian hosts (the cached debootstrap root with the hlctl agent installed by the
hlctl_agent role, as tests/integration/test_fleet_status.py uses), each booted with
systemd-nspawn in a network namespace of its own and reached over real SSH from one
controller namespace, where this checkout's hlctl runs. Each host has a recorded health
result (`hlctl health --from` a healthy snapshot). Runs are interleaved (1, 3, 6, 1, 3, 6,
...) so that load from other processes spreads over all three sizes. Prints the medians and
the ratios 3/1 and 6/1 (goal: 6 hosts take less than 1.5x one host), and the peer: the same
hosts asked one after another.

Three setups, each measured the same way:
- as installed: each host's resident agent answers (hlctl-agent.socket) over SSH
  connections kept from the previous run (fleet.ssh_reuse_s);
- new connections: the same with fleet.ssh_reuse_s=0 (a key exchange per host and run);
- no resident agent: its socket stopped, so each host starts hlctl and validates its config
  per request (what every status cost before the agent).
All hosts share this machine's cores, so what each host spends on an answer adds up here as
it would not in a real lab; the last two setups show that cost.

Needs root (netns, nspawn).

    .venv/bin/python bench/fleet_status.py [--runs 5] [--hosts 6]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fixtures

from tests.fixtures.debian_root import missing_tools, nspawn_boot_problem
from tests.fixtures.fleet_hosts import Lab, agent_root, build_wheelhouse, lab

SNAPSHOT = Path(__file__).resolve().parents[1] / "tests/fixtures/snapshots/healthy_3090.json"


def _seconds(text: str) -> float:
    """``0m0.270s`` (the shell's ``times``) in seconds."""
    minutes, rest = text.rstrip("s").split("m")
    return int(minutes) * 60 + float(rest)


def _measure(the_lab: Lab, inventories: dict[int, Path], runs: int,
             env: dict[str, str] | None = None) -> dict[int, list[float]]:
    """Interleaved runs of `hlctl status --all` over each inventory; every host must be ok."""
    times: dict[int, list[float]] = {n: [] for n in inventories}
    the_lab.hlctl("status", "--all", "-i", str(inventories[max(inventories)]),
                  env=env)  # warm caches (and, when kept, the connections)
    for _ in range(runs):
        for n, inventory in inventories.items():
            t0 = time.monotonic()
            result = the_lab.hlctl("status", "--all", "--json", "--timeout", "30",
                                   "-i", str(inventory), env=env)
            times[n].append(time.monotonic() - t0)
            rows = json.loads(result.stdout)
            if result.returncode != 0 or len(rows) != n or not all(
                    r["reachable"] and r["health"] == "ok" for r in rows):
                raise RuntimeError(f"run over {n} hosts failed: {result.stdout[-2000:]}"
                                   f"{result.stderr[-2000:]}")
    return times


def _report(title: str, times: dict[int, list[float]]) -> None:
    medians = {n: statistics.median(t) for n, t in times.items()}
    sizes = sorted(times)
    print(title)
    for n in sizes:
        spread = ", ".join(f"{t:.2f}" for t in times[n])
        print(f"  {n} host(s): {medians[n]:.2f}s   ({spread})")
    for n in sizes[1:]:
        print(f"  ratio {n}/1: {medians[n] / medians[1]:.2f}x")
    met = medians[sizes[-1]] / medians[1] < 1.5
    print(f"  goal {sizes[-1]} hosts < 1.5x one host: {'met' if met else 'NOT met'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--hosts", type=int, default=6)
    args = parser.parse_args()
    missing = missing_tools("debootstrap", "systemd-nspawn", "ip", "ssh", "ssh-keygen")
    if missing:
        print(f"needs the apt packages {', '.join(missing)}", file=sys.stderr)
        return 2
    problem = nspawn_boot_problem()
    if problem:
        print(f"systemd-nspawn cannot boot here: {problem}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="hlctl-bench-fleet-"))
    try:
        wheel, house = build_wheelhouse(work / "dist")
        base = agent_root(wheel, house)
        started = time.monotonic()
        with lab(work, args.hosts, base) as the_lab:
            print(f"booted {args.hosts} hosts in {time.monotonic() - started:.1f}s")
            for host in the_lab.hosts:
                shutil.copy(SNAPSHOT, host.root / "root/snapshot.json")
                host.ssh("hlctl health --from /root/snapshot.json")
            # What one host's answer costs in CPU without the agent: the hosts share the cores.
            cpu = the_lab.hosts[0].ssh("for i in 1 2 3 4 5; do hlctl status --json "
                                       ">/dev/null; done; times").stdout.split("\n")[1]
            per_status = sum(_seconds(v) for v in cpu.split()) / 5
            sizes = sorted({1, min(3, args.hosts), args.hosts})
            inventories = {n: the_lab.inventory(the_lab.hosts[:n]) for n in sizes}
            serial: list[float] = []
            for _ in range(args.runs):
                # The peer: the same hosts asked one after another, as a loop over ssh would.
                t0 = time.monotonic()
                for host in the_lab.hosts:
                    if the_lab.hlctl("status", host.name, "--json", "-i",
                                     str(inventories[args.hosts])).returncode != 0:
                        print(f"serial status of {host.name} failed", file=sys.stderr)
                        return 1
                serial.append(time.monotonic() - t0)
            installed = _measure(the_lab, inventories, args.runs)
            fresh = _measure(the_lab, inventories, args.runs,
                             env={"HLCTL_FLEET__SSH_REUSE_S": "0"})
            for host in the_lab.hosts:
                host.ssh("systemctl stop hlctl-agent.socket hlctl-agent.service")
            no_agent = _measure(the_lab, inventories, args.runs)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cores = os.cpu_count() or 1
    _report(f"hlctl status --all as installed (resident agents, connections kept), median of "
            f"{args.runs} runs each (interleaved):", installed)
    one_by_one = statistics.median(serial)
    print(f"  peer: the {args.hosts} hosts one after another: {one_by_one:.2f}s "
          f"({one_by_one / statistics.median(installed[args.hosts]):.2f}x the parallel run)")
    _report("new SSH connections each run (fleet.ssh_reuse_s=0):", fresh)
    _report("no resident agent (hlctl-agent.socket stopped), connections kept:", no_agent)
    print(f"  without the agent one host's answer costs {per_status:.2f}s CPU, and all "
          f"{args.hosts} hosts share this machine's {cores} core(s): {args.hosts} answers "
          f"need at least {args.hosts * per_status / cores:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
