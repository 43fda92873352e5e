"""Benchmark: `hlctl --help` wall time against `python -c "import click"` (the floor).

Runs both alternately, 10 times each by default, and prints the medians and their ratio.
The goal (issue 2) is a ratio of at most 1.5: the root CLI must import nothing heavy.

    .venv/bin/python bench/cli_startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _time(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    hlctl = Path(sys.executable).with_name("hlctl")
    if not hlctl.exists():
        found = shutil.which("hlctl")
        if not found:
            print("hlctl is not installed next to this python or on PATH", file=sys.stderr)
            return 1
        hlctl = Path(found)
    peer = [sys.executable, "-c", "import click"]
    ours = [str(hlctl), "--help"]
    _time(peer), _time(ours)  # warm the page cache before measuring
    peer_times, our_times = [], []
    for _ in range(args.runs):
        peer_times.append(_time(peer))
        our_times.append(_time(ours))
    p, o = statistics.median(peer_times), statistics.median(our_times)
    print(f"python -c 'import click': median {p * 1000:.1f} ms over {args.runs} runs")
    print(f"hlctl --help:             median {o * 1000:.1f} ms over {args.runs} runs")
    print(f"ratio: {o / p:.2f} (goal <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
