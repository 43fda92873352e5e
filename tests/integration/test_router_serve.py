"""`hlctl router serve` as a process: config file, env secrets, SIGTERM writes the ledger.

The upstream is the stub (tests/fixtures/router_stub.py, a wire-level simulator); the
router, its CLI and the openai client are real.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai

from hlctl.router.ledger import LEDGER_FILE
from tests.fixtures.router_stub import ServerThread, StubUpstream, free_port

# Until the root registers `router` lazily, add it the way main.py will.
ENTRY = ("from hlctl.cli.main import cli; from hlctl.cli.router import router; "
         "cli.add_command(router); cli()")


def test_serve_answers_and_flushes_the_ledger_on_sigterm(tmp_path: Path) -> None:
    stub = ServerThread(StubUpstream().app).start()
    port = free_port()
    config = tmp_path / "hlctl.yaml"
    config.write_text(f"""
state_dir: {tmp_path / 'state'}
router:
  port: {port}
  keys: [{{name: me, secret: {{env: MY_ROUTER_KEY}}}}]
  local: [{{name: stub, url: "{stub.url}"}}]
  ledger_flush_s: 1
""")
    env = {**os.environ, "MY_ROUTER_KEY": "k-123"}
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, "--config", str(config), "router",
                             "serve"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "router did not start"
                time.sleep(0.1)
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k-123",
                            max_retries=0)
        assert api.chat.completions.create(model="local", messages=[
            {"role": "user", "content": "hi"}]).choices[0].message.content == "stub answer"
        proc.send_signal(signal.SIGTERM)  # well within the 1 s flush interval
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        stub.stop()
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    db = sqlite3.connect(tmp_path / "state" / LEDGER_FILE)
    assert db.execute("SELECT key_name, route FROM requests").fetchall() == [("me", "local")]
