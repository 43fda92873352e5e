"""What is on disk in the models directory, against models.lock: ok, missing, modified, unknown.

``scan`` is cheap (stat only; a file hlctl verified and nobody touched since counts as ok);
``verify`` re-hashes. A partial download shows as ``partial``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hlctl.models.localfile import mark_verified, sha256_file, verified_mark
from hlctl.models.lock import LockedModel, ModelsLock

OK, MISSING, MODIFIED, UNKNOWN, PARTIAL = "ok", "missing", "modified", "unknown", "partial"


@dataclass(frozen=True)
class FileState:
    repo: str | None  # None for a file the lock does not know
    model: str | None
    path: Path
    state: str
    size: int | None  # on disk
    expected_size: int | None
    sha256: str | None  # measured (verify) or as marked when hlctl verified it
    expected_sha256: str | None

    def to_json(self) -> dict[str, object]:
        return {"repo": self.repo, "model": self.model, "path": str(self.path),
                "state": self.state, "size": self.size, "expected_size": self.expected_size,
                "sha256": self.sha256, "expected_sha256": self.expected_sha256}


def model_paths(models_dir: Path, model: LockedModel) -> list[Path]:
    from hlctl.models.hub import local_path

    return [local_path(models_dir, model.repo, f.path) for f in model.files]


def scan(models_dir: Path, lock: ModelsLock, *, rehash: bool = False,
         only: list[LockedModel] | None = None,
         progress: Callable[[Path, int, int], None] | None = None) -> list[FileState]:
    """The state of every locked file, then of every GGUF the lock does not know."""
    states: list[FileState] = []
    known: set[Path] = set()
    for model in only if only is not None else lock.models:
        for locked, path in zip(model.files, model_paths(models_dir, model), strict=True):
            known.add(path)
            states.append(_state(model, locked.size, locked.sha256, path, rehash, progress))
    if only is None:
        states.extend(_unknown(models_dir, known))
    return states


def _state(model: LockedModel, size: int, sha256: str, path: Path, rehash: bool,
           progress: Callable[[Path, int, int], None] | None) -> FileState:
    def result(state: str, actual_size: int | None, actual_sha: str | None) -> FileState:
        return FileState(model.repo, model.name, path, state, actual_size, size, actual_sha,
                         sha256)

    try:
        info = path.stat()
    except FileNotFoundError:
        partial = path.with_name(f".{path.name}.partial")
        if partial.exists():
            return result(PARTIAL, partial.stat().st_size, None)
        return result(MISSING, None, None)
    if info.st_size != size:
        return result(MODIFIED, info.st_size, None)
    if not rehash:
        # A mark from hlctl's own verification that no longer holds (other sha256, or the file
        # was written since) is a modification; without any mark, the size is all we know.
        mark = verified_mark(path)
        if mark is None:
            return result(OK, info.st_size, None)
        marked, fresh = mark
        state = OK if fresh and marked == sha256 else MODIFIED
        return result(state, info.st_size, marked if fresh else None)
    actual = sha256_file(path, (lambda done, total: progress(path, done, total))
                         if progress else None).hexdigest()
    if actual == sha256:
        mark_verified(path, sha256)
        return result(OK, info.st_size, actual)
    return result(MODIFIED, info.st_size, actual)


def _unknown(models_dir: Path, known: set[Path]) -> list[FileState]:
    found = []
    if not models_dir.is_dir():
        return found
    for root, dirs, files in os.walk(models_dir):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if name.startswith(".") or not name.lower().endswith(".gguf") or path in known:
                continue
            size = path.stat().st_size
            found.append(FileState(None, None, path, UNKNOWN, size, None, None, None))
    return found


def remove_model(models_dir: Path, model: LockedModel) -> list[Path]:
    """Delete a model's files and any partial of them; return what was deleted."""
    removed = []
    for path in model_paths(models_dir, model):
        for candidate in (path, path.with_name(f".{path.name}.partial")):
            try:
                candidate.unlink()
                removed.append(candidate)
            except FileNotFoundError:
                pass
    _prune_empty(models_dir, model_paths(models_dir, model))
    return removed


def _prune_empty(models_dir: Path, paths: list[Path]) -> None:
    root = models_dir.resolve()
    for path in paths:
        parent = path.parent
        while parent.resolve() != root and parent.resolve().is_relative_to(root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
