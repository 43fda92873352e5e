"""A verified, resumable streaming download of one file over a hub resolve URL.

The file is written to ``.NAME.partial`` in its final directory and hashed as it arrives (in a
second thread, so hashing overlaps the network); it is fsynced and renamed to NAME only when
its sha256 matches. An interrupted download resumes with a Range request from the partial's
length, also in a later process, rehashing only what is already on disk. A lock file
(``.NAME.lock``, fcntl) serialises two pulls of the same file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from hlctl.atomicfile import fsync_dir
from hlctl.errors import HlctlError
from hlctl.models.localfile import (
    NotEnoughSpace,
    ProgressFn,
    expected_of_partial,
    file_lock,
    mark_partial,
    mark_verified,
    sha256_file,
    verified_by_mark,
)

CHUNK = 8 << 20  # one write and one hash update per 8 MiB
SYNC_EVERY = 64 << 20  # write back to disk every 64 MiB while downloading
_IOV_MAX = 512


class DownloadError(HlctlError):
    """A download failed for a reason a retry will not fix."""


class ChecksumMismatch(DownloadError):
    def __init__(self, name: str, expected: str, actual: str) -> None:
        super().__init__(f"{name}: sha256 mismatch: expected {expected}, got {actual}; "
                         "the download was deleted")
        self.expected = expected
        self.actual = actual


class SizeMismatch(DownloadError):
    pass


class _Transient(Exception):
    """A failure worth retrying (connection dropped, 5xx, timeout)."""


@dataclass(frozen=True)
class DownloadSpec:
    url: str
    dest: Path
    size: int
    sha256: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def partial(self) -> Path:
        return self.dest.with_name(f".{self.dest.name}.partial")

    @property
    def lockfile(self) -> Path:
        return self.dest.with_name(f".{self.dest.name}.lock")


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    size: int
    sha256: str
    downloaded: int  # bytes fetched over the network in this run
    resumed_from: int  # bytes found in a partial from an earlier run
    skipped: bool  # the verified file was already there
    seconds: float


@dataclass
class RetryPolicy:
    attempts: int = 6  # tries in a row without progress
    base_delay: float = 0.5
    max_delay: float = 30.0
    sleep: Callable[[float], None] = time.sleep

    def delay(self, attempt: int) -> float:
        return min(self.max_delay, self.base_delay * 2 ** attempt) * (0.5 + random.random() / 2)


def default_timeout() -> httpx.Timeout:
    # A stalled server must not hang a pull forever; a slow one must not fail it.
    return httpx.Timeout(connect=15.0, read=60.0, write=60.0, pool=15.0)


def new_client() -> httpx.Client:
    """An httpx client for large bodies: explicit timeouts, redirects followed (hub -> CDN)."""
    _large_reads()
    return httpx.Client(timeout=default_timeout(), follow_redirects=True)


def _large_reads() -> None:
    # httpcore reads HTTP/1.1 bodies 64 KiB at a time; per-read overhead then caps a download
    # near 400 MB/s here, below the network. 1 MiB reads reach curl's speed (bench/pull.py).
    # The attribute is httpcore's class-level knob; it only sizes recv() calls.
    with contextlib.suppress(ImportError, AttributeError):
        from httpcore._sync import http11

        http11.HTTP11Connection.READ_NUM_BYTES = max(
            http11.HTTP11Connection.READ_NUM_BYTES, 1 << 20)


def bytes_to_fetch(spec: DownloadSpec) -> int:
    """What is still to download for this file (0 when it is already in place)."""
    if verified_by_mark(spec.dest, spec.sha256, spec.size):
        return 0
    try:
        have = spec.partial.stat().st_size
    except OSError:
        have = 0
    return max(0, spec.size - (have if have <= spec.size else 0))


def download(spec: DownloadSpec, *, client: httpx.Client | None = None,
             progress: ProgressFn | None = None, retry: RetryPolicy | None = None,
             on_wait: Callable[[], None] | None = None) -> DownloadResult:
    """Fetch ``spec.url`` into ``spec.dest``, verified; a present verified file is a no-op."""
    started = time.monotonic()
    spec.dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(spec.lockfile, on_wait):
        if _is_present(spec):
            if progress:
                progress(spec.size, spec.size)
            return DownloadResult(spec.dest, spec.size, spec.sha256, 0, 0, True,
                                  time.monotonic() - started)
        own_client = client is None
        client = client or new_client()
        try:
            fetched, resumed, digest = _fetch(spec, client, progress, retry or RetryPolicy())
        except BaseException:
            # Keep a partial worth resuming; an empty one is only clutter.
            with contextlib.suppress(OSError):
                if spec.partial.stat().st_size == 0:
                    spec.partial.unlink()
            raise
        finally:
            if own_client:
                client.close()
        if digest != spec.sha256:
            spec.partial.unlink(missing_ok=True)
            raise ChecksumMismatch(spec.dest.name, spec.sha256, digest)
        os.replace(spec.partial, spec.dest)
        fsync_dir(spec.dest.parent)
        mark_verified(spec.dest, spec.sha256)
        return DownloadResult(spec.dest, spec.size, spec.sha256, fetched, resumed, False,
                              time.monotonic() - started)


# -- the transfer --------------------------------------------------------------------------------

def _fetch(spec: DownloadSpec, client: httpx.Client, progress: ProgressFn | None,
           retry: RetryPolicy) -> tuple[int, int, str]:
    """Download into the partial until it holds ``size`` bytes; return counts and the digest."""
    state = _resume_state(spec)
    resumed = have = state.have
    fetched = 0
    failures = 0
    if progress:
        progress(have, spec.size)
    while have < spec.size:
        before = have
        try:
            _stream(spec, client, state, progress)
            have = state.have
        except _Transient as exc:
            have = state.have
            fetched += max(0, have - before)
            failures = 0 if have > before else failures + 1
            if failures >= retry.attempts:
                raise DownloadError(f"{spec.dest.name}: giving up after {failures} failed "
                                    f"tries without progress: {exc}") from None
            retry.sleep(retry.delay(failures))
            continue
        fetched += have - before
    if have > spec.size:
        spec.partial.unlink(missing_ok=True)
        raise SizeMismatch(f"{spec.dest.name}: received more than the {spec.size} bytes the hub "
                           "advertised; the download was deleted")
    return fetched, resumed, state.digest.hexdigest()


@dataclass
class _State:
    """The partial's length and the running hash of exactly those bytes."""

    digest: Any
    have: int


