"""Benchmark hlctl's router against LiteLLM's proxy, both in front of the same fast stub.

In one run: the stub directly, through ``hlctl router``, through LiteLLM's proxy; throughput
at 64 concurrent clients and added latency (p50/p99, to the last byte) at 1 client,
streaming (50 chunks) and not. The stub answers at once, so what is measured is the proxy.

    .venv/bin/python bench/router.py                 # everything (LiteLLM venv made if missing)
    .venv/bin/python bench/router.py --no-litellm    # hlctl and direct only
    .venv/bin/python bench/router.py --json out.json --seconds 5
    .venv/bin/python bench/router.py --frameworks    # + bare aiohttp.web / Starlette proxies
    .venv/bin/python bench/router.py --repeats 7 --latency-only --baseline /tmp/base

LiteLLM lives in its own venv (``~/.cache/hlctl-bench/litellm-venv``, ``litellm[proxy]``
from PyPI) so it never enters hlctl's environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
LITELLM_VENV = Path.home() / ".cache" / "hlctl-bench" / "litellm-venv"
BENCH_KEY = "sk-bench-key"
BODY = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


# -- the servers ---------------------------------------------------------------------------

def serve_hlctl(port: int, upstream: str, state_dir: str) -> None:
    """Run hlctl's router in this process (the bench's child), as `router serve` would."""
    from hlctl.router.app import Router, serve_forever
    from hlctl.router.config import RouterSettings

    settings = RouterSettings.model_validate({
        "port": port,
        "keys": [{"name": "bench", "secret": {"env": "HLCTL_BENCH_KEY"}}],
        "local": [{"name": "stub", "url": upstream}],
        "energy": {"use_nvml": False},
    })
    router = Router(settings, environ={"HLCTL_BENCH_KEY": BENCH_KEY},
                    state_dir=Path(state_dir))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve_forever(router, "127.0.0.1", port))


def serve_minimal(framework: str, port: int, upstream: str) -> None:
    """A bare pass-through (no auth, policy or ledger) on aiohttp.web or Starlette/uvicorn.

    Both use the same aiohttp client, so the pair shows what the server framework costs:
    the figure that chose aiohttp.web for hlctl's router.
    """
    import uvloop

    url = upstream + "/v1/chat/completions"
    headers = {"Content-Type": "application/json"}
    state: dict[str, aiohttp.ClientSession] = {}

    def session() -> aiohttp.ClientSession:
        if "s" not in state:
            state["s"] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=512, keepalive_timeout=4))
        return state["s"]

    if framework == "aiohttp":
        from aiohttp import web

        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            async with session().post(url, data=body, headers=headers) as upstream_resp:
                if b'"stream": true' not in body:
                    return web.Response(body=await upstream_resp.read(),
                                        status=upstream_resp.status,
                                        content_type="application/json")
                out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await out.prepare(request)
                async for data in upstream_resp.content.iter_any():
                    await out.write(data)
                await out.write_eof()
                return out

        app = web.Application()
        app.router.add_post("/v1/chat/completions", handle)
        app.router.add_get("/health", lambda _r: _ok_aiohttp())
        uvloop.install()
        web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
        return
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def handle_starlette(request: Request) -> Response:
        body = await request.body()
        if b'"stream": true' not in body:
            async with session().post(url, data=body, headers=headers) as upstream_resp:
                return Response(await upstream_resp.read(), status_code=upstream_resp.status,
                                media_type="application/json")
        upstream_resp = await session().post(url, data=body, headers=headers)

        async def relay() -> Any:
            try:
                async for data in upstream_resp.content.iter_any():
                    yield data
            finally:
                upstream_resp.release()

        return StreamingResponse(relay(), media_type="text/event-stream")

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/v1/chat/completions", handle_starlette, methods=["POST"]),
                            Route("/health", health)])
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning")


async def _ok_aiohttp() -> Any:
    from aiohttp import web

    return web.json_response({"status": "ok"})


def ensure_litellm() -> Path:
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    print(f"creating {LITELLM_VENV} with litellm[proxy] (once) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    # httptools: uvicorn's fast parser, so the Starlette comparison is fair.
    subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]",
                    "httptools"], check=True)
    return exe


def litellm_version() -> str:
    out = subprocess.run([str(LITELLM_VENV / "bin" / "python"), "-c",
                          "import importlib.metadata as m; print(m.version('litellm'))"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


class Servers:
    def __init__(self, with_litellm: bool, frameworks: bool = False,
                 baseline: list[Path] | None = None) -> None:
        self.frameworks = frameworks
        self.baseline = baseline or []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tmp = tempfile.TemporaryDirectory(prefix="hlctl-bench-")
        self.with_litellm = with_litellm
        self.targets: dict[str, tuple[str, dict[str, str]]] = {}

    def _spawn(self, args: list[str], env: dict[str, str] | None = None,
               log: str = "log") -> None:
        out = open(Path(self.tmp.name) / f"{log}.log", "wb")  # noqa: SIM115 - lives with proc
        self.procs.append(subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=out,
                                           env={**os.environ, **(env or {})},
                                           start_new_session=True))

    def _wait(self, url: str, timeout: float, log: str) -> None:
        """Wait for the last spawned server; if it never answers, say what its log says."""
        try:
            wait_http(url, timeout)
        except RuntimeError as exc:
            path = Path(self.tmp.name) / f"{log}.log"
            tail = path.read_text(errors="replace")[-2000:] if path.exists() else ""
            raise RuntimeError(f"{exc}; exit status {self.procs[-1].poll()}; "
                               f"the end of its log:\n{tail}") from None

    def start(self) -> None:
        stub, hl = free_port(), free_port()
        self._spawn([sys.executable, "-m", "tests.fixtures.router_stub", "--port", str(stub),
                     "--chunks", "50"], log="stub")
        self._wait(f"http://127.0.0.1:{stub}/health", 30, "stub")
        self.targets["direct"] = (f"http://127.0.0.1:{stub}/v1/chat/completions", {})
        # Started exactly as the --baseline routers are, so that they compare like for like.
        self._spawn([sys.executable, str(ROOT / "bench" / "router.py"), "_serve_hlctl",
                     str(hl), f"http://127.0.0.1:{stub}", tempfile.mkdtemp(dir=self.tmp.name)],
                    env={"PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}, log="hlctl")
        auth = {"Authorization": f"Bearer {BENCH_KEY}"}
        self._wait(f"http://127.0.0.1:{hl}/health", 30, "hlctl")
        self.targets["hlctl"] = (f"http://127.0.0.1:{hl}/v1/chat/completions", auth)
        for checkout in self.baseline:
            # Another checkout's router (e.g. `git worktree add /tmp/base HEAD~1`), measured
            # in the same rounds, so a change is compared under the same load.
            base = free_port()
            src = checkout.resolve()
            name = "hlctl-base" if len(self.baseline) == 1 else f"hlctl-{src.name}"
            self._spawn([sys.executable, str(src / "bench" / "router.py"), "_serve_hlctl",
                         str(base), f"http://127.0.0.1:{stub}",
                         tempfile.mkdtemp(dir=self.tmp.name)],
                        env={"PYTHONPATH": f"{src / 'src'}{os.pathsep}{src}"}, log=name)
            self._wait(f"http://127.0.0.1:{base}/health", 30, name)
            self.targets[name] = (f"http://127.0.0.1:{base}/v1/chat/completions", auth)
        if self.frameworks:
            peer_python = ensure_litellm().parent / "python"  # has starlette and uvicorn
            for name, python in (("aiohttp", sys.executable), ("starlette", str(peer_python))):
                port = free_port()
                self._spawn([python, __file__, "_serve_minimal", name, str(port),
                             f"http://127.0.0.1:{stub}"], log=f"min-{name}")
                self._wait(f"http://127.0.0.1:{port}/health", 60, f"min-{name}")
                self.targets[f"bare-{name}"] = (
                    f"http://127.0.0.1:{port}/v1/chat/completions", {})
        if self.with_litellm:
            exe = ensure_litellm()
            lp = free_port()
            config = Path(self.tmp.name) / "litellm.yaml"
            config.write_text(json.dumps({
                "model_list": [{"model_name": "auto", "litellm_params": {
                    "model": "openai/stub-model", "api_base": f"http://127.0.0.1:{stub}/v1",
                    "api_key": "none"}}],
                "general_settings": {"master_key": BENCH_KEY}}))
            self._spawn([str(exe), "--config", str(config), "--port", str(lp),
                         "--host", "127.0.0.1", "--num_workers", "1"],
                        env={"LITELLM_MASTER_KEY": BENCH_KEY,
                             "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                             "LITELLM_LOG": "ERROR"}, log="litellm")
            self._wait(f"http://127.0.0.1:{lp}/health/liveliness", 180, "litellm")
            self.targets["litellm"] = (f"http://127.0.0.1:{lp}/v1/chat/completions", auth)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.tmp.cleanup()


# -- the load ------------------------------------------------------------------------------

@dataclass
class Result:
    target: str
    stream: bool
    rps_64: float
    errors_64: int
    p50_ms_1: float  # median over the latency rounds
    p99_ms_1: float
    p50_rounds: list[float] = field(default_factory=list)
    p99_rounds: list[float] = field(default_factory=list)


async def _one(session: aiohttp.ClientSession, url: str, data: bytes,
               headers: dict[str, str], stream: bool) -> bool:
    async with session.post(url, data=data, headers=headers) as resp:
        body = await resp.read()
        if resp.status != 200:
            return False
        return body.rstrip().endswith(b"[DONE]") if stream else body.startswith(b"{")


async def throughput(url: str, headers: dict[str, str], stream: bool, clients: int,
                     seconds: float) -> tuple[float, int]:
    data = json.dumps({**BODY, "stream": stream}).encode()
    headers = {**headers, "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        done = errors = 0
        warmup_end = time.perf_counter() + min(1.0, seconds / 4)
        end = warmup_end + seconds
        counting_start = 0.0

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < end:
                try:
                    ok = await _one(session, url, data, headers, stream)
                except aiohttp.ClientError:
                    ok = False
                if time.perf_counter() >= warmup_end:
                    done += ok
                    errors += not ok

        async def mark() -> None:
            nonlocal counting_start, done, errors
            await asyncio.sleep(max(0.0, warmup_end - time.perf_counter()))
            counting_start, done, errors = time.perf_counter(), 0, 0

        await asyncio.gather(mark(), *(worker() for _ in range(clients)))
        return done / (time.perf_counter() - counting_start), errors


async def latency(targets: dict[str, tuple[str, dict[str, str]]], stream: bool,
                  count: int, burst: int = 10) -> dict[str, list[float]]:
    """1-client latency of every target, in short bursts, the targets in a shuffled order.

    A burst is one request that is not counted, then ``burst`` that are. The uncounted one
    pays for what the previous target left running (the stub finishing its last answer,
    LiteLLM's background logging, a proxy's bookkeeping after its last byte), which a
    client of one proxy alone never meets; measured one request per target in turn, every
    proxied request paid for its predecessor, and paid more than a direct one (it spans
    more processes), so every proxy's added latency grew with the number of targets.
    Bursts in a new order each round still give every target the same share of a shared
    machine's load, which changes from second to second. ``burst=0``: the old way, one
    counted request per target in turn.
    """
    data = json.dumps({**BODY, "stream": stream}).encode()
    out: dict[str, list[float]] = {name: [] for name in targets}
    sessions = {name: aiohttp.ClientSession() for name in targets}

    async def one(name: str) -> float:
        url, headers = targets[name]
        started = time.perf_counter()
        ok = await _one(sessions[name], url, data,
                        {**headers, "Content-Type": "application/json"}, stream)
        if not ok:
            raise RuntimeError(f"{url}: a request failed during the latency run")
        return (time.perf_counter() - started) * 1000

    try:
        names = list(targets)
        order = random.Random(4)  # the same shuffles every run
        for name in names:
            for _ in range(20):  # warm the connection and the caches
                await one(name)
        size = max(burst, 1)
        for _ in range(-(-count // size)):
            order.shuffle(names)
            for name in names:
                if burst:
                    await one(name)  # settles what the previous target left: not counted
                for _ in range(size):
                    out[name].append(await one(name))
    finally:
        for session in sessions.values():
            await session.close()
    return {name: values[:count] for name, values in out.items()}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(targets: dict[str, tuple[str, dict[str, str]]], seconds: float,
        count: int, repeats: int = 1, latency_only: bool = False,
        burst: int = 10) -> list[Result]:
    """Throughput once per target, then ``repeats`` rounds of 1-client latency.

    The latency rounds interleave the targets in short bursts, so a round's figures
    share the machine's load of that moment (this machine is shared); a target's p50 and p99 are
    the medians of its rounds' figures, and the added latency is computed per round
    against that round's direct figure before taking the median (see ``report``).
    """
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    results = []
    for stream in (False, True):
        rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
        rates: dict[str, tuple[float, int]] = {}
        for name, (url, headers) in targets.items():
            rates[name] = ((0.0, 0) if latency_only
                           else asyncio.run(throughput(url, headers, stream, 64, seconds)))
        for _ in range(repeats):
            for name, lat in asyncio.run(latency(targets, stream, count, burst)).items():
                rounds[name].append((statistics.median(lat), pct(lat, 0.99)))
        for name in targets:
            rps, errors = rates[name]
            p50s = [p50 for p50, _ in rounds[name]]
            p99s = [p99 for _, p99 in rounds[name]]
            results.append(Result(name, stream, rps, errors, statistics.median(p50s),
                                  statistics.median(p99s), p50s, p99s))
            print(f"  {name:8} stream={stream!s:5} {rps:9.0f} req/s at 64 clients "
                  f"({errors} errors); 1 client p50 {results[-1].p50_ms_1:.3f} ms "
                  f"p99 {results[-1].p99_ms_1:.3f} ms (rounds: "
                  f"{', '.join(f'{v:.3f}' for v in p50s)})", file=sys.stderr, flush=True)
    return results


def report(results: list[Result]) -> dict[str, Any]:
    by = {(r.target, r.stream): r for r in results}
    summary: dict[str, Any] = {"results": [asdict(r) for r in results], "proxies": {}}
    print(f"\n{'':22}{'req/s @64':>11}{'added p50':>11}{'added p99':>11}{'vs litellm':>12}")
    for stream in (False, True):
        direct = by[("direct", stream)]
        names = ["direct", "bare-aiohttp", "bare-starlette",
                 *sorted(t for t, s in by if s == stream and t.startswith("hlctl-")),
                 "hlctl", "litellm"]
        for name in names:
            r = by.get((name, stream))
            if r is None:
                continue
            # Per round against the same round's direct figure, then the median.
            added50 = statistics.median(
                a - b for a, b in zip(r.p50_rounds, direct.p50_rounds, strict=True))
            added99 = statistics.median(
                a - b for a, b in zip(r.p99_rounds, direct.p99_rounds, strict=True))
            peer = by.get(("litellm", stream))
            ratio = r.rps_64 / peer.rps_64 if peer and peer.rps_64 else None
            added_peer = (statistics.median(a - b for a, b in zip(
                peer.p50_rounds, direct.p50_rounds, strict=True)) if peer else None)
            label = f"{name} {'stream' if stream else 'json'}"
            print(f"{label:22}{r.rps_64:11.0f}{added50:10.3f}ms{added99:10.3f}ms"
                  f"{(f'{ratio:11.1f}x' if ratio else ''):>12}")
            summary["proxies"][label] = {"rps_64": r.rps_64, "added_p50_ms": added50,
                                         "added_p99_ms": added99,
                                         "added_p50_rounds_ms": [
                                             a - b for a, b in zip(r.p50_rounds,
                                                                   direct.p50_rounds,
                                                                   strict=True)],
                                         "share_of_direct": (r.rps_64 / direct.rps_64
                                                             if direct.rps_64 else None),
                                         "latency_vs_litellm": (added_peer / added50
                                                                if added_peer and added50 > 0
                                                                else None),
                                         "x_litellm": ratio}
    return summary


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_serve_hlctl":
        serve_hlctl(int(sys.argv[2]), sys.argv[3], sys.argv[4])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_serve_minimal":
        serve_minimal(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4, help="measure each load this long")
    parser.add_argument("--count", type=int, default=300, help="1-client requests per target")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM peer")
    parser.add_argument("--frameworks", action="store_true",
                        help="also bare pass-throughs on aiohttp.web and Starlette/uvicorn")
    parser.add_argument("--repeats", type=int, default=1,
                        help="1-client latency rounds per target, interleaved; medians reported")
    parser.add_argument("--burst", type=int, default=10,
                        help="1-client requests per target in a row, after one uncounted "
                        "(0: one request per target in turn, all counted)")
    parser.add_argument("--latency-only", action="store_true",
                        help="skip the 64-client throughput runs")
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT", action="append",
                        help="also measure the router of another checkout (hlctl-base); "
                        "repeatable")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    servers = Servers(with_litellm=not args.no_litellm, frameworks=args.frameworks,
                      baseline=args.baseline)
    try:
        servers.start()
        print(f"cores: {os.cpu_count()}; litellm "
              f"{litellm_version() if not args.no_litellm else 'skipped'}", file=sys.stderr)
        summary = report(run(servers.targets, args.seconds, args.count, args.repeats,
                                 args.latency_only, args.burst))
    finally:
        servers.stop()
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
