"""Alert on health-check state changes, not on every run; ping a heartbeat on every run.

A check every minute must not page every minute. ``state_changes`` (pure) compares each check
with the state stored from the previous run: OK -> WARNING alerts, CRITICAL -> OK alerts,
WARNING -> WARNING does not. The first run that sees a check alerts only when it is not OK;
an n/a check never alerts and leaves its stored state alone; a check missing from a run is
forgotten, so it counts as new when it returns (see ``next_states``).

``alerts.db`` (SQLite, WAL, in the state directory) keeps each check's last state and an
outbox of deliveries. The new states and the outbox rows are written in one transaction
before anything is sent, so a webhook that is down (refused, timed out, HTTP 5xx) loses
nothing: its rows stay queued and are retried in order on the next run, until delivered or
older than ``MAX_PENDING_AGE``. Delivery is at-least-once. Failures come back in
``NotifyResult`` for the CLI to print as warnings; they never change the check's exit code.

Generic JSON webhook (``kind: json``): one ``POST`` per state change, ``Content-Type:
application/json``, body (schema ``hlctl.alert/1``)::

    {"schema": "hlctl.alert/1", "host": "gpu01", "key": "gpu0.temperature",
     "check": "temperature", "gpu": 0,          # null for host-wide checks
     "old_state": "ok",                          # null the first time hlctl sees the check
     "new_state": "warning",                     # ok | warning | critical | unknown
     "message": "GPU 0 at 86 C, within 5 C of its slowdown threshold 90 C",
     "action": "check airflow and fan curves before it throttles",   # "" when none
     "value": 86, "threshold": 85,               # number, text or null
     "time": "2026-11-29T02:00:00+00:00",        # when hlctl saw the change
     "summary": "gpu01: GPU 0 temperature OK -> WARNING"}

ntfy (``kind: ntfy``, the URL is the topic URL): ``POST`` of a plain-text body (message, what
to do, previous state) with ``Title``, ``Priority`` (critical 5, warning and unknown 4,
back to ok 2) and ``Tags`` headers.

Both send ``Authorization: Bearer <token>`` when the webhook has a ``token`` secret; secrets
and URLs (whose paths are often secrets too: ntfy topics, Slack hooks, ping UUIDs) never
appear in a message: a failure names the webhook and the URL's host only.

Heartbeat (``heartbeat_url``, healthchecks.io style): every run ``POST {heartbeat_url}/{exit}``
where ``exit`` is the Nagios exit code of the run, with the summary as the body.
healthchecks.io treats ``/0`` as success and ``/1``..``/255`` as failure
(https://healthchecks.io/docs/signaling_failures/), so it reports both a check that stops
running (no ping) and a WARNING or worse. httpx is imported only here, lazily, with explicit
timeouts (``alerts.timeout_s`` per connect, read and write).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from hlctl.errors import HlctlError
from hlctl.gpu.health import CheckResult, HealthReport, State

if TYPE_CHECKING:
    import httpx

    from hlctl.config import Alerts, Webhook

SCHEMA = "hlctl.alert/1"
DB_NAME = "alerts.db"
# A receiver down for longer than this is not coming back for these alerts; stop retrying.
MAX_PENDING_AGE = timedelta(hours=24)

NTFY_PRIORITY = {State.CRITICAL: 5, State.UNKNOWN: 4, State.WARNING: 4, State.OK: 2}
NTFY_TAGS = {State.CRITICAL: "rotating_light", State.UNKNOWN: "grey_question",
             State.WARNING: "warning", State.OK: "white_check_mark"}


@dataclass(frozen=True)
class Transition:
    """One check changing state between two runs (``old`` None: first time seen)."""

    key: str
    gpu: int | None
    check: str
    old: State | None
    new: State
    message: str
    action: str
    value: float | str | None
    threshold: float | str | None


def _transition(check: CheckResult, old: State | None) -> Transition:
    return Transition(key=check.key, gpu=check.gpu, check=check.check, old=old, new=check.state,
                      message=check.message, action=check.action, value=check.value,
                      threshold=check.threshold)


def state_changes(previous: Mapping[str, State], report: HealthReport) -> list[Transition]:
    """The checks whose state differs from the previous run's; the alerting rule in one place."""
    changes = []
    for check in report.checks:
        if check.state is State.NA:
            continue
        old = previous.get(check.key)
        if old is None:
            if check.state is not State.OK:
                changes.append(_transition(check, None))
        elif old is not check.state:
            changes.append(_transition(check, old))
    return changes


