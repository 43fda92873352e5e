"""The upstreams: local llama-server backends with health state, and the cloud provider.

One HTTP/1.1 client (``http1``, lighter than aiohttp's and httpx's) serves all of them.
Idle sockets close before the upstream's own keep-alive ends, so a reused socket is not
one the server has already closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from hlctl.router.config import RouterSettings
from hlctl.router.http1 import Http1Client, Origin, build_head, parse_url

State = Literal["unknown", "up", "starting", "down"]


@dataclass(eq=False)
class Backend:
    name: str
    kind: Literal["local", "cloud"]
    base: str  # ends in /v1
    model: str | None
    health_url: str | None
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # may hold a key
    in_flight: int = 0
    failures: int = 0
    state: State = "unknown"
    last_error: str = ""
    changed_at: float = field(default_factory=time.monotonic)
    origin: Origin = field(init=False, repr=False)
    heads: dict[str, bytes] = field(default_factory=dict, repr=False)  # request head by path

    def __post_init__(self) -> None:
        self.origin = parse_url(self.base)

    @property
    def routable(self) -> bool:
        # Unknown counts as up: the first probe may still be running when traffic arrives.
        return self.state in ("up", "unknown")

    def set_state(self, state: State) -> None:
        if state != self.state:
            self.state = state
            self.changed_at = time.monotonic()


def _auth_headers(secret: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"} if secret else {}


class UpstreamPool:
    """Picks the least busy healthy local backend; marks failures; probes /health."""

    def __init__(self, settings: RouterSettings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self.local = [
            Backend(b.name, "local", b.url.rstrip("/") + "/v1", b.model,
                    b.url.rstrip("/") + "/health",
                    _auth_headers(b.api_key.reveal(environ) if b.api_key else None))
            for b in settings.local
        ]
        cloud = settings.cloud
        self.cloud = None if cloud is None else Backend(
            cloud.name, "cloud", cloud.url.rstrip("/"), cloud.model, None,
            _auth_headers(cloud.api_key.reveal(environ) if cloud.api_key else None))
        self.http: Http1Client | None = None
        self._probe_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.http = Http1Client(limit=self.settings.max_connections,
                                keepalive_s=self.settings.timeouts.keepalive_s)
        if self.local:
            await self.probe_all()
            self._probe_task = asyncio.create_task(self._probe_loop())

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        if self.http is not None:
            self.http.close()

    def local_up(self) -> bool:
        return any(b.routable for b in self.local)

    def pick_local(self) -> Backend | None:
        best = None
        for backend in self.local:
            if backend.routable and (best is None or backend.in_flight < best.in_flight):
                best = backend
        return best

    def report_failure(self, backend: Backend, why: str) -> None:
        backend.failures += 1
        backend.last_error = why
        if backend.kind == "local" and backend.failures >= self.settings.failures_to_mark_down:
            backend.set_state("down")

    def report_success(self, backend: Backend) -> None:
        if backend.failures or backend.state != "up":
            backend.failures = 0
            backend.set_state("up")

    async def probe(self, backend: Backend) -> State:
        """One /health probe; llama-server's 503 while loading the model means starting."""
        assert self.http is not None and backend.health_url is not None
        connect_s = self.settings.timeouts.connect_s
        deadline = asyncio.get_running_loop().time() + connect_s + 3
        try:
            origin = parse_url(backend.health_url)
            resp = await self.http.request(origin, build_head("GET", origin, "",
                                                              backend.headers),
                                           b"", connect_s=connect_s, deadline=deadline)
            try:
                await resp.read(deadline)
            finally:
                resp.close()
            status = resp.status
        except OSError as exc:  # connect, reset, timeout, or not HTTP
            backend.last_error = f"probe: {type(exc).__name__}"
            backend.set_state("down")
            return "down"
        if status == 200:
            backend.failures = 0
            backend.set_state("up")
        elif status == 503:
            backend.set_state("starting")
        else:
            backend.last_error = f"probe: HTTP {status}"
            backend.set_state("down")
        return backend.state

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(b) for b in self.local))

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.probe_interval_s)
            await self.probe_all()

    def describe(self) -> list[dict[str, object]]:
        """The state of each upstream for /health (never its headers)."""
        out: list[dict[str, object]] = [
            {"name": b.name, "kind": "local", "state": b.state, "in_flight": b.in_flight,
             "last_error": b.last_error or None} for b in self.local]
        if self.cloud is not None:
            out.append({"name": self.cloud.name, "kind": "cloud", "state": "configured",
                        "in_flight": self.cloud.in_flight,
                        "last_error": self.cloud.last_error or None})
        return out
