"""The ledger under kill -9: a real process writing rows is killed; the file stays sound."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from hlctl.router.ledger import LEDGER_FILE

WRITER = """
import sys, time
from hlctl.router.ledger import Ledger, LedgerRow
ledger = Ledger(__import__("pathlib").Path(sys.argv[1]), flush_s=0.2)
ledger.open()
n = 0
while True:
    for _ in range(20):
        n += 1
        ledger.record(LedgerRow(time.time(), "k", "auto", "local", "r", "u", "m", n, n,
                                1.0, None, 200, 0.0, False, False))
    print(n, time.monotonic(), flush=True)
    time.sleep(0.01)
"""


def test_kill_9_loses_at_most_the_last_second(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    progress: list[tuple[int, float]] = []
    started = time.monotonic()
    while time.monotonic() - started < 2.5:
        line = proc.stdout.readline()
        count, at = line.split()
        progress.append((int(count), float(at)))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = progress[-1][1]
    # Everything recorded more than a second before the kill must be on disk.
    must_have = max(n for n, at in progress if at <= killed_at - 1.0)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    assert must_have <= rows <= progress[-1][0] + 20
    # Batches land whole: row ids are contiguous from 1.
    assert db.execute("SELECT MAX(id) FROM requests").fetchone()[0] == rows
