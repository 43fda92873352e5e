"""models.lock: round trip, atomic replacement, precise errors, lookups."""

from __future__ import annotations

from pathlib import Path

import pytest

from hlctl.errors import ConfigError
from hlctl.models.lock import (
    LockedFile,
    LockedModel,
    ModelsLock,
    locked_update,
    read_lock,
    write_lock,
)

COMMIT = "c" * 40


def _model(name: str = "M-Q4_K_M", repo: str = "o/m", sha: str = "a" * 64) -> LockedModel:
    return LockedModel(repo=repo, name=name, revision="main", commit=COMMIT, quant="Q4_K_M",
                       files=(LockedFile(f"{name}.gguf", 10, sha),),
                       pulled_at="2024-01-01T00:00:00Z")


def test_round_trip_and_upsert(tmp_path: Path) -> None:
    path = tmp_path / "models.lock"
    assert read_lock(path).models == []
    lock = ModelsLock()
    lock.upsert(_model())
    lock.upsert(_model("M-Q8_0"))
    lock.upsert(_model(sha="b" * 64))  # same repo and name: replaced, not added
    write_lock(path, lock)
    again = read_lock(path)
    assert again == lock
    assert [m.name for m in again.models] == ["M-Q4_K_M", "M-Q8_0"]
    assert again.models[0].files[0].sha256 == "b" * 64
    assert [p.name for p in tmp_path.iterdir()] == ["models.lock"]  # no temp file left


def test_locked_update_keeps_concurrent_additions(tmp_path: Path) -> None:
    path = tmp_path / "models.lock"
    with locked_update(path) as lock:
        lock.upsert(_model())
    with locked_update(path) as lock:
        lock.upsert(_model("M-Q8_0"))
    assert len(read_lock(path).models) == 2


def test_find_by_name_repo_and_path() -> None:
    lock = ModelsLock([_model(), _model("M-Q8_0"), _model("X", repo="o/x")])
    assert [m.name for m in lock.find("M-Q8_0")] == ["M-Q8_0"]
    assert [m.name for m in lock.find("o/m/M-Q8_0")] == ["M-Q8_0"]
    assert [m.name for m in lock.find("X.gguf")] == ["X"]
    assert len(lock.find("o/m")) == 2
    assert lock.find("nothing") == []


@pytest.mark.parametrize(("text", "message"), [
    ("models: 3\n", "expected a mapping"),
    ("version: 9\nmodels: []\n", "unsupported lock version"),
    ("models:\n- repo: o/m\n", "missing or malformed key"),
    (f"models:\n- {{repo: o/m, name: n, commit: abc, files: [{{path: a.gguf, size: 1, "
     f"sha256: {'a' * 64}}}]}}\n", "commit must be a 40-hex sha"),
    (f"models:\n- {{repo: o/m, name: n, commit: {COMMIT}, files: [{{path: ../a.gguf, size: 1, "
     f"sha256: {'a' * 64}}}]}}\n", "refusing hub file name"),
    (f"models:\n- {{repo: o/m, name: n, commit: {COMMIT}, files: [{{path: a.gguf, size: 1, "
     f"sha256: nope}}]}}\n", "bad sha256"),
    ("models: [\n", r"models lock .*: line \d+, column \d+"),
])
def test_bad_lock_files_say_where(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "models.lock"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_lock(path)


def _add_one(path: str, name: str) -> None:
    with locked_update(Path(path)) as lock:
        lock.upsert(_model(name))


def test_parallel_processes_do_not_lose_entries(tmp_path: Path) -> None:
    import multiprocessing

    path = tmp_path / "models.lock"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_add_one, args=(str(path), f"M{i}")) for i in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert sorted(m.name for m in read_lock(path).models) == [f"M{i}" for i in range(8)]
    assert [p.name for p in tmp_path.iterdir()] == ["models.lock"]
