"""The router's HTTP service: auth, limits, routing, failover, ledger, metrics.

The handlers take an ``Inbound`` request and answer a ``Reply`` (or stream into a
``Sink``); ``serve_forever`` serves them with the router's own HTTP/1.1 server (server.py),
``Router.web_app()`` with aiohttp.web. Errors the router answers itself use OpenAI's
shape ``{"error": {message, type, param, code}}`` so that clients raise their usual
exceptions. Every response carries ``X-HL-Routed-To``, ``X-HL-Route-Reason`` and
``X-HL-Overhead-Ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from hlctl.errors import HlctlError
from hlctl.router.config import RouterSettings
from hlctl.router.gpu_health import HealthFile
from hlctl.router.ledger import LEDGER_FILE, Ledger, LedgerRow
from hlctl.router.metrics import CONTENT_TYPE, RouterMetrics
from hlctl.router.policy import (
    LOCAL_UNHEALTHY,
    Endpoint,
    Health,
    PolicyConfig,
    RouteDecision,
    RouteError,
    RouteRequest,
    decide_fallback,
    decide_route,
    estimate_tokens,
)
from hlctl.router.power import PowerMeter
from hlctl.router.pricing import CloudPrices, EnergyPrice, Timings, Usage, cost
from hlctl.router.relay import (
    CONTEXT_OVERFLOW,
    Outcome,
    PassThrough,
    SseResponse,
    StreamRelay,
    UpstreamFailure,
    is_context_overflow,
    parse_kept_chunks,
    post_json,
)
from hlctl.router.server import FastServer, Inbound, Reply, Sink
from hlctl.router.upstreams import Backend, UpstreamPool

log = logging.getLogger(__name__)
PATHS: dict[Endpoint, str] = {"chat": "/chat/completions", "completions": "/completions",
                              "embeddings": "/embeddings"}
_POST_PATHS: dict[str, Endpoint] = {"/v1" + path: endpoint for endpoint, path in PATHS.items()}
_TRUE = ("1", "true", "yes", "on")
_INCLUDE_USAGE = b', "stream_options": {"include_usage": true}}'


@dataclass(frozen=True)
class KeyInfo:
    name: str
    scope: str


def error_body(message: str, code: str, type_: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": None,
                                 "code": code}}).encode()


def error_reply(status: int, code: str, message: str, type_: str = "invalid_request_error",
                headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, error_body(message, code, type_), dict(headers or {}))


def json_reply(body: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(body).encode())


def server_error_body(status: int, message: str) -> bytes:
    # Errors the HTTP layer answers before a handler runs (bad request line, 431 ...).
    return error_body(message, "bad_request" if status < 500 else "server_error",
                      "invalid_request_error" if status < 500 else "server_error")


class _AioSink(Sink):
    """A streamed answer through aiohttp.web (``Router.web_app``)."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: SseResponse | None = None

    async def start(self, status: int, headers: Mapping[str, str], data: bytes,
                    end: bool = False) -> None:
        self.response = SseResponse(status=status, headers={
            **headers, "Content-Type": "text/event-stream"})
        await self.response.prepare(self.request)
        if end:
            await self.response.write_eof(data)
        elif data:
            await self.response.write(data)

    async def write(self, data: bytes) -> None:
        assert self.response is not None
        await self.response.write(data)

    async def end(self, data: bytes) -> None:
        assert self.response is not None
        await self.response.write_eof(data)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.error = RouteError(status, code, message, type_)


def prompt_text(body: Mapping[str, Any], endpoint: Endpoint) -> str:
    """The text a request sends, for the length and keyword rules."""
    if endpoint == "chat":
        parts: list[str] = []
        messages = body.get("messages")
        for message in messages if isinstance(messages, list) else ():
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(p["text"] for p in content
                             if isinstance(p, dict) and isinstance(p.get("text"), str))
        return "\n".join(parts)
    field = body.get("prompt") if endpoint == "completions" else body.get("input")
    if isinstance(field, str):
        return field
    if isinstance(field, list):
        return "\n".join(p for p in field if isinstance(p, str))
    return ""


