"""XIDs from the kernel log: the parser on real line formats, the cursor, PCI matching.

journald does not run here, so the journal is a fake that honours --after-cursor the way
journalctl does (entries strictly after the cursor, whole boot without one). /dev/kmsg is real
on this machine and one test reads it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hlctl.gpu.xid import (
    CURSOR_FILE,
    KernelLogXidSource,
    KernelXid,
    XidSourceError,
    load_cursor,
    match_to_gpus,
    normalize_pci_bus_id,
    parse_journal_entries,
    parse_kmsg_record,
    parse_xid_line,
    read_kmsg,
    save_cursor,
)
from tests.fixtures.nvml_sim import journal_json

AT = datetime(2026, 11, 29, 1, 2, 3, tzinfo=UTC)


@pytest.mark.parametrize(("line", "pci", "xid"), [
    # current drivers, with pid and name
    ("NVRM: Xid (PCI:0000:01:00): 79, pid=2231, name=llama-server, GPU has fallen off the bus.",
     "0000:01:00.0", 79),
    # pid unknown, quoted
    ("NVRM: Xid (PCI:0000:cb:00): 13, pid='<unknown>', name=<unknown>, Graphics SM Warp "
     "Exception on (GPC 7, TPC 7, SM 0): Illegal Instruction Parameter", "0000:cb:00.0", 13),
    # GSP-era lines without pid
    ("NVRM: Xid (PCI:0000:01:00): 62, 223b6a66 00002100 00000000 20662342", "0000:01:00.0", 62),
    ("NVRM: Xid (PCI:0000:c1:00): 119, pid=991, name=python3, Timeout after 6s of waiting for "
     "RPC response from GPU1 GSP!", "0000:c1:00.0", 119),
    # older drivers: no "PCI:" and no pid
    ("NVRM: Xid (0000:03:00): 13, 0001 00000000 0000c5c0 00001b0c", "0000:03:00.0", 13),
    ("NVRM: Xid (PCI:0000:01:00): 79, GPU has fallen off the bus.", "0000:01:00.0", 79),
    # with dmesg and syslog prefixes, upper-case hex
    ("[ 4213.118244] NVRM: Xid (PCI:0000:3B:00): 48, pid=7, name=x, An uncorrectable double "
     "bit error", "0000:3b:00.0", 48),
    ("Nov 29 01:02:03 gpu01 kernel: NVRM: Xid (PCI:0000:02:00): 31, pid=12, name=python, "
     "Ch 00000010, intr 00000000. MMU Fault", "0000:02:00.0", 31),
    # a non-zero PCI domain (VMD, multi-root)
    ("NVRM: Xid (PCI:10000:e1:00): 74, pid=1, name=a, NVLink: fatal error", "10000:e1:00.0", 74),
])
def test_parse_real_formats(line: str, pci: str, xid: int) -> None:
    event = parse_xid_line(line, AT)
    assert event == KernelXid(pci_bus_id=pci, xid=xid, at="2026-11-29T01:02:03+00:00")


@pytest.mark.parametrize("line", [
    "NVRM: GPU at PCI:0000:01:00: GPU-5f3c2a8e-1b4d-4c7e-9a2f-0d6e8b1c3a70",
    "NVRM: GPU 0000:01:00.0: GPU has fallen off the bus.",
    "NVRM: loading NVIDIA UNIX x86_64 Kernel Module  530.30.02",
    "NVRM: Xid (PCI:0000:01:00): abc, not a number",
    "nvidia-modeset: WARNING: GPU:0: Lost display notification",
    "",
])
def test_other_lines_are_not_xids(line: str) -> None:
    assert parse_xid_line(line, AT) is None


@pytest.mark.parametrize(("raw", "normal"), [
    ("00000000:01:00.0", "0000:01:00.0"),  # NVML's busId
    ("0000:01:00.0", "0000:01:00.0"),      # NVML's busIdLegacy, sysfs, lspci -D
    ("0000:01:00", "0000:01:00.0"),        # the kernel's Xid form
    ("01:00.0", "0000:01:00.0"),           # lspci without -D
    ("00000000:3B:00.0", "0000:3b:00.0"),
    ("00010000:E1:00.0", "10000:e1:00.0"),
    ("not a pci id", None),
    (None, None),
])
def test_normalize_pci_bus_id(raw: str | None, normal: str | None) -> None:
    assert normalize_pci_bus_id(raw) == normal


def test_journal_entries_with_byte_array_message_and_torn_line() -> None:
    lines = journal_json(["eth0: link up",
                          "NVRM: Xid (PCI:0000:01:00): 79, pid=1, name=a, GPU has fallen off"],
                         start_usec=1_764_378_000_000_000)
    entry = json.loads(lines[1])
    entry["MESSAGE"] = [*entry["MESSAGE"].encode(), 0xFF]  # not UTF-8: journald's array
    lines[1] = json.dumps(entry)
    lines.append('{"__CURSOR": "s=torn')
    events, cursor = parse_journal_entries(lines)
    assert [(e.pci_bus_id, e.xid) for e in events] == [("0000:01:00.0", 79)]
    assert events[0].at == "2025-11-29T01:00:01+00:00"
    assert cursor == json.loads(lines[1])["__CURSOR"]


def test_kmsg_record_parsing() -> None:
    record = ("4,1321,4213118244,-;NVRM: Xid (PCI:0000:01:00): 79, pid=1, name=a, GPU has "
              "fallen off the bus.\n SUBSYSTEM=pci\n DEVICE=+pci:0000:01:00.0\n")
    seq, usec, message = parse_kmsg_record(record) or (0, 0, "")
    assert (seq, usec) == (1321, 4213118244)
    assert message.startswith("NVRM: Xid") and "SUBSYSTEM" not in message
    assert parse_kmsg_record("garbage") is None
    assert parse_kmsg_record("6,x,1,-;text") is None


def test_match_to_gpus() -> None:
    events = [KernelXid("0000:01:00.0", 13, "t"), KernelXid("0000:02:00.0", 79, "t"),
              KernelXid("0000:09:00.0", 31, "t")]
    matched, unmatched = match_to_gpus(events, {0: "0000:01:00.0", 1: None})
    # GPU 1 lost its handle (no PCI address): the lone unknown GPU takes the unmatched XIDs.
    assert [e.xid for e in matched[0]] == [13]
    assert [e.xid for e in matched[1]] == [79, 31]
    assert unmatched == []
    matched, unmatched = match_to_gpus(events, {0: "00000000:01:00.0", 1: None, 2: None})
    assert [e.xid for e in matched[0]] == [13]
    assert [e.xid for e in unmatched] == [79, 31]  # two unknown GPUs: cannot tell which


class FakeJournal:
    """journalctl -k --after-cursor: entries strictly after the cursor; unknown cursor fails."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.calls: list[str | None] = []
        self.messages: list[str] = []

    def log(self, *messages: str) -> None:
        self.messages += messages
        self.lines = journal_json(self.messages, start_usec=1_764_378_000_000_000)

    def __call__(self, after: str | None) -> Iterator[str]:
        self.calls.append(after)
        if after is None:
            return iter(self.lines)
        cursors = [json.loads(line)["__CURSOR"] for line in self.lines]
        if after not in cursors:
            raise XidSourceError("journalctl -k failed: Failed to seek to cursor")
        return iter(self.lines[cursors.index(after) + 1:])


