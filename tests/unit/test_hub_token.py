"""Which hub token a pull sends: HF_TOKEN, else the file `hf auth login` writes, else none."""

from __future__ import annotations

from pathlib import Path

from hlctl.models.hub import default_token


def test_hf_token_env_wins_over_the_saved_token(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("hf_saved\n")
    assert default_token({"HF_TOKEN": "hf_env", "HF_HOME": str(tmp_path)}) == "hf_env"


def test_saved_token_under_hf_home(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("hf_saved\n")
    assert default_token({"HF_HOME": str(tmp_path)}) == "hf_saved"


def test_hf_token_path_points_at_the_file(tmp_path: Path) -> None:
    token = tmp_path / "elsewhere"
    token.write_text("  hf_path  \n")
    assert default_token({"HF_TOKEN_PATH": str(token), "HF_HOME": str(tmp_path)}) == "hf_path"


def test_default_location_is_under_the_xdg_cache(tmp_path: Path) -> None:
    (tmp_path / "huggingface").mkdir()
    (tmp_path / "huggingface" / "token").write_text("hf_xdg")
    assert default_token({"XDG_CACHE_HOME": str(tmp_path)}) == "hf_xdg"


def test_no_token_anywhere_is_anonymous(tmp_path: Path) -> None:
    assert default_token({"HF_HOME": str(tmp_path)}) is None
    (tmp_path / "token").write_text("\n")
    assert default_token({"HF_HOME": str(tmp_path)}) is None