def next_states(previous: Mapping[str, State], report: HealthReport) -> dict[str, State]:
    """States to remember after this run.

    An n/a check keeps its state (a sensor that blinks out and back does not page twice). A
    check absent from the report is forgotten: health.py emits some checks only when they
    fail (``host.nvml``) and drops a lost GPU's readings, so when such a check comes back
    failing it must alert again as on its first run, not stay silent behind a stale state.
    """
    states = {c.key: previous[c.key] for c in report.checks
              if c.state is State.NA and c.key in previous}
    states.update({c.key: c.state for c in report.checks if c.state is not State.NA})
    return states


def alert_payload(t: Transition, *, host: str, at: datetime) -> dict[str, Any]:
    """The generic JSON webhook body (documented in the module docstring)."""
    old = t.old.value.upper() if t.old else "new"
    return {
        "schema": SCHEMA, "host": host, "key": t.key, "check": t.check, "gpu": t.gpu,
        "old_state": t.old.value if t.old else None, "new_state": t.new.value,
        "message": t.message, "action": t.action, "value": t.value, "threshold": t.threshold,
        "time": at.isoformat(timespec="seconds"),
        "summary": f"{host}: {_subject_of(t.gpu, t.check)} {old} -> {t.new.value.upper()}",
    }


def _subject_of(gpu: int | None, check: str) -> str:
    return f"GPU {gpu} {check}" if gpu is not None else check


