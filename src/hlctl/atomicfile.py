"""Replace a file so that a reader, a crash or a power cut sees the old file or the new one.

One implementation for every small file hlctl writes whole (the health result, the XID cursor,
the Prometheus textfile, models.lock): temp file in the same directory (rename is atomic only
within one filesystem), fsync, rename, fsync the directory (so the rename itself is durable).
The temp name starts with a dot and ends in ``.tmp``, so globbing readers (node_exporter's
``*.prom``) never pick up a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str, *, mode: int = 0o644,
                      make_parents: bool = True) -> None:
    """Replace ``path`` with ``text``; ``mode`` defaults to world-readable, because readers
    run as other users (node_exporter, the router container); pass 0o600 for private data."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), mode)  # mkstemp creates 0600
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # A filesystem that cannot fsync a directory still got the rename.
    with contextlib.suppress(OSError):
        fsync_dir(path.parent)