XID79 = "NVRM: Xid (PCI:0000:01:00): 79, pid=1, name=a, GPU has fallen off the bus."
XID13 = "NVRM: Xid (PCI:0000:01:00): 13, pid=2, name=b, Graphics Exception"


def _journal_source(tmp_path: Path, journal: FakeJournal, consume: bool = True
                    ) -> KernelLogXidSource:
    return KernelLogXidSource(tmp_path, consume=consume, backend="journal", journal=journal)


def test_first_run_reads_the_boot_then_only_newer(tmp_path: Path) -> None:
    journal = FakeJournal()
    journal.log("boot line", XID79)
    assert [e.xid for e in _journal_source(tmp_path, journal).read()] == [79]
    assert journal.calls == [None]
    assert _journal_source(tmp_path, journal).read() == []  # nothing new since
    journal.log("later line", XID13)
    assert [e.xid for e in _journal_source(tmp_path, journal).read()] == [13]
    stored = load_cursor(tmp_path / CURSOR_FILE)
    assert stored == {"source": "journal", "cursor": json.loads(journal.lines[-1])["__CURSOR"]}


def test_no_new_entries_keep_the_cursor(tmp_path: Path) -> None:
    journal = FakeJournal()
    journal.log(XID79)
    _journal_source(tmp_path, journal).read()
    before = (tmp_path / CURSOR_FILE).read_text()
    _journal_source(tmp_path, journal).read()
    assert (tmp_path / CURSOR_FILE).read_text() == before


def test_peek_leaves_the_cursor_until_commit(tmp_path: Path) -> None:
    journal = FakeJournal()
    journal.log(XID79)
    peek = _journal_source(tmp_path, journal, consume=False)
    assert [e.xid for e in peek.read()] == [79]
    assert not (tmp_path / CURSOR_FILE).exists()
    assert [e.xid for e in _journal_source(tmp_path, journal, consume=False).read()] == [79]
    peek.commit()
    assert _journal_source(tmp_path, journal).read() == []


