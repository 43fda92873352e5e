"""The files of the models directory: sha256 with large reads, free space, hlctl's marks, locks.

A file hlctl verified carries the xattr ``user.hlctl.sha256`` = "<sha256> <size> <mtime_ns>",
so a later pull or ``list`` knows it is unchanged without reading it again; a partial carries
``user.hlctl.expect`` = the sha256 it is heading for, so a partial of another version of the
file is not resumed. Filesystems without user xattrs lose only the shortcut (we rehash).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hlctl.errors import HlctlError

CHUNK = 8 << 20
SPACE_MARGIN = 512 << 20
_XATTR_SHA = "user.hlctl.sha256"
_XATTR_EXPECT = "user.hlctl.expect"
ProgressFn = Callable[[int, int], None]  # (bytes done, bytes total)


class NotEnoughSpace(HlctlError):
    pass


def check_space(directory: Path, needed: int, margin: int = SPACE_MARGIN) -> None:
    """Refuse up front when the filesystem lacks room for ``needed`` bytes plus a margin."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed + margin > free:
        raise NotEnoughSpace(
            f"not enough disk space in {directory}: need {_gib(needed)} plus {_gib(margin)} "
            f"margin, {_gib(free)} free", hint="free space or choose another --dir")


def sha256_file(path: Path, progress: ProgressFn | None = None, limit: int | None = None,
                digest: Any = None) -> Any:
    """Hash a file (or its first ``limit`` bytes) with large reads; return the hash object."""
    digest = digest or hashlib.sha256()
    total = limit if limit is not None else path.stat().st_size
    done = 0
    with path.open("rb", buffering=0) as handle:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        while done < total:
            count = handle.readinto(view[:min(CHUNK, total - done)])
            if not count:
                break
            digest.update(view[:count])
            done += count
            if progress:
                progress(done, total)
    return digest


def expected_of_partial(path: Path) -> str | None:
    return _getxattr(path, _XATTR_EXPECT)


def mark_partial(path: Path, sha256: str) -> None:
    _setxattr(path, _XATTR_EXPECT, sha256)


def verified_by_mark(path: Path, sha256: str, size: int) -> bool:
    """True when hlctl verified this file as ``sha256`` and it has not changed since."""
    mark = _getxattr(path, _XATTR_SHA)
    if mark is None:
        return False
    try:
        info = path.stat()
    except OSError:
        return False
    return mark == f"{sha256} {size} {info.st_mtime_ns}" and info.st_size == size


def verified_mark(path: Path) -> tuple[str, bool] | None:
    """The sha256 hlctl recorded when it verified the file, and whether the file is unchanged
    since (same size and mtime); None when there is no mark (or no xattr support)."""
    mark = _getxattr(path, _XATTR_SHA)
    if mark is None:
        return None
    parts = mark.split()
    try:
        info = path.stat()
    except OSError:
        return None
    if len(parts) != 3:
        return None
    return parts[0], parts[1] == str(info.st_size) and parts[2] == str(info.st_mtime_ns)


def mark_verified(path: Path, sha256: str) -> None:
    """Record that ``path`` has this sha256, as of its current size and mtime."""
    info = path.stat()
    _setxattr(path, _XATTR_SHA, f"{sha256} {info.st_size} {info.st_mtime_ns}")


def _getxattr(path: Path, name: str) -> str | None:
    try:
        return os.getxattr(path, name).decode()
    except (OSError, AttributeError, UnicodeDecodeError):
        return None


def _setxattr(path: Path, name: str, value: str) -> None:
    # Filesystems without user xattrs just lose the shortcut: we rehash instead.
    with contextlib.suppress(OSError, AttributeError):
        os.setxattr(path, name, value.encode())


@contextlib.contextmanager
def file_lock(path: Path, on_wait: Callable[[], None] | None) -> Iterator[None]:
    """An exclusive fcntl lock on ``path``, removed by its holder when done.

    A waiter may get the lock on a file its holder just unlinked; it then checks that the
    path still names the inode it locked, and tries again if not.
    """
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait and not waited:
                    on_wait()
                waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _gib(count: int) -> str:
    return f"{count / (1 << 30):.2f} GiB" if count >= 1 << 28 else f"{count / (1 << 20):.1f} MiB"


def host_ram_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """This machine's RAM (MemTotal), for the part of a model that does not fit in VRAM."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
