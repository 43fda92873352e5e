"""XID errors from the kernel log since the last check.

NVML's event API sees an XID only while a process is listening, so a periodic check reads the
driver's ``NVRM: Xid`` lines from the kernel log instead: ``journalctl -k -o json`` where journald
runs, else ``/dev/kmsg``. A cursor file in the state directory (``xid.cursor``, replaced
atomically) remembers how far the last check read.

First run, or a cursor from an earlier boot: read the whole current boot. A reboot clears every
XID condition, so an XID from before it is history; within the boot an old XID 79 still matters
(the GPU stays off the bus until a reboot), and an application-class XID is reported once and
then left behind by the cursor. ``journalctl -k`` keeps to the current boot by itself.

The parser is pure; the readers are thin edges that tests replace with fakes.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from hlctl.atomicfile import write_text_atomic
from hlctl.errors import HlctlError

log = logging.getLogger(__name__)

CURSOR_FILE = "xid.cursor"
JOURNALCTL_TIMEOUT_S = 30.0
MAX_KMSG_RECORD = 8192  # the kernel's record limit (1 KB text plus dictionary) fits easily


class XidSourceError(HlctlError):
    """The kernel log could not be read (no permission, journalctl failed)."""


@dataclass(frozen=True)
class KernelXid:
    pci_bus_id: str  # normalised, as normalize_pci_bus_id gives it: "0000:01:00.0"
    xid: int
    at: str  # ISO 8601, UTC


class XidSource(Protocol):
    """What read_snapshot needs: the XIDs since the last check."""

    def read(self) -> list[KernelXid]: ...


# ---------------------------------------------------------------------------------------------
# Pure parsing.

_PCI = re.compile(
    r"^(?:(?P<domain>[0-9a-f]{1,8}):)?(?P<bus>[0-9a-f]{1,2}):(?P<dev>[0-9a-f]{1,2})"
    r"(?:\.(?P<fn>[0-7]))?$")


def normalize_pci_bus_id(text: str | None) -> str | None:
    """Give one form to NVML's ``00000000:01:00.0`` and the kernel's ``0000:01:00``.

    The result is Linux's sysfs form, ``0000:01:00.0`` in lower case (what ``lspci -D`` prints
    and ``/sys/bus/pci/devices/`` is named by), so people can use it as it is. The driver logs
    XIDs without the function number; a GPU is function 0, so a missing one means ``.0``.
    """
    if text is None:
        return None
    match = _PCI.match(text.strip().lower())
    if match is None:
        return None
    domain = int(match["domain"] or "0", 16)
    return (f"{domain:04x}:{int(match['bus'], 16):02x}:{int(match['dev'], 16):02x}."
            f"{match['fn'] or '0'}")


# The formats in the wild (all after an optional "[  12.345678] " or "kernel: " prefix):
#   NVRM: Xid (PCI:0000:01:00): 79, pid=1234, name=python3, GPU has fallen off the bus.
#   NVRM: Xid (PCI:0000:cb:00): 13, pid='<unknown>', name=<unknown>, Graphics SM Warp ...
#   NVRM: Xid (PCI:0000:01:00): 62, 223b6a66 00002100 00000000 ...          (no pid, GSP era)
#   NVRM: Xid (PCI:0000:01:00): 79, GPU has fallen off the bus.             (no pid, older)
#   NVRM: Xid (0000:03:00): 13, 0001 00000000 ...                            (no "PCI:", old)
_XID = re.compile(
    r"NVRM: Xid \((?:PCI:)?(?P<pci>[0-9A-Fa-f]{1,8}:[0-9A-Fa-f]{1,2}:[0-9A-Fa-f]{1,2}"
    r"(?:\.[0-7])?)\): (?P<xid>\d{1,6})(?:,|$)")


def parse_xid_line(message: str, at: datetime) -> KernelXid | None:
    """One kernel log message -> the XID it reports, or None for any other line."""
    match = _XID.search(message)
    if match is None:
        return None
    pci = normalize_pci_bus_id(match["pci"])
    if pci is None:
        return None
    return KernelXid(pci_bus_id=pci, xid=int(match["xid"]), at=_iso(at))


def _iso(at: datetime) -> str:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="seconds")


def parse_journal_entries(lines: Iterable[str]) -> tuple[list[KernelXid], str | None]:
    """``journalctl -o json`` lines -> (XIDs, cursor of the last entry read, if any)."""
    events: list[KernelXid] = []
    cursor = None
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn line at the end of a rotating journal; the next run rereads it
        if not isinstance(entry, dict):
            continue
        cursor = entry.get("__CURSOR", cursor)
        message = entry.get("MESSAGE")
        if isinstance(message, list):
            # journald gives a message that is not valid UTF-8 as an array of byte values.
            message = bytes(b for b in message if isinstance(b, int) and 0 <= b < 256).decode(
                "utf-8", "replace")
        if not isinstance(message, str) or "NVRM: Xid" not in message:
            continue
        try:
            at = datetime.fromtimestamp(int(entry["__REALTIME_TIMESTAMP"]) / 1e6, UTC)
        except (KeyError, TypeError, ValueError):
            continue
        event = parse_xid_line(message, at)
        if event is not None:
            events.append(event)
    return events, cursor


def parse_kmsg_record(record: str) -> tuple[int, int, str] | None:
    """One /dev/kmsg record ``prio,seq,usec,flags;message`` -> (seq, usec since boot, message)."""
    head, sep, rest = record.partition(";")
    if not sep:
        return None
    fields = head.split(",")
    if len(fields) < 3:
        return None
    try:
        seq, usec = int(fields[1]), int(fields[2])
    except ValueError:
        return None
    # Continuation lines (" KEY=value") carry the device dictionary, not the message.
    return seq, usec, rest.split("\n", 1)[0]


def match_to_gpus(events: Iterable[KernelXid],
                  pci_by_index: dict[int, str | None]) -> tuple[dict[int, list[KernelXid]],
                                                               list[KernelXid]]:
    """Attach each XID to the GPU on its PCI address: (events by GPU index, unmatched).

    A GPU that fell off the bus often has no readable PCI address any more (NVML gives no
    handle for it). An XID for an unknown address then belongs to that GPU when exactly one
    GPU's address is unknown; with several, we cannot tell, and leave it unmatched.
    """
    by_pci = {normalize_pci_bus_id(pci): index for index, pci in pci_by_index.items()
              if pci is not None}
    unknown = [index for index, pci in pci_by_index.items() if pci is None]
    matched: dict[int, list[KernelXid]] = {}
    unmatched: list[KernelXid] = []
    for event in events:
        index = by_pci.get(event.pci_bus_id)
        if index is None and len(unknown) == 1:
            index = unknown[0]
        if index is None:
            unmatched.append(event)
        else:
            matched.setdefault(index, []).append(event)
    return matched, unmatched


# ---------------------------------------------------------------------------------------------
# The cursor file.

def load_cursor(path: Path) -> dict[str, Any] | None:
    """The stored cursor, or None when there is none or it is unreadable (then: whole boot)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable XID cursor %s (%s); reading the whole boot", path, exc)
        return None
    return data if isinstance(data, dict) else None