def test_rejected_cursor_rereads_the_boot(tmp_path: Path) -> None:
    journal = FakeJournal()
    journal.log(XID13)
    save_cursor(tmp_path / CURSOR_FILE, {"source": "journal", "cursor": "s=vacuumed"})
    assert [e.xid for e in _journal_source(tmp_path, journal).read()] == [13]
    assert journal.calls == ["s=vacuumed", None]


def test_corrupt_cursor_file_means_whole_boot(tmp_path: Path) -> None:
    (tmp_path / CURSOR_FILE).write_text("{half")
    journal = FakeJournal()
    journal.log(XID79)
    assert [e.xid for e in _journal_source(tmp_path, journal).read()] == [79]
    assert journal.calls == [None]
    assert load_cursor(tmp_path / CURSOR_FILE) is not None  # repaired


def test_failing_journal_without_cursor_raises(tmp_path: Path) -> None:
    def broken(after: str | None) -> Iterator[str]:
        raise XidSourceError("journalctl -k failed: No journal files were opened")

    with pytest.raises(XidSourceError, match="No journal files"):
        _journal_source(tmp_path, broken).read()  # type: ignore[arg-type]


def test_cursor_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "state" / CURSOR_FILE
    save_cursor(path, {"source": "kmsg", "boot_id": "b", "seq": 1})
    save_cursor(path, {"source": "kmsg", "boot_id": "b", "seq": 2})
    assert load_cursor(path) == {"source": "kmsg", "boot_id": "b", "seq": 2}
    assert os.listdir(path.parent) == [CURSOR_FILE]


def _kmsg_source(tmp_path: Path, records: list[str], boot: str) -> KernelLogXidSource:
    return KernelLogXidSource(tmp_path, backend="kmsg", kmsg=lambda: iter(records),
                              boot_id=lambda: boot, wall_clock=lambda: 1_764_378_100.0,
                              monotonic=lambda: 100.0)


def test_kmsg_sequence_cursor_and_boot_change(tmp_path: Path) -> None:
    records = ["6,1,1000,-;Linux version 6.1.0\n",
               f"4,2,50000000,-;{XID79}\n SUBSYSTEM=pci\n"]
    events = _kmsg_source(tmp_path, records, "boot-1").read()
    assert [e.xid for e in events] == [79]
    # boot at 1_764_378_000 (wall - monotonic) + 50 s
    assert events[0].at == datetime.fromtimestamp(1_764_378_050, UTC).isoformat()
    assert load_cursor(tmp_path / CURSOR_FILE) == {"source": "kmsg", "boot_id": "boot-1",
                                                   "seq": 2}
    records.append(f"4,3,60000000,-;{XID13}\n")
    assert [e.xid for e in _kmsg_source(tmp_path, records, "boot-1").read()] == [13]
    # After a reboot the sequence numbers restart: the stored seq means nothing, read it all.
    rebooted = ["6,1,1000,-;Linux version 6.1.0\n", f"4,2,9000000,-;{XID13}\n"]
    assert [e.xid for e in _kmsg_source(tmp_path, rebooted, "boot-2").read()] == [13]


def test_real_kmsg_reads_this_machine() -> None:
    """The real /dev/kmsg: records parse, and reading ends instead of blocking."""
    try:
        records = list(read_kmsg())
    except XidSourceError as exc:
        pytest.skip(f"/dev/kmsg not readable here: {exc}")
    if not records:
        pytest.skip("the kernel ring buffer is empty here")
    parsed = [parse_kmsg_record(r) for r in records]
    assert all(p is not None for p in parsed)
    seqs = [p[0] for p in parsed if p is not None]
    assert seqs == sorted(seqs)


def test_kmsg_permission_error_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(XidSourceError, match="cannot read"):
        list(read_kmsg(str(tmp_path / "no-such-kmsg")))


def test_real_kmsg_source_stores_this_boot_and_last_sequence(tmp_path: Path) -> None:
    """KernelLogXidSource over the real /dev/kmsg: cursor = this boot, newest record."""
    try:
        records = list(read_kmsg())
    except XidSourceError as exc:
        pytest.skip(f"/dev/kmsg not readable here: {exc}")
    if not records:
        pytest.skip("the kernel ring buffer is empty here")
    source = KernelLogXidSource(tmp_path, backend="kmsg")
    source.read()
    stored = load_cursor(tmp_path / CURSOR_FILE)
    assert stored is not None and stored["source"] == "kmsg"
    assert stored["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    last = parse_kmsg_record(records[-1])
    assert last is not None and stored["seq"] >= last[0]


def test_unwritable_state_dir_still_reports_xids(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    journal = FakeJournal()
    journal.log(XID79)
    source = KernelLogXidSource(blocker, backend="journal", journal=journal)
    assert [e.xid for e in source.read()] == [79]
    assert [e.xid for e in source.read()] == [79]  # not remembered, so reported again
