"""Time `hlctl models pull` against its peers, in one run, on a 1 GiB file from the local hub.

Peers: ``curl -o`` (the raw transfer limit, no verification) and ``hf download`` followed by
``sha256sum`` (what a user does by hand to verify). hlctl downloads, hashes, fsyncs and renames;
``curl -o`` + ``sync FILE`` is printed as a yardstick for the cost of that fsync.
The CPU column is user + system time of the tool's processes: on a loaded machine wall time
follows it, on an idle one hlctl's hashing runs on another core beside the transfer.
Runs are interleaved (curl, hf, hlctl, curl, ...) so that load from other processes spreads
over all three; each run writes to a fresh directory on the same filesystem, which is synced
and emptied between runs. Prints the medians and the ratios against the goals:
hlctl within 1.15x of curl, and at least 1.3x faster than download-then-hash.

    .venv/bin/python bench/pull.py [--size-mib 1024] [--runs 3] [--rate-mb 100]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fixtures

from tests.fixtures.hub_server import HubServer

REPO = "bench/model-GGUF"
NAME = "bench-Q4_K_M.gguf"
BIN = Path(sys.executable).parent


def write_file(path: Path, size: int) -> None:
    block = os.urandom(16 << 20)
    with path.open("wb") as handle:
        written = 0
        while written < size:
            # Vary each block so no layer can deduplicate or compress the stream.
            piece = (written.to_bytes(8, "little") + block)[:min(len(block), size - written)]
            handle.write(piece)
            written += len(piece)


def timed(run: Callable[[Path], None], workdir: Path) -> tuple[float, float]:
    """Wall seconds and the CPU seconds (user + system) the tool's processes used."""
    out = workdir / "out"
    out.mkdir()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    run(out)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    shutil.rmtree(out)
    os.sync()  # the next run must not pay for this one's writeback
    return elapsed, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate-mb", type=float, default=None,
                        help="throttle the hub to this many MB/s (a home line) instead of "
                             "serving as fast as loopback allows")
    args = parser.parse_args()
    size = args.size_mib << 20
    work = Path(tempfile.mkdtemp(prefix="hlctl-bench-pull-"))
    try:
        source = work / NAME
        write_file(source, size)
        with HubServer() as hub:
            repo_file = hub.repo(REPO).add(NAME, source=source)
            if args.rate_mb:
                repo_file.faults.rate = int(args.rate_mb * 1e6)
            expected = repo_file.sha256  # hashed once here, not inside any timing
            env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HLCTL_"))}
            env.update(HF_ENDPOINT=hub.url, HF_HOME=str(work / "hf-home"),
                       HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
            url = f"{hub.url}/{REPO}/resolve/main/{NAME}"

            def curl(out: Path) -> None:
                subprocess.run(["curl", "-sS", "--fail", "-o", str(out / NAME), url],
                               check=True, env=env)

            def curl_then_sync(out: Path) -> None:
                # Not a goal, a yardstick: curl's bytes made durable, as hlctl's fsync does.
                curl(out)
                subprocess.run(["sync", str(out / NAME)], check=True)

            def hf_then_sha256sum(out: Path) -> None:
                subprocess.run([str(BIN / "hf"), "download", REPO, NAME, "--local-dir", str(out)],
                               check=True, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                digest = subprocess.run(["sha256sum", str(out / NAME)], check=True, env=env,
                                        capture_output=True, text=True).stdout.split()[0]
                assert digest == expected, "hf download delivered a different file"

            def hlctl(out: Path) -> None:
                subprocess.run([str(BIN / "hlctl"), "models", "pull", REPO, NAME, "--dir",
                                str(out), "--lock", str(out / "models.lock"), "--no-fit-check",
                                "--json"], check=True, env=env, cwd=out,
                               stdout=subprocess.DEVNULL)
                assert (out / REPO / NAME).stat().st_size == size

            tools: dict[str, Callable[[Path], None]] = {
                "curl -o": curl, "curl -o + sync FILE": curl_then_sync,
                "hf download + sha256sum": hf_then_sha256sum, "hlctl models pull": hlctl}
            times: dict[str, list[float]] = {name: [] for name in tools}
            cpus: dict[str, list[float]] = {name: [] for name in tools}
            for round_no in range(args.runs):
                for name, run in tools.items():
                    wall, cpu = timed(run, work)
                    times[name].append(wall)
                    cpus[name].append(cpu)
                print(f"round {round_no + 1}: " + ", ".join(
                    f"{n} {t[-1]:.2f}s" for n, t in times.items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    medians = {name: statistics.median(values) for name, values in times.items()}
    curl_s = medians["curl -o"]
    hlctl_s = medians["hlctl models pull"]
    manual_s = medians["hf download + sha256sum"]
    limit = f", hub throttled to {args.rate_mb:g} MB/s" if args.rate_mb else ""
    print(f"\n{args.size_mib} MiB from the local hub{limit}, median of {args.runs} runs "
          f"(load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs):")
    for name, median in medians.items():
        rate = size / median / 1e6
        cpu = statistics.median(cpus[name])
        print(f"  {name:26} {median:7.2f} s  {rate:8.0f} MB/s  {median / curl_s:5.2f}x curl"
              f"  cpu {cpu:6.2f} s")
    slower = hlctl_s / curl_s
    faster = manual_s / hlctl_s
    print(f"hlctl / curl = {slower:.2f} (goal <= 1.15: {'met' if slower <= 1.15 else 'MISSED'})")
    print(f"(hf download + sha256sum) / hlctl = {faster:.2f} "
          f"(goal >= 1.3: {'met' if faster >= 1.3 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