def save_cursor(path: Path, cursor: dict[str, Any]) -> None:
    """Write then rename in the same directory, so a crash never leaves half a cursor."""
    write_text_atomic(path, json.dumps(cursor))


# ---------------------------------------------------------------------------------------------
# The readers (edges).

JournalReader = Callable[[str | None], Iterator[str]]
KmsgReader = Callable[[], Iterator[str]]


def run_journalctl(after_cursor: str | None) -> Iterator[str]:
    """Kernel messages of the current boot as JSON lines, after the cursor when one is given."""
    args = ["journalctl", "-k", "-o", "json", "--no-pager", "--output-fields=MESSAGE"]
    if after_cursor:
        args.append(f"--after-cursor={after_cursor}")
    try:
        done = subprocess.run(args, capture_output=True, text=True, errors="replace",
                              timeout=JOURNALCTL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise XidSourceError(f"journalctl failed: {exc}") from None
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise XidSourceError(f"journalctl -k failed: {detail[0]}")
    return iter(done.stdout.splitlines())


def read_kmsg(path: str = "/dev/kmsg") -> Iterator[str]:
    """Every record still in the kernel's ring buffer, oldest first, without blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise XidSourceError(f"cannot read {path}: {exc.strerror} "
                             "(run as root, or set kernel.dmesg_restrict=0)") from None
    try:
        while True:
            try:
                record = os.read(fd, MAX_KMSG_RECORD)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    continue  # the ring buffer overwrote records under us; go on with the next
                raise XidSourceError(f"reading {path}: {exc.strerror}") from None
            if not record:
                return
            yield record.decode("utf-8", "replace")
    finally:
        os.close(fd)


def current_boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def journald_running() -> bool:
    """journalctl may be installed where journald does not run (containers): then use kmsg."""
    return shutil.which("journalctl") is not None and Path("/run/systemd/journal").is_dir()


class KernelLogXidSource:
    """XIDs from the kernel log since the stored cursor.

    ``consume=True`` (the periodic health check) moves the cursor on as it reads, so the next
    check sees only newer XIDs. ``consume=False`` (``hlctl gpu info``) peeks: it shows what the
    next check will see and leaves the cursor alone; ``commit()`` moves it on later if wanted.
    """

    def __init__(self, state_dir: Path | None, *, consume: bool = True,
                 backend: str | None = None, journal: JournalReader = run_journalctl,
                 kmsg: KmsgReader = read_kmsg, boot_id: Callable[[], str | None] = current_boot_id,
                 wall_clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.cursor_path = state_dir / CURSOR_FILE if state_dir is not None else None
        self.consume = consume
        self.backend = backend
        self._journal = journal
        self._kmsg = kmsg
        self._boot_id = boot_id
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._pending: dict[str, Any] | None = None

    def read(self) -> list[KernelXid]:
        backend = self.backend or ("journal" if journald_running() else "kmsg")
        stored = load_cursor(self.cursor_path) if self.cursor_path else None
        if backend == "journal":
            events, pending = self._read_journal(stored)
        else:
            events, pending = self._read_kmsg(stored)
        self._pending = pending
        if self.consume:
            try:
                self.commit()
            except OSError as exc:
                # The XIDs are real even if we cannot remember reading them: report them now
                # (and again next run) rather than hide them.
                log.warning("cannot store the XID cursor in %s: %s", self.cursor_path,
                            exc.strerror or exc)
        return events

    def commit(self) -> None:
        """Store the cursor of the last read, so the next check starts after it."""
        if self._pending is not None and self.cursor_path is not None:
            save_cursor(self.cursor_path, self._pending)

    def _read_journal(self, stored: dict[str, Any] | None
                      ) -> tuple[list[KernelXid], dict[str, Any] | None]:
        after = stored.get("cursor") if stored and stored.get("source") == "journal" else None
        after = after if isinstance(after, str) else None
        try:
            events, cursor = parse_journal_entries(self._journal(after))
        except XidSourceError:
            if after is None:
                raise
            # A cursor journalctl no longer accepts (journal vacuumed, machine-id changed):
            # reread the boot rather than go blind.
            log.warning("journal cursor rejected; reading the whole boot")
            events, cursor = parse_journal_entries(self._journal(None))
        if cursor is None:  # nothing new: keep the old position
            return events, stored if after else None
        return events, {"source": "journal", "cursor": cursor}

    def _read_kmsg(self, stored: dict[str, Any] | None
                   ) -> tuple[list[KernelXid], dict[str, Any] | None]:
        boot = self._boot_id()
        after = -1
        if stored and stored.get("source") == "kmsg" and stored.get("boot_id") == boot:
            seq = stored.get("seq")
            after = seq if isinstance(seq, int) else -1
        # kmsg stamps records with time since boot; turn that into wall time through "now".
        boot_wall = self._wall_clock() - self._monotonic()
        events: list[KernelXid] = []
        last = after
        for record in self._kmsg():
            parsed = parse_kmsg_record(record)
            if parsed is None:
                continue
            seq, usec, message = parsed
            if seq <= after:
                continue
            last = max(last, seq)
            at = datetime.fromtimestamp(boot_wall, UTC) + timedelta(microseconds=usec)
            event = parse_xid_line(message, at)
            if event is not None:
                events.append(event)
        if last < 0:
            return events, None
        return events, {"source": "kmsg", "boot_id": boot, "seq": last}


class StaticXidSource:
    """A fixed list of XIDs: for tests and for replaying a recorded log."""

    def __init__(self, events: Iterable[KernelXid]) -> None:
        self.events = list(events)

    def read(self) -> list[KernelXid]:
        return list(self.events)


class NoXidSource:
    """Read no kernel log (``health.xid.kernel_log: false``)."""

    def read(self) -> list[KernelXid]:
        return []
