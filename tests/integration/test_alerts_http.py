"""Alerts over real HTTP: a stdlib server on 127.0.0.1 receives the webhooks, ntfy posts and
heartbeat pings that ``notify`` sends with httpx, across several health runs.

Nothing is simulated on our side of the wire: real sockets, real SQLite in a temp state dir,
reports from the real ``evaluate_health``. The receiver can answer 500, stall, or be down
(connection refused) to exercise the retry path.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from hlctl.config import Alerts, HealthThresholds, SecretRef, Webhook
from hlctl.gpu.alerts import DB_NAME, AlertStore, notify
from hlctl.gpu.health import HealthReport, evaluate_health
from hlctl.gpu.snapshot import GpuSnapshot, HostSnapshot, PcieLink

TOKEN = "tok-s3cret-4f1a"
TOPIC = "gpu-alerts-s3cret"
PING = "ping-uuid-s3cret"
SECRETS = (TOKEN, TOPIC, PING)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up (timeout test) is expected, not a failure


class Receiver:
    """A real HTTP server in a thread; ``status[path]`` and ``delay_s`` switch faults on."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[Request] = []
        self.status: dict[str, int] = {}
        self.delay_s = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                receiver.requests.append(Request("POST", self.path, dict(self.headers), body))
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                code = receiver.status.get(self.path.split("/")[1], 200)
                payload = b"OK" if code == 200 else b"boom"
                self.send_response(code)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = _Server(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def to(self, first: str) -> list[Request]:
        return [r for r in self.requests if r.path.split("/")[1] == first]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


def _alerts(base: str, timeout_s: float = 3) -> Alerts:
    return Alerts(
        webhooks=[
            Webhook(name="ops", url=f"{base}/hook", kind="json", token=SecretRef(env="HOOK_TOK")),
            Webhook(name="phone", url=f"{base}/{TOPIC}", kind="ntfy"),
        ],
        heartbeat_url=f"{base}/{PING}",
        timeout_s=timeout_s,
    )


GPU = GpuSnapshot(index=0, uuid="GPU-1", name="NVIDIA GeForce RTX 3090",
                  pci_bus_id="00000000:01:00.0", temperature_c=60, temperature_slowdown_c=91,
                  fan_speed_pct=45, power_draw_w=200, power_limit_w=350,
                  clocks_event_reasons=[], pcie=PcieLink(4, 4, 16, 16, 0))


def _report(temp: float) -> HealthReport:
    """A 3090 at ``temp`` C: OK below 86, WARNING from 86, CRITICAL from its slowdown at 91."""
    snapshot = HostSnapshot(host="gpu01", taken_at="2026-11-29T02:00:00+00:00",
                            cuda_driver_version=12010,
                            gpus=[replace(GPU, temperature_c=temp)])
    return evaluate_health(snapshot, HealthThresholds())


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


def _run(temp: float, alerts: Alerts, state_dir: Path, clock: Clock):  # type: ignore[no-untyped-def]
    report = _report(temp)
    return notify(report, alerts, state_dir, exit_code=report.state.nagios, clock=clock,
                  environ={"HOOK_TOK": TOKEN})


def _no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def test_one_alert_per_state_change_and_a_heartbeat_every_run(receiver: Receiver,
                                                              tmp_path: Path) -> None:
    alerts, clock = _alerts(receiver.base), Clock()
    temps = [60, 60, 87, 87, 87, 95, 95, 60, 60]
    results = [_run(t, alerts, tmp_path, clock) for t in temps]

    hooks = [r.json() for r in receiver.to("hook")]
    assert [(h["key"], h["old_state"], h["new_state"]) for h in hooks] == [
        ("gpu0.temperature", "ok", "warning"),
        ("gpu0.temperature", "warning", "critical"),
        ("gpu0.temperature", "critical", "ok"),
    ]
    assert hooks[0]["host"] == "gpu01" and hooks[0]["gpu"] == 0
    assert hooks[0]["value"] == 87 and hooks[0]["threshold"] == 86
    assert "within 5 C" in hooks[0]["message"] and hooks[0]["action"]
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in receiver.to("hook"))
    assert all(r.headers["Content-Type"] == "application/json" for r in receiver.to("hook"))

    pushes = receiver.to(TOPIC)
    assert [(p.headers["Priority"], p.headers["Title"]) for p in pushes] == [
        ("4", "gpu01: GPU 0 temperature WARNING"),
        ("5", "gpu01: GPU 0 temperature CRITICAL"),
        ("2", "gpu01: GPU 0 temperature OK"),
    ]
    assert "Authorization" not in pushes[0].headers  # no token configured for ntfy
    assert pushes[1].body.decode().startswith("GPU 0 at 95 C")

    pings = receiver.to(PING)
    assert [p.path for p in pings] == [f"/{PING}/{c}" for c in (0, 0, 1, 1, 1, 2, 2, 0, 0)]
    assert pings[5].body.decode().startswith("gpu01: CRITICAL (exit 2)")
    assert all(r.heartbeat is not None and r.heartbeat.ok for r in results)
    assert [len(r.sent) for r in results] == [0, 0, 2, 0, 0, 2, 0, 2, 0]
    assert all(r.warnings == [] and r.pending == 0 for r in results)


