"""The request ledger: one SQLite row per request, written in batches by a background thread.

WAL mode with ``synchronous=NORMAL``: a committed batch survives a killed process, and a
crash mid-batch rolls that batch back instead of corrupting the file. The router hands rows
to the writer through a queue and never waits on the disk; a ``kill -9`` loses at most the
rows of the last flush interval.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from hlctl.errors import HlctlError
from hlctl.router.policy import Budget

LEDGER_FILE = "router-ledger.sqlite3"
SCHEMA_VERSION = 1


class LedgerRow(NamedTuple):
    """One request. A named tuple: cheap to build per request, and already a SQL row."""

    ts: float  # unix seconds
    key_name: str
    alias: str
    route: str  # local | cloud | none (answered by the router itself)
    reason: str
    upstream: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    ttft_ms: float | None
    status: int
    cost_usd: float
    stream: bool
    private: bool
    prompt_ms: float | None = None  # llama-server timings, stored beside usage
    predicted_ms: float | None = None
    tokens_estimated: bool = False  # counted by the router because the stream was cut


COLUMNS = list(LedgerRow._fields)
_SQL_TYPES = {"ts": "REAL NOT NULL", "prompt_tokens": "INTEGER", "completion_tokens": "INTEGER",
              "status": "INTEGER", "stream": "INTEGER", "private": "INTEGER",
              "tokens_estimated": "INTEGER"}
_CREATE = (
    "CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY, "
    + ", ".join(f"{c} {_SQL_TYPES.get(c, 'REAL' if c.endswith(('_ms', '_usd')) else 'TEXT')}"
                for c in COLUMNS)
    + ")"
)
_INSERT = (f"INSERT INTO requests ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join('?' for _ in COLUMNS)})")


class LedgerError(HlctlError):
    """The ledger file cannot be opened or read."""


def connect(path: Path) -> sqlite3.Connection:
    """Open (and create) the ledger with WAL and the schema in place."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=10, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(_CREATE)
        db.execute("CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts)")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.commit()
    except (OSError, sqlite3.Error) as exc:
        raise LedgerError(f"ledger {path}: {exc}",
                          hint="check that the state directory is writable") from None
    return db


def month_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(month: datetime) -> datetime:
    return month.replace(year=month.year + month.month // 12, month=month.month % 12 + 1)


def cloud_spent_since(db: sqlite3.Connection, since: datetime) -> float:
    row = db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM requests "
                     "WHERE route = 'cloud' AND ts >= ?", (since.timestamp(),)).fetchone()
    return float(row[0])


class Ledger:
    """Queue rows from the event loop; a thread writes them every ``flush_s``."""

    def __init__(self, path: Path, *, flush_s: float = 0.5,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.path = path
        self.flush_s = flush_s
        self.clock = clock
        self._queue: queue.SimpleQueue[LedgerRow | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._month = month_start(clock())
        self._next_month = next_month_start(self._month)
        self._cloud_spent = 0.0
        self.written = 0
        self.write_errors = 0

    def open(self) -> None:
        db = connect(self.path)
        try:
            self._cloud_spent = cloud_spent_since(db, self._month)
        finally:
            db.close()
        self._thread = threading.Thread(target=self._run, name="hlctl-ledger", daemon=True)
        self._thread.start()

    def record(self, row: LedgerRow) -> None:
        if row.route == "cloud":
            month = month_start(datetime.fromtimestamp(row.ts, UTC))
            if month > self._month:
                self._month, self._cloud_spent = month, 0.0
            if month == self._month:
                self._cloud_spent += row.cost_usd
        self._queue.put(row)

    def budget(self, limit_usd: float | None) -> Budget:
        now = self.clock()
        if now >= self._next_month:  # per request: one compare, not a calendar sum
            current = month_start(now)
            if current > self._month:
                self._month, self._cloud_spent = current, 0.0
            self._next_month = next_month_start(self._month)
        return Budget(limit_usd, self._cloud_spent)

    def close(self) -> None:
        """Write what is queued and stop the writer."""
        if self._thread is None:
            return
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._thread = None

    def _drain(self) -> list[LedgerRow]:
        rows = []
        while True:
            try:
                row = self._queue.get_nowait()
            except queue.Empty:
                return rows
            if row is not None:
                rows.append(row)

    def _write(self, db: sqlite3.Connection, rows: Iterable[LedgerRow]) -> None:
        batch = list(rows)
        if not batch:
            return
        try:
            with db:  # one transaction per batch: all of it lands, or none of it
                db.executemany(_INSERT, batch)
            self.written += len(batch)
        except sqlite3.Error:
            # A full disk or a locked file must not take the router down; the count shows
            # in /metrics so it is seen.
            self.write_errors += len(batch)

    def _run(self) -> None:
        db = connect(self.path)
        try:
            while not self._stop.wait(self.flush_s):
                self._write(db, self._drain())
            self._write(db, self._drain())
        finally:
            db.close()