def upstream_body(body: Mapping[str, Any], raw: bytes, model: str | None, stream: bool,
                  include_usage: bool) -> bytes:
    """The bytes sent upstream: the client's, with the model and usage request set.

    ``raw`` is what the client sent and ``body`` its parse (a JSON object).
    """
    changes: dict[str, Any] = {}
    if model is not None and body.get("model") != model:
        changes["model"] = model
    if stream and not include_usage:
        # Ask for usage always, so the ledger has real counts; the extra chunk is
        # dropped before it reaches a client that did not ask for it.
        if "stream_options" not in body and not changes:
            # The common case: splice the key into the client's bytes instead of
            # serialising the whole body again (a long prompt makes that costly). The
            # body parsed as an object with "stream" in it and without this key, so it
            # ends in "}", is not empty, and gets no duplicate key.
            return raw[:raw.rstrip().rfind(b"}")] + _INCLUDE_USAGE
        options = body.get("stream_options")
        changes["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                     "include_usage": True}
    if not changes:
        return raw
    return json.dumps({**body, **changes}).encode()


class Router:
    """Holds the upstream pool, ledger and metrics; ``web_app()`` serves them."""

    def __init__(self, settings: RouterSettings, *, environ: Mapping[str, str],
                 state_dir: Path, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 watts: Callable[[], float] | None = None) -> None:
        self.settings = settings
        self.policy = PolicyConfig.from_settings(settings)
        self.clock = clock
        # Keys are looked up by their hash: no key text in memory beyond startup, and the
        # lookup takes the same time whichever byte differs.
        self.keys = {hashlib.sha256(k.secret.reveal(environ).encode()).digest():
                     KeyInfo(k.name, k.scope) for k in settings.keys}
        self.pool = UpstreamPool(settings, environ)
        self.ledger = Ledger(state_dir / LEDGER_FILE, flush_s=settings.ledger_flush_s,
                             clock=clock)
        self.metrics = RouterMetrics()
        self.power = PowerMeter(settings.energy.watts, use_nvml=settings.energy.use_nvml)
        self.watts = watts or self.power.watts
        cloud = settings.cloud
        self.prices = (None if cloud is None
                       else CloudPrices(cloud.input_usd_per_1m, cloud.output_usd_per_1m))
        gpu = settings.gpu_health
        self.gpu_health = (HealthFile(
            Path(gpu.path).expanduser() if gpu.path else state_dir / "health" / "last.json",
            stale_after_s=gpu.stale_after_s, recheck_s=gpu.recheck_s, clock=clock)
            if gpu.divert else None)

    async def dispatch(self, request: Inbound, sink: Sink) -> Reply | None:
        """Answer one request (None: it was streamed into ``sink``)."""
        method = "GET" if request.method == "HEAD" else request.method
        if method == "POST":
            endpoint = _POST_PATHS.get(request.path)
            if endpoint is not None:
                return await self._handle(request, endpoint, sink)
        elif method == "GET":
            if request.path == "/health":
                return self._health()
            if request.path == "/v1/models":
                return self._models(request)
            if request.path == "/metrics":
                return self._metrics(request)
        return self._error(RouteError(404, "unknown_url",
                                      f"no endpoint {request.method} {request.path}"),
                           time.perf_counter())

    def web_app(self) -> web.Application:
        """The same service on aiohttp.web (the tests' fixtures run it in a thread)."""
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self._aiohttp)
        app.on_startup.append(lambda _app: self.startup())
        app.on_cleanup.append(lambda _app: self.cleanup())
        return app

    async def _aiohttp(self, request: web.Request) -> web.StreamResponse:
        try:
            body: bytes | None = await request.read()
        except web.HTTPRequestEntityTooLarge:
            body = None
        sink = _AioSink(request)
        reply = await self.dispatch(Inbound(request.method, request.path, request.headers, body,
                                            request.content_length), sink)
        if reply is None:
            assert sink.response is not None
            return sink.response
        return web.Response(status=reply.status, body=reply.body,
                            headers={**reply.headers, "Content-Type": reply.content_type})

    async def startup(self) -> None:
        self.ledger.open()
        await self.pool.start()
        await self.power.start()

    async def cleanup(self) -> None:
        await self.power.close()
        await self.pool.close()
        await asyncio.to_thread(self.ledger.close)

    # -- edges -------------------------------------------------------------------------

    def _auth(self, request: Inbound) -> KeyInfo:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing_api_key",
                           "send 'Authorization: Bearer <key>' with a key from the lab config")
        key = self.keys.get(hashlib.sha256(token.strip().encode()).digest())
        if key is None:
            raise ApiError(401, "invalid_api_key", "the API key is not one of the router's keys")
        return key

    def _read_json(self, request: Inbound) -> tuple[dict[str, Any], bytes]:
        limit = self.settings.max_body_bytes
        raw = request.body
        if raw is None or len(raw) > limit:
            raise ApiError(413, "request_too_large", f"the request body is over {limit} bytes")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_json", "the body must be a JSON object")
        return body, raw

    # -- handlers ----------------------------------------------------------------------

    def _models(self, request: Inbound) -> Reply:
        try:
            self._auth(request)
        except ApiError as exc:
            return self._error(exc.error, time.perf_counter())
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "hlctl"}
                for name in self.policy.aliases]
        return json_reply({"object": "list", "data": data})

    def _health(self) -> Reply:
        upstreams = self.pool.describe()
        ok = self.pool.local_up() or self.pool.cloud is not None
        body: dict[str, Any] = {"status": "ok" if ok and self.pool.local_up() else
                                ("degraded" if ok else "down"), "upstreams": upstreams}
        if self.gpu_health is not None:
            gpu = self.gpu_health.current()
            body["local_gpu_health"] = {"code": gpu.code, "state": gpu.why,
                                        "age_s": None if gpu.age_s is None
                                        else round(gpu.age_s, 1)}
        return json_reply(body, status=200 if ok else 503)

    def _metrics(self, request: Inbound) -> Reply:
        try:
            self._auth(request)
        except ApiError as exc:
            return self._error(exc.error, time.perf_counter())
        m = self.metrics
        for b in self.pool.local:
            m.upstream_up.labels(b.name, "local").set(1 if b.routable else 0)
            m.upstream_in_flight.labels(b.name).set(b.in_flight)
        if self.pool.cloud is not None:
            m.upstream_up.labels(self.pool.cloud.name, "cloud").set(1)
            m.upstream_in_flight.labels(self.pool.cloud.name).set(self.pool.cloud.in_flight)
        m.local_gpu_health.set(self.gpu_health.current().code if self.gpu_health else 3)
        m.ledger_rows.set(self.ledger.written)
        m.ledger_errors.set(self.ledger.write_errors)
        return Reply(200, m.render(), content_type=CONTENT_TYPE)

    def _error(self, error: RouteError, started: float,
               decision: RouteDecision | None = None) -> Reply:
        headers = {"X-HL-Routed-To": "none",
                   "X-HL-Route-Reason": decision.reason if decision else error.code,
                   "X-HL-Overhead-Ms": f"{(time.perf_counter() - started) * 1000:.3f}"}
        return error_reply(error.status, error.code, error.message, error.type, headers)

    async def _handle(self, request: Inbound, endpoint: Endpoint, sink: Sink) -> Reply | None:
        started = time.perf_counter()
        try:
            key = self._auth(request)
            body, raw = self._read_json(request)
        except ApiError as exc:
            return self._error(exc.error, started)
        model = body.get("model")
        route_request = RouteRequest(
            model=model if isinstance(model, str) and model else None,
            key_scope=key.scope,
            private_header=request.headers.get("x-hl-private", "").lower() in _TRUE,
            route_override=request.headers.get("x-hl-route") or None,
            prompt_text=prompt_text(body, endpoint),
            reasoning=bool(body.get("reasoning_effort")),
            endpoint=endpoint)
        health = Health(self.pool.local_up(), self.pool.cloud is not None,
                        self.gpu_health is not None and self.gpu_health.current().critical)
        decision = decide_route(route_request, health,
                                self.ledger.budget(self.settings.monthly_cloud_budget_usd),
                                self.policy)
        if decision.reason == LOCAL_UNHEALTHY and decision.target == "cloud":
            self.metrics.fallbacks.labels(LOCAL_UNHEALTHY).inc()
        exchange = _Exchange(self, sink, key, body, raw, endpoint, route_request, started)
        try:
            return await exchange.run(decision)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:
            # A bug of ours must still answer in OpenAI's shape, and say no more than its type.
            log.exception("request failed inside the router")
            return self._error(RouteError(500, "internal_error",
                                          f"internal router error ({type(exc).__name__})",
                                          "server_error"), started, decision)