def test_failing_webhook_is_retried_next_run_and_reported_without_secrets(
        receiver: Receiver, tmp_path: Path) -> None:
    alerts, clock = _alerts(receiver.base), Clock()
    _run(60, alerts, tmp_path, clock)

    receiver.status["hook"] = 500
    failed = _run(87, alerts, tmp_path, clock)
    assert [(f.webhook, f.key) for f in failed.failed] == [("ops", "gpu0.temperature")]
    assert "HTTP 500" in failed.failed[0].reason and failed.pending == 1
    assert [s.webhook for s in failed.sent] == ["phone"]  # one receiver down spares the others
    assert failed.heartbeat is not None and failed.heartbeat.ok
    assert any("not delivered" in w for w in failed.warnings)
    _no_secrets(*failed.warnings, json.dumps(failed.to_dict()))

    still = _run(87, alerts, tmp_path, clock)  # same state: no new alert, the retry fails again
    assert still.transitions == [] and still.pending == 1
    assert len(receiver.to("hook")) == 2 and len(receiver.to(TOPIC)) == 1

    receiver.status.clear()
    healed = _run(87, alerts, tmp_path, clock)
    assert [(s.webhook, s.key, s.new_state) for s in healed.sent] == [
        ("ops", "gpu0.temperature", "warning")]
    assert healed.pending == 0 and healed.failed == [] and healed.warnings == []
    delivered = receiver.to("hook")[-1].json()
    assert (delivered["old_state"], delivered["new_state"]) == ("ok", "warning")
    assert len(receiver.to(TOPIC)) == 1  # ntfy got it once, not again on the retry

    _run(87, alerts, tmp_path, clock)
    assert len(receiver.to("hook")) == 3  # nothing left to resend


def test_receiver_down_queues_in_order_until_it_is_back(tmp_path: Path) -> None:
    server = Receiver()
    port = server.port
    alerts, clock = _alerts(server.base), Clock()
    _run(60, alerts, tmp_path, clock)
    server.stop()  # connection refused from here on

    down1 = _run(87, alerts, tmp_path, clock)
    down2 = _run(95, alerts, tmp_path, clock)
    for result in (down1, down2):
        assert {f.webhook for f in result.failed} == {"ops", "phone"}
        assert all("connection failed" in f.reason for f in result.failed)
        assert result.heartbeat is not None and not result.heartbeat.ok
        _no_secrets(*result.warnings, json.dumps(result.to_dict()))
    assert down2.pending == 4  # two changes x two webhooks

    server = Receiver(port)
    try:
        back = _run(95, alerts, tmp_path, clock)
        assert back.pending == 0 and back.failed == []
        got = [(r.json()["old_state"], r.json()["new_state"]) for r in server.to("hook")]
        assert got == [("ok", "warning"), ("warning", "critical")]  # in the order they happened
        assert [p.headers["Priority"] for p in server.to(TOPIC)] == ["4", "5"]
        assert [p.path for p in server.to(PING)] == [f"/{PING}/2"]
    finally:
        server.stop()


