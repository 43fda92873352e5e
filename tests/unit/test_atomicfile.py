"""Whole-file replacement: old or new content, never a mix, readable by other users."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from hlctl.atomicfile import write_text_atomic


def test_replaces_content_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "health" / "last.json"
    write_text_atomic(target, "one")
    write_text_atomic(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["last.json"]


def test_default_mode_lets_another_user_read(tmp_path: Path) -> None:
    # The router container (non-root) reads the host's health result.
    target = tmp_path / "last.json"
    write_text_atomic(target, "{}")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    write_text_atomic(target, "{}", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_missing_directory_is_an_error_when_parents_are_not_made(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_text_atomic(tmp_path / "nope" / "x.prom", "x", make_parents=False)
