"""models.lock: which models a lab runs, pinned to a commit and a sha256 per file.

YAML, so that a diff in a pull request reads well. Written atomically (temp file, fsync,
rename) so a crash never leaves half a lock file. ``hlctl models pull --locked`` pulls exactly
this set on another host.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hlctl.atomicfile import write_text_atomic
from hlctl.errors import ConfigError
from hlctl.yamlfile import read_yaml_file

LOCK_FILE_NAME = "models.lock"
LOCK_VERSION = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class LockedFile:
    path: str  # inside the repo; on disk it is MODELS_DIR/REPO/PATH
    size: int
    sha256: str


@dataclass(frozen=True)
class LockedModel:
    repo: str
    name: str  # the model name: file name without .gguf and without the shard suffix
    revision: str  # what the user asked for (a branch, tag or sha)
    commit: str  # what it resolved to
    quant: str | None
    files: tuple[LockedFile, ...]
    pulled_at: str  # ISO 8601, UTC

    @property
    def key(self) -> tuple[str, str]:
        return self.repo, self.name

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class ModelsLock:
    models: list[LockedModel] = field(default_factory=list)

    def upsert(self, model: LockedModel) -> None:
        """Add a model, replacing the entry for the same repo and name."""
        self.models = [m for m in self.models if m.key != model.key] + [model]
        self.models.sort(key=lambda m: m.key)

    def remove(self, key: tuple[str, str]) -> None:
        self.models = [m for m in self.models if m.key != key]

    def find(self, name: str) -> list[LockedModel]:
        """Models matching NAME: a model name, REPO/NAME, a repo, or a file path."""
        exact = [m for m in self.models if name in (m.name, f"{m.repo}/{m.name}")
                 or any(name in (f.path, f"{m.repo}/{f.path}") for f in m.files)]
        return exact or [m for m in self.models if m.repo == name]


def to_data(lock: ModelsLock) -> dict[str, Any]:
    return {"version": LOCK_VERSION, "models": [
        {"repo": m.repo, "name": m.name, "revision": m.revision, "commit": m.commit,
         "quant": m.quant, "pulled_at": m.pulled_at,
         "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in m.files]}
        for m in lock.models]}


def from_data(data: Any, source: Path) -> ModelsLock:
    """Parse and check a lock; every problem names the entry it is in."""
    if data is None:
        return ModelsLock()
    if not isinstance(data, dict) or not isinstance(data.get("models", []), list):
        raise ConfigError(f"{source}: expected a mapping with a 'models' list")
    if data.get("version", LOCK_VERSION) != LOCK_VERSION:
        raise ConfigError(f"{source}: unsupported lock version {data.get('version')!r}",
                          hint=f"this hlctl writes version {LOCK_VERSION}")
    from hlctl.errors import HlctlError
    from hlctl.models.hub import check_remote_name, check_repo_id

    models = []
    for index, raw in enumerate(data.get("models") or []):
        where = f"{source}: models[{index}]"
        try:
            files = tuple(LockedFile(path=str(f["path"]), size=int(f["size"]),
                                     sha256=str(f["sha256"])) for f in raw["files"])
            model = LockedModel(repo=str(raw["repo"]), name=str(raw["name"]),
                                revision=str(raw.get("revision") or raw["commit"]),
                                commit=str(raw["commit"]), quant=raw.get("quant"),
                                files=files, pulled_at=str(raw.get("pulled_at") or ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: missing or malformed key {exc}") from None
        if not _COMMIT.match(model.commit):
            raise ConfigError(f"{where}: commit must be a 40-hex sha")
        if not files:
            raise ConfigError(f"{where}: lists no files")
        for locked in files:
            if not _SHA256.match(locked.sha256) or locked.size < 0:
                raise ConfigError(f"{where}: {locked.path}: bad sha256 or size")
            try:
                check_remote_name(locked.path)
                check_repo_id(model.repo)
            except HlctlError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        models.append(model)
    return ModelsLock(models=models)


def lock_path_for(config_source: Path | None, models_dir: Path) -> Path:
    """models.lock next to the lab config file; in the models dir when defaults are in use."""
    return (config_source.parent if config_source is not None else models_dir) / LOCK_FILE_NAME


def read_lock(path: Path) -> ModelsLock:
    """The lock at PATH; an empty lock when the file does not exist yet."""
    if not path.exists():
        return ModelsLock()
    return from_data(read_yaml_file(path, what="models lock"), path)


def write_lock(path: Path, lock: ModelsLock) -> None:
    """Replace PATH with the lock, atomically."""
    text = ("# Written by `hlctl models pull`; `hlctl models pull --locked` reproduces it.\n"
            + yaml.safe_dump(to_data(lock), sort_keys=False, default_flow_style=False))
    write_text_atomic(path, text)


@contextlib.contextmanager
def locked_update(path: Path) -> Any:
    """Read, change and write the lock under an fcntl lock, so parallel pulls add, not clobber.

    The lock is taken on the directory (flock works on directories): the file itself is
    replaced by rename, so locking it would lock an inode that is about to go away.
    """
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        lock = read_lock(path)
        yield lock
        write_lock(path, lock)
    finally:
        os.close(fd)