def test_slow_receiver_times_out_within_the_configured_timeout(receiver: Receiver,
                                                               tmp_path: Path) -> None:
    alerts, clock = _alerts(receiver.base, timeout_s=0.5), Clock()
    receiver.delay_s = 3
    started = time.monotonic()
    result = _run(95, alerts, tmp_path, clock)
    elapsed = time.monotonic() - started
    # three requests (two webhooks and the heartbeat), each cut at the timeout
    assert elapsed < 3 * 0.5 + 1.5
    assert {f.webhook for f in result.failed} == {"ops", "phone"}
    assert all("timed out after 0.5 s" in f.reason for f in result.failed)
    assert result.heartbeat is not None and "timed out" in (result.heartbeat.reason or "")
    assert result.pending == 2


def test_missing_token_env_is_reported_and_kept_for_later(receiver: Receiver,
                                                          tmp_path: Path) -> None:
    alerts, clock = _alerts(receiver.base), Clock()
    report = _report(95)
    result = notify(report, alerts, tmp_path, exit_code=2, clock=clock, environ={})
    assert any("HOOK_TOK" in f.reason for f in result.failed)
    assert result.pending == 1 and receiver.to("hook") == []
    assert [s.webhook for s in result.sent] == ["phone"]


def test_stale_deliveries_are_dropped_after_a_day(tmp_path: Path) -> None:
    port = _closed_port()
    alerts = _alerts(f"http://127.0.0.1:{port}", timeout_s=0.5)
    alerts = alerts.model_copy(update={"heartbeat_url": None})
    clock = Clock()
    _run(95, alerts, tmp_path, clock)
    clock.now += timedelta(hours=25)
    late = _run(95, alerts, tmp_path, clock)
    assert late.pending == 0
    assert all("dropped" in f.reason for f in late.failed) and len(late.failed) == 2
    store = AlertStore(tmp_path / DB_NAME)
    try:
        assert store.pending() == []
    finally:
        store.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_exit_code_is_the_checks_even_when_every_alert_fails(receiver: Receiver,
                                                                 tmp_path: Path) -> None:
    """The whole path: ``hlctl health --from --notify`` with the receivers answering 500."""
    hlctl = Path(sys.executable).parent / "hlctl"
    if not hlctl.exists():
        pytest.skip(f"console script {hlctl} is not installed (pip install -e .)")
    snapshot = Path(__file__).parents[1] / "fixtures" / "snapshots" / "thermal_slowdown.json"
    config = tmp_path / "hlctl.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "alerts": {"webhooks": [
            {"name": "ops", "url": f"{receiver.base}/hook", "kind": "json",
             "token": {"env": "HOOK_TOK"}},
            {"name": "phone", "url": f"{receiver.base}/{TOPIC}", "kind": "ntfy"}],
            "heartbeat_url": f"{receiver.base}/{PING}", "timeout_s": 2},
    }))
    for path in ("hook", TOPIC, PING):
        receiver.status[path] = 500
    env = {**os.environ, "HOOK_TOK": TOKEN}
    env.pop("HLCTL_CONFIG", None)
    run = subprocess.run([str(hlctl), "--config", str(config), "health", "--from", str(snapshot),
                          "--notify"], capture_output=True, text=True, env=env, timeout=60,
                         check=False)
    assert run.returncode == 2, run.stderr  # CRITICAL, as without --notify
    assert "not delivered" in run.stderr and "heartbeat ping failed" in run.stderr
    assert "Traceback" not in run.stderr
    _no_secrets(run.stdout, run.stderr)
    assert [r.path for r in receiver.to(PING)] == [f"/{PING}/2"]
    assert receiver.to("hook")[0].headers["Authorization"] == f"Bearer {TOKEN}"
