"""Hub file names: quants, shards, grouping, selection, and hostile names refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from hlctl.errors import UsageError
from hlctl.models.hub import (
    HostileNameError,
    HubError,
    group_models,
    local_path,
    parse_quant,
    parse_shard,
    remote_file,
    resolve_url,
    select_model,
)

SHA = "a" * 64


@pytest.mark.parametrize(("name", "quant"), [
    ("Mistral-7B-Instruct-v0.3-Q4_K_M.gguf", "Q4_K_M"),
    ("gemma-3-270m-it-Q4_K_M.gguf", "Q4_K_M"),
    ("llama-2-7b.Q5_K_S.gguf", "Q5_K_S"),  # TheBloke's dotted style
    ("Qwen2.5-7B-Instruct-IQ4_XS.gguf", "IQ4_XS"),
    ("Meta-Llama-3.1-70B-Instruct-Q4_K_M-00001-of-00002.gguf", "Q4_K_M"),
    ("Q4_K_M/Llama-4-Scout-UD-Q4_K_XL-00001-of-00002.gguf", "UD-Q4_K_XL"),
    ("phi-3-mini-4k-instruct-fp16.gguf", "FP16"),
    ("ggml-model-f16.gguf", "F16"),
    ("model-bf16.gguf", "BF16"),
    ("tiny-Q8_0.gguf", "Q8_0"),
    ("model-IQ2_XXS.gguf", "IQ2_XXS"),
    ("gpt-oss-20b-MXFP4.gguf", "MXFP4"),
    ("model-Q4_0_4_8.gguf", None),  # unknown layout: better no quant than a wrong one
    ("mmproj-model.gguf", None),
    ("Q4-is-not-a-quant.gguf", None),
])
def test_parse_quant(name: str, quant: str | None) -> None:
    assert parse_quant(name) == quant


def test_parse_shard() -> None:
    assert parse_shard("dir/Model-Q4_K_M-00002-of-00003.gguf") == (2, 3)
    assert parse_shard("Model-Q4_K_M.gguf") is None
    assert parse_shard("Model-00002-of-00003.bin") is None


@pytest.mark.parametrize("name", [
    "../evil.gguf", "a/../../evil.gguf", "/etc/evil.gguf", "C:/evil.gguf", "a\\..\\evil.gguf",
    "evil\0.gguf", "a//b.gguf", "./a.gguf", "a/./b.gguf", "", "x" * 2000 + ".gguf",
    "new\nline.gguf", ".hidden.gguf", "dir/.model.gguf.partial",
])
def test_hostile_names_are_refused(name: str) -> None:
    with pytest.raises(HostileNameError, match="refusing hub file name"):
        remote_file(name, 10, SHA)


def test_local_path_stays_inside(tmp_path: Path) -> None:
    assert local_path(tmp_path, "o/m", "a/b.gguf") == tmp_path.resolve() / "o/m/a/b.gguf"
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "o").mkdir()
    # A directory of the repo that is a link leading out of the models dir is refused too.
    (tmp_path / "models" / "o" / "m").symlink_to(outside)
    with pytest.raises(HostileNameError, match="resolves outside"):
        local_path(tmp_path / "models", "o/m", "x.gguf")


@pytest.mark.parametrize("repo", ["o", "../x/y", "o/m/n", "/o/m", "o/..", "o/m\0", "o /m"])
def test_bad_repo_ids_are_usage_errors(repo: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        local_path(tmp_path, repo, "x.gguf")


def test_resolve_url_quotes_path_and_revision() -> None:
    url = resolve_url("o/m", "refs/pr/1", "dir/a b.gguf", "http://hub:1/")
    assert url == "http://hub:1/o/m/resolve/refs%2Fpr%2F1/dir/a%20b.gguf"


def test_malformed_sha256_and_missing_size_are_refused() -> None:
    with pytest.raises(HubError, match="malformed sha256"):
        remote_file("a.gguf", 1, "zz")
    with pytest.raises(HubError, match="no size"):
        remote_file("a.gguf", None, SHA)


def _files(*names: str) -> list:
    return [remote_file(n, 100, SHA) for n in names]


def test_shards_group_into_one_model() -> None:
    models = group_models(_files(
        "M-Q4_K_M-00002-of-00003.gguf", "M-Q4_K_M-00001-of-00003.gguf",
        "M-Q4_K_M-00003-of-00003.gguf", "M-Q8_0.gguf"))
    assert [(m.name, m.quant, m.shard_count, m.size) for m in models] == [
        ("M-Q4_K_M", "Q4_K_M", 3, 300), ("M-Q8_0", "Q8_0", 1, 100)]
    assert [f.shard_index for f in models[0].files] == [1, 2, 3]
    assert all(m.complete for m in models)


def test_select_by_quant_file_and_ambiguity() -> None:
    models = group_models(_files("M-Q4_K_M-00001-of-00002.gguf", "M-Q4_K_M-00002-of-00002.gguf",
                                 "M-Q8_0.gguf", "mmproj-M-F16.gguf"))
    assert select_model(models, quant="q4_k_m").name == "M-Q4_K_M"
    assert select_model(models, file="M-Q8_0.gguf").name == "M-Q8_0"
    assert select_model(models, file="M-Q4_K_M-00002-of-00002.gguf").name == "M-Q4_K_M"
    assert select_model(models, file="mmproj-M-F16.gguf").name == "mmproj-M-F16"
    with pytest.raises(UsageError, match="2 GGUF models; name one"):
        select_model(models, repo="o/m")
    with pytest.raises(UsageError, match="no IQ1_S GGUF") as info:
        select_model(models, quant="IQ1_S", repo="o/m")
    assert "Q4_K_M" in str(info.value) and "Q8_0" in str(info.value)
    with pytest.raises(UsageError, match="no GGUF file"):
        select_model(models, file="nope.gguf", repo="o/m")


def test_incomplete_split_model_is_refused() -> None:
    models = group_models(_files("M-Q4_K_M-00001-of-00003.gguf", "M-Q4_K_M-00003-of-00003.gguf"))
    assert not models[0].complete
    with pytest.raises(HubError, match="only shards 1, 3 of 3"):
        select_model(models, quant="Q4_K_M")