def ntfy_message(payload: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """(body, headers) for ntfy from a stored JSON payload; headers kept to ASCII for HTTP."""
    new = State(payload["new_state"])
    old = payload.get("old_state")
    lines = [str(payload["message"])]
    if payload.get("action"):
        lines.append(f"What to do: {payload['action']}")
    lines.append(f"(was {old.upper()})" if old else "(first check)")
    title = (f"{payload['host']}: {_subject_of(payload.get('gpu'), payload['check'])} "
             f"{new.value.upper()}")
    headers = {
        "Title": title.encode("ascii", "replace").decode("ascii"),
        "Priority": str(NTFY_PRIORITY.get(new, 3)),
        "Tags": ",".join([NTFY_TAGS.get(new, "bell"), "hlctl"]),
        "Content-Type": "text/plain; charset=utf-8",
    }
    return "\n".join(lines), headers


# ---------------------------------------------------------------------------------------------
# The store.

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS check_state (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    since TEXT NOT NULL,        -- when it entered this state
    seen_at TEXT NOT NULL       -- last run that evaluated it
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook TEXT NOT NULL,      -- Webhook.name in the lab config
    key TEXT NOT NULL,
    payload TEXT NOT NULL,      -- the hlctl.alert/1 JSON document
    created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
"""


@dataclass(frozen=True)
class Pending:
    id: int
    webhook: str
    key: str
    payload: dict[str, Any]
    created_at: datetime
    attempts: int


class AlertStore:
    """Last state per check and undelivered alerts, in ``alerts.db``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=10, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA_SQL)

    def close(self) -> None:
        self._db.close()

    def states(self) -> dict[str, State]:
        known = {s.value: s for s in State}
        rows = self._db.execute("SELECT key, state FROM check_state").fetchall()
        return {key: known[state] for key, state in rows if state in known}

    def apply(self, report: HealthReport, webhooks: list[str], at: datetime) -> list[Transition]:
        """Diff the report against the stored states, store the new ones, queue the alerts.

        One IMMEDIATE transaction, so two runs at once cannot both alert the same change.
        """
        stamp = at.isoformat(timespec="seconds")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            previous = self.states()
            changes = state_changes(previous, report)
            changed = {t.key for t in changes}
            for check in report.checks:
                if check.state is State.NA:
                    continue
                if check.key in changed or check.key not in previous:
                    self._db.execute(
                        "INSERT INTO check_state (key, state, since, seen_at) VALUES (?,?,?,?) "
                        "ON CONFLICT(key) DO UPDATE SET state=excluded.state, "
                        "since=excluded.since, seen_at=excluded.seen_at",
                        (check.key, check.state.value, stamp, stamp))
                else:
                    self._db.execute("UPDATE check_state SET seen_at=? WHERE key=?",
                                     (stamp, check.key))
            present = {c.key for c in report.checks}
            self._db.executemany("DELETE FROM check_state WHERE key=?",
                                 [(k,) for k in previous if k not in present])
            for t in changes:
                body = json.dumps(alert_payload(t, host=report.host, at=at))
                for name in webhooks:
                    self._db.execute(
                        "INSERT INTO outbox (webhook, key, payload, created_at) VALUES (?,?,?,?)",
                        (name, t.key, body, stamp))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return changes

    def pending(self) -> list[Pending]:
        rows = self._db.execute(
            "SELECT id, webhook, key, payload, created_at, attempts FROM outbox ORDER BY id"
        ).fetchall()
        return [Pending(i, w, k, json.loads(p), datetime.fromisoformat(c), a)
                for i, w, k, p, c, a in rows]

    def delivered(self, item_id: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE id=?", (item_id,))

    def failed(self, item_id: int, reason: str) -> None:
        self._db.execute("UPDATE outbox SET attempts=attempts+1, last_error=? WHERE id=?",
                         (reason, item_id))


# ---------------------------------------------------------------------------------------------
# Delivery.

@dataclass(frozen=True)
class Delivery:
    webhook: str
    key: str
    new_state: str


@dataclass(frozen=True)
class DeliveryError:
    webhook: str
    key: str | None
    reason: str


@dataclass(frozen=True)
class Heartbeat:
    ok: bool
    exit_code: int
    reason: str | None = None


@dataclass
class NotifyResult:
    """What ``--notify`` did; ``warnings`` are the lines for the CLI's stderr."""

    transitions: list[Transition] = field(default_factory=list)
    sent: list[Delivery] = field(default_factory=list)
    failed: list[DeliveryError] = field(default_factory=list)
    pending: int = 0  # deliveries still queued for the next run
    heartbeat: Heartbeat | None = None  # None when no heartbeat_url is configured
    errors: list[str] = field(default_factory=list)  # the store could not be used

    @property
    def warnings(self) -> list[str]:
        lines = [f"alerts: {e}" for e in self.errors]
        lines += [f"alert to webhook {f.webhook!r} not delivered: {f.reason}"
                  for f in self.failed]
        if self.failed and self.pending:
            lines.append(f"{self.pending} alert deliveries queued; retried on the next run")
        if self.heartbeat is not None and not self.heartbeat.ok:
            lines.append(f"heartbeat ping failed: {self.heartbeat.reason}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "transitions": [{"key": t.key, "old_state": t.old.value if t.old else None,
                             "new_state": t.new.value} for t in self.transitions],
            "sent": [vars(d) for d in self.sent],
            "failed": [vars(f) for f in self.failed],
            "pending": self.pending,
            "heartbeat": vars(self.heartbeat) if self.heartbeat else None,
            "errors": list(self.errors),
        }


def _where(url: str) -> str:
    return urlsplit(url).hostname or "?"


def _reason(exc: Exception, timeout: float) -> str:
    """Why a request failed, built by us: httpx's own texts can carry the URL."""
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, httpx.ConnectError):
        return "connection failed (refused or unreachable)"
    if isinstance(exc, httpx.HTTPError):
        return f"request failed ({type(exc).__name__})"
    return type(exc).__name__


def _status_reason(response: httpx.Response) -> str | None:
    if 200 <= response.status_code < 300:
        return None
    if 300 <= response.status_code < 400:
        return f"HTTP {response.status_code} (redirects are not followed; fix the URL)"
    return f"HTTP {response.status_code}"