class _Exchange:
    """One client request through its attempts (local, then perhaps cloud)."""

    def __init__(self, router: Router, sink: Sink, key: KeyInfo,
                 body: dict[str, Any], raw: bytes, endpoint: Endpoint,
                 route_request: RouteRequest, started: float) -> None:
        self.router = router
        self.sink = sink
        self.key = key
        self.body = body
        self.raw = raw
        self.endpoint = endpoint
        self.route_request = route_request
        self.started = started
        self.stream = body.get("stream") is True and endpoint != "embeddings"
        options = body.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True

    async def run(self, decision: RouteDecision) -> Reply | None:
        router = self.router
        outcome = Outcome()
        backend: Backend | None = None
        try:
            while decision.error is None:
                backend = (router.pool.pick_local() if decision.target == "local"
                           else router.pool.cloud)
                try:
                    if backend is None:
                        raise UpstreamFailure("no-backend")
                    outcome = Outcome()
                    return await self._attempt(decision, backend, outcome)
                except UpstreamFailure as failure:
                    if backend is not None:
                        router.pool.report_failure(backend, failure.kind)
                    decision = decide_fallback(decision, failure.kind)
                    if decision.target == "cloud":
                        router.metrics.fallbacks.labels(failure.kind).inc()
                except PassThrough as passed:
                    if (backend is not None and backend.kind == "local" and decision.fallback
                            and is_context_overflow(passed.status, passed.body)):
                        # Longer than the local context, which the router's estimate
                        # missed: the cloud answers it; the local backend stays up.
                        decision = decide_fallback(decision, CONTEXT_OVERFLOW)
                        router.metrics.fallbacks.labels(CONTEXT_OVERFLOW).inc()
                        continue
                    outcome.status = passed.status
                    return Reply(passed.status, passed.body, self._headers(decision, backend))
            assert decision.error is not None
            outcome.status = decision.error.status
            backend = None
            return router._error(decision.error, self.started, decision)
        except asyncio.CancelledError:
            outcome.client_gone = True
            raise
        finally:
            # Costed, counted and queued for the ledger on the loop's next turn: after
            # aiohttp has handed a non-streaming answer to the socket (it sends it only
            # once this returns), not before. A crash in between is a crash within the
            # ledger's flush interval, which may lose that interval's rows anyway.
            asyncio.get_running_loop().call_soon(self._record, decision, backend, outcome,
                                                 time.perf_counter())

    def _headers(self, decision: RouteDecision, backend: Backend | None) -> dict[str, str]:
        return {"X-HL-Routed-To": decision.target or "none",
                "X-HL-Route-Reason": decision.reason,
                "X-HL-Upstream": backend.name if backend else "none"}

    def _payload(self, backend: Backend, decision: RouteDecision) -> bytes:
        model = backend.model if backend.kind == "cloud" else (decision.upstream_model
                                                              or backend.model)
        return upstream_body(self.body, self.raw, model, self.stream, self.include_usage)

    async def _attempt(self, decision: RouteDecision, backend: Backend,
                       outcome: Outcome) -> Reply | None:
        router = self.router
        timeouts = router.settings.timeouts
        data = self._payload(backend, decision)
        path = PATHS[self.endpoint]
        client = router.pool.http
        assert client is not None
        before_upstream = time.perf_counter()
        backend.in_flight += 1
        try:
            if self.stream:
                relay = StreamRelay(self.sink, backend, include_usage=self.include_usage,
                                    connect_s=timeouts.connect_s,
                                    first_chunk_s=timeouts.first_chunk_s,
                                    idle_s=timeouts.stream_idle_s)
                relay.outcome = outcome
                outcome.overhead_s = before_upstream - self.started
                await relay.run(client, path, data, self._headers(decision, backend),
                                self.started)
                router.pool.report_success(backend)
                return None
            status, raw = await post_json(client, backend, path, data,
                                          connect_s=timeouts.connect_s,
                                          total_s=timeouts.response_s)
            received = time.perf_counter()
            router.pool.report_success(backend)
            if backend.kind == "local" and is_context_overflow(status, raw):
                raise PassThrough(status, raw)  # run() decides: the cloud, or this answer
            outcome.status = status
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                outcome.usage = parsed.get("usage")
                outcome.timings = parsed.get("timings")
                outcome.model = str(parsed.get("model") or "")
            headers = self._headers(decision, backend)
            outcome.overhead_s = (before_upstream - self.started
                                  + time.perf_counter() - received)
            headers["X-HL-Overhead-Ms"] = f"{outcome.overhead_s * 1000:.3f}"
            return Reply(status, raw, headers)
        finally:
            backend.in_flight -= 1

    def _record(self, decision: RouteDecision, backend: Backend | None,
                outcome: Outcome, finished: float) -> None:
        router = self.router
        elapsed = finished - self.started
        route = decision.target if decision.error is None and backend is not None else "none"
        parse_kept_chunks(outcome)
        usage = Usage.from_json(outcome.usage)
        estimated = usage is None and route != "none"
        if usage is None:
            usage = Usage(estimate_tokens(self.route_request.prompt_text) if route != "none"
                          else 0, outcome.chunks)
        timings = Timings.from_json(outcome.timings)
        status = outcome.status
        if outcome.client_gone:
            status = 499  # nginx's "client closed request"
        elif outcome.cut:
            status = 502
        energy = EnergyPrice(router.watts(), router.settings.energy.usd_per_kwh)
        usd = cost(route, usage, timings, elapsed * 1000, router.prices, energy)
        ttft = (outcome.first_chunk_at - self.started) if outcome.first_chunk_at else None
        if route != "none":
            router.metrics.overhead.observe(outcome.overhead_s)
        router.metrics.observe(route, status, elapsed, ttft, usage.prompt_tokens,
                               usage.completion_tokens, usd)
        router.ledger.record(LedgerRow(
            ts=router.clock().timestamp(), key_name=self.key.name, alias=decision.alias,
            route=route, reason=decision.reason if outcome.cut is None
            else f"{decision.reason};{outcome.cut}",
            upstream=backend.name if backend is not None and route != "none" else "",
            model=outcome.model or (backend.model or "" if backend else ""),
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            latency_ms=elapsed * 1000, ttft_ms=ttft * 1000 if ttft is not None else None,
            status=status, cost_usd=usd, stream=self.stream, private=decision.private,
            prompt_ms=timings.prompt_ms if timings else None,
            predicted_ms=timings.predicted_ms if timings else None,
            tokens_estimated=estimated))


async def serve_forever(router: Router, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, then write the ledger's last rows and stop.

    A client that disconnects cancels its handler, which closes the upstream stream.
    """
    await router.startup()
    server = FastServer(router.dispatch, max_body=router.settings.max_body_bytes,
                        error_body=server_error_body)
    # The process is the router's alone. What is loaded now lives as long as it: keep the
    # cyclic GC from walking it, and collect young objects less often (a request makes a
    # few hundred short-lived objects, nearly all freed by reference counting).
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await server.start(host, port, backlog=1024)
        except OSError as exc:
            raise HlctlError(f"cannot listen on {host}:{port}: {exc.strerror}",
                             hint="pick another --port or stop what listens there") from None
        await stop.wait()
    finally:
        await server.close()
        await router.cleanup()