def _resume_state(spec: DownloadSpec) -> _State:
    """Hash what an earlier run left in the partial, or start it afresh."""
    digest = hashlib.sha256()
    try:
        have = spec.partial.stat().st_size
    except FileNotFoundError:
        have = 0
    if have and (have > spec.size or expected_of_partial(spec.partial) not in
                 (None, spec.sha256)):
        spec.partial.unlink()  # left by a different version of the file
        have = 0
    if have:
        sha256_file(spec.partial, limit=have, digest=digest)
    else:
        spec.partial.touch()
        mark_partial(spec.partial, spec.sha256)
    return _State(digest, have)


def _stream(spec: DownloadSpec, client: httpx.Client, state: _State,
            progress: ProgressFn | None) -> None:
    """One GET from ``state.have`` to the end; writes and hashes in a second thread."""
    have = state.have
    headers = {**spec.headers, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        with client.stream("GET", spec.url, headers=headers) as response:
            _check_response(spec, response, have)
            if have and response.status_code == 200:
                # The server ignored our Range: start over rather than append a second copy.
                state.digest, state.have = hashlib.sha256(), 0
                have = 0
            expected = spec.size - have
            length = response.headers.get("Content-Length")
            if length is not None and int(length) != expected:
                raise SizeMismatch(
                    f"{spec.dest.name}: the hub advertised {spec.size} bytes but the server "
                    f"sends {int(length) + have}; refusing the download")
            with _Writer(spec.partial, state) as writer:
                blocks = _Blocks(CHUNK)
                try:
                    for chunk in response.iter_raw():
                        block = blocks.add(chunk)
                        if block is None:
                            continue
                        if writer.written + blocks.last_size > expected:
                            raise SizeMismatch(
                                f"{spec.dest.name}: the server sends more than the {spec.size} "
                                "bytes the hub advertised; refusing the download")
                        writer.put(block, blocks.last_size)
                        if progress:
                            progress(have + writer.written, spec.size)
                finally:
                    # Keep what arrived before a dropped connection: the retry resumes after it.
                    tail = blocks.flush()
                    if tail and writer.written + blocks.last_size <= expected:
                        writer.put(tail, blocks.last_size)
                        if progress:
                            progress(have + writer.written, spec.size)
            if state.have < spec.size:
                raise _Transient(f"stream ended at {state.have} of {spec.size} bytes")
    except SizeMismatch:
        spec.partial.unlink(missing_ok=True)
        raise
    except (httpx.TransportError, httpx.StreamError) as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from None


def _check_response(spec: DownloadSpec, response: httpx.Response, have: int) -> None:
    status = response.status_code
    if status in (200, 206):
        if status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {have}-"):
                raise DownloadError(f"{spec.dest.name}: asked for bytes from {have}, "
                                    f"the server sent {content_range or 'no Content-Range'}")
        return
    if status in (408, 429) or status >= 500:
        raise _Transient(f"HTTP {status}")
    if status in (401, 403):
        from hlctl.models.hub import GATED_MESSAGE

        raise DownloadError(f"{spec.dest.name}: {GATED_MESSAGE}")
    raise DownloadError(f"{spec.dest.name}: the hub answered HTTP {status} for {spec.url}")


class _Blocks:
    """Gather network reads into blocks of about ``size`` bytes, or what ``interval`` brought.

    A block is the list of reads, never joined (joining costs a copy of every byte): the
    writer hands it to writev and the hasher hashes its pieces. Large blocks keep per-block
    costs (queueing, syscalls) small on a fast link; the time limit keeps a slow link's bytes
    flowing to disk and to the progress bar.
    """

    def __init__(self, size: int, interval: float = 0.5) -> None:
        self._size = size
        self._interval = interval
        self._pending: list[bytes] = []
        self._count = 0
        self._since = time.monotonic()
        self.last_size = 0  # bytes in the block flush() returned last

    def add(self, chunk: bytes) -> list[bytes] | None:
        self._pending.append(chunk)
        self._count += len(chunk)
        if self._count >= self._size or time.monotonic() - self._since >= self._interval:
            return self.flush()
        return None

    def flush(self) -> list[bytes]:
        block, self.last_size = self._pending, self._count
        self._pending, self._count = [], 0
        self._since = time.monotonic()
        return block


class _Writer:
    """Append blocks to the partial in one thread and hash them in another.

    The receiving thread only queues; os.write and sha256 both release the GIL, so the network,
    the disk and the hash run side by side instead of adding up. On exit both threads drain,
    the file is fsynced and closed; a failure in either thread is raised in the caller.
    """

    def __init__(self, path: Path, state: _State) -> None:
        self._path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.truncate(self._fd, state.have)
        self._state = state
        self._unsynced = 0
        self._error: BaseException | None = None
        self._queues: list[queue.Queue[list[bytes] | None]] = [
            queue.Queue(maxsize=4) for _ in "wh"]
        self._threads = [
            threading.Thread(target=self._run, args=(q, work), name=f"hlctl-{name}", daemon=True)
            for q, work, name in zip(self._queues, (self._write, self._hash), ("write", "hash"),
                                     strict=True)]
        self.written = 0

    def __enter__(self) -> _Writer:
        for thread in self._threads:
            thread.start()
        return self

    def put(self, block: list[bytes], size: int) -> None:
        if self._error is not None:
            raise self._error
        for q in self._queues:
            q.put(block)
        self.written += size

    def _write(self, block: list[bytes]) -> None:
        total = 0
        for start in range(0, len(block), _IOV_MAX):  # writev takes at most IOV_MAX pieces
            pieces = block[start:start + _IOV_MAX]
            size = sum(len(piece) for piece in pieces)
            done = os.writev(self._fd, pieces)
            if done < size:  # a short write: finish the rest in one piece
                rest = memoryview(b"".join(pieces))[done:]
                while rest:
                    rest = rest[os.write(self._fd, rest):]
            total += size
        self._state.have += total
        self._unsynced += total
        if self._unsynced >= SYNC_EVERY:
            # Write back as we go, so the final fsync does not wait for gigabytes at once,
            # and drop the synced pages: a 40 GB model should not evict the page cache.
            os.fdatasync(self._fd)
            with contextlib.suppress(OSError, AttributeError):
                os.posix_fadvise(self._fd, 0, self._state.have, os.POSIX_FADV_DONTNEED)
            self._unsynced = 0

    def _hash(self, block: list[bytes]) -> None:
        update = self._state.digest.update
        for piece in block:
            update(piece)

    def _run(self, source: queue.Queue[list[bytes] | None],
             work: Callable[[list[bytes]], None]) -> None:
        while (block := source.get()) is not None:
            if self._error is None:
                try:
                    work(block)
                except BaseException as exc:
                    self._error = exc

    def __exit__(self, *exc: object) -> None:
        for q in self._queues:
            q.put(None)
        for thread in self._threads:
            thread.join()
        try:
            if self._error is None:
                os.fsync(self._fd)
        finally:
            os.close(self._fd)
        if self._error is not None:
            error = self._error
            if isinstance(error, OSError) and error.errno == errno.ENOSPC:
                raise NotEnoughSpace(f"disk full while writing {self._path}") from None
            raise error


# -- the file on disk ------------------------------------------------------------------------

def _is_present(spec: DownloadSpec) -> bool:
    """True when the final file is there and verified; rehash only when the mark is missing."""
    try:
        info = spec.dest.lstat()
    except FileNotFoundError:
        return False
    if not spec.dest.is_file() or spec.dest.is_symlink():
        raise DownloadError(f"{spec.dest} exists and is not a regular file")
    if info.st_size != spec.size:
        raise DownloadError(f"{spec.dest} exists with {info.st_size} bytes, the hub says "
                            f"{spec.size}", hint="remove it with 'hlctl models rm' and pull again")
    if verified_by_mark(spec.dest, spec.sha256, spec.size):
        return True
    actual = sha256_file(spec.dest).hexdigest()
    if actual != spec.sha256:
        raise DownloadError(f"{spec.dest} exists but its sha256 is {actual}, the hub says "
                            f"{spec.sha256}",
                            hint="remove it with 'hlctl models rm' and pull again")
    mark_verified(spec.dest, spec.sha256)
    return True