def _send(client: httpx.Client, hook: Webhook, payload: dict[str, Any], token: str | None,
          timeout: float) -> str | None:
    """POST one alert; None when delivered, else the reason."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        if hook.kind == "ntfy":
            body, ntfy_headers = ntfy_message(payload)
            response = client.post(hook.url, content=body.encode("utf-8"),
                                   headers={**headers, **ntfy_headers})
        else:
            response = client.post(hook.url, json=payload, headers=headers)
    except Exception as exc:  # network failures of every kind are retried next run
        return _reason(exc, timeout)
    return _status_reason(response)


def _deliver(store: AlertStore, alerts: Alerts, client: httpx.Client,
             environ: Mapping[str, str] | None, now: datetime, result: NotifyResult) -> None:
    hooks = {h.name: h for h in alerts.webhooks}
    tokens: dict[str, str | None] = {}
    broken: set[str] = set()  # stop at a webhook's first failure: keeps order, bounds the time
    for item in store.pending():
        hook = hooks.get(item.webhook)
        if hook is None:  # removed from the config: nobody to deliver to
            store.delivered(item.id)
            continue
        where = f"{hook.name} ({_where(hook.url)})"
        if now - item.created_at > MAX_PENDING_AGE:
            store.delivered(item.id)
            result.failed.append(DeliveryError(hook.name, item.key, (
                f"{where}: dropped {item.key} after {item.attempts} attempts over "
                f"{MAX_PENDING_AGE.total_seconds() / 3600:g} h")))
            continue
        if hook.name in broken:
            continue
        if hook.name not in tokens:
            try:
                tokens[hook.name] = hook.token.reveal(environ) if hook.token else None
            except HlctlError as exc:
                tokens[hook.name] = None
                broken.add(hook.name)
                store.failed(item.id, exc.message)
                result.failed.append(DeliveryError(hook.name, item.key, f"{where}: {exc}"))
                continue
        reason = _send(client, hook, item.payload, tokens[hook.name], alerts.timeout_s)
        if reason is None:
            store.delivered(item.id)
            result.sent.append(Delivery(hook.name, item.key, item.payload["new_state"]))
        else:
            broken.add(hook.name)
            store.failed(item.id, reason)
            result.failed.append(DeliveryError(hook.name, item.key, f"{where}: {reason}"))
    result.pending = len(store.pending())


def heartbeat_url(base: str, exit_code: int) -> str:
    """healthchecks.io's exit-status ping: ``{base}/{exit_code}``."""
    return f"{base.rstrip('/')}/{exit_code}"


def _ping(client: httpx.Client, base: str, exit_code: int, summary: str,
          timeout: float) -> Heartbeat:
    where = _where(base)
    try:
        response = client.post(heartbeat_url(base, exit_code), content=summary.encode("utf-8"),
                               headers={"Content-Type": "text/plain; charset=utf-8"})
    except Exception as exc:
        return Heartbeat(False, exit_code, f"{where}: {_reason(exc, timeout)}")
    reason = _status_reason(response)
    return Heartbeat(reason is None, exit_code, f"{where}: {reason}" if reason else None)


def _summary(report: HealthReport, exit_code: int) -> str:
    findings = report.findings
    head = f"{report.host}: {report.state.value.upper()} (exit {exit_code})"
    return "\n".join([head, *(f"- {f.message}" for f in findings)])


def notify(report: HealthReport, alerts_config: Alerts, state_dir: Path, *, exit_code: int,
           clock: Callable[[], datetime], environ: Mapping[str, str] | None = None,
           ) -> NotifyResult:
    """Record state changes, send their alerts and retries, ping the heartbeat; never raise
    for network or store trouble (it is in the result), so the exit code stays the check's."""
    import httpx

    now = clock()
    result = NotifyResult()
    store: AlertStore | None = None
    try:
        store = AlertStore(Path(state_dir) / DB_NAME)
        result.transitions = store.apply(report, [h.name for h in alerts_config.webhooks], now)
    except (sqlite3.Error, OSError) as exc:
        result.errors.append(f"state store {Path(state_dir) / DB_NAME} unusable: {exc}")
        if store is not None:
            store.close()
            store = None

    timeout = alerts_config.timeout_s
    with httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False,
                      headers={"User-Agent": "hlctl-health"}) as client:
        if store is not None:
            try:
                _deliver(store, alerts_config, client, environ, now, result)
            except (sqlite3.Error, OSError) as exc:
                result.errors.append(f"state store {store.path} unusable: {exc}")
            finally:
                store.close()
        if alerts_config.heartbeat_url:
            result.heartbeat = _ping(client, alerts_config.heartbeat_url, exit_code,
                                     _summary(report, exit_code), timeout)
    return result
