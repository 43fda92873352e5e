"""The fit arithmetic (llama.cpp's sizing rules) and the `hlctl models fit` command.

Headers of big models (a 70B, a 7B) are built in memory as GgufHeader dataclasses: the
estimate needs only metadata and tensor infos. The command runs on real GGUF files, and for
hub repos against the local hub server (tests/fixtures/hub_server.py) over real HTTP.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from hlctl.cli.main import cli
from hlctl.models import fit
from hlctl.models.gguf import GgufHeader, TensorInfo, read_file_header
from tests.fixtures import synthetic_gguf as sg
from tests.fixtures.hub_server import HubServer
from tests.fixtures.llama_build import gemma_model_path

GiB = fit.GiB
MiB = fit.MiB
Q4_K, Q6_K, F32, Q8_0 = 12, 14, 0, 8


def fake_header(*, arch: str = "llama", n_block: int, n_embd: int, n_head: int, n_head_kv: int,
                n_ff: int, n_vocab: int, qtype: int = Q4_K, tied: bool = False,
                extra: dict[str, object] | None = None, ctx_train: int = 32768) -> GgufHeader:
    """A header as a converter would write it, with the tensors of a llama-style model."""
    hd = n_embd // n_head
    tensors: list[TensorInfo] = []

    def add(name: str, *shape: int, qt: int = qtype) -> None:
        tensors.append(TensorInfo(name=name, shape=shape, ggml_type=qt, offset=0))

    add("token_embd.weight", n_embd, n_vocab)
    add("output_norm.weight", n_embd, qt=F32)
    if not tied:
        add("output.weight", n_embd, n_vocab, qt=Q6_K)
    for il in range(n_block):
        p = f"blk.{il}."
        add(p + "attn_norm.weight", n_embd, qt=F32)
        add(p + "attn_q.weight", n_embd, n_head * hd)
        add(p + "attn_k.weight", n_embd, n_head_kv * hd)
        add(p + "attn_v.weight", n_embd, n_head_kv * hd, qt=Q6_K)
        add(p + "attn_output.weight", n_head * hd, n_embd)
        add(p + "ffn_norm.weight", n_embd, qt=F32)
        add(p + "ffn_gate.weight", n_embd, n_ff)
        add(p + "ffn_up.weight", n_embd, n_ff)
        add(p + "ffn_down.weight", n_ff, n_embd, qt=Q6_K)
    metadata: dict[str, object] = {
        "general.architecture": arch, f"{arch}.block_count": n_block,
        f"{arch}.embedding_length": n_embd, f"{arch}.attention.head_count": n_head,
        f"{arch}.attention.head_count_kv": n_head_kv, f"{arch}.feed_forward_length": n_ff,
        f"{arch}.context_length": ctx_train, f"{arch}.vocab_size": n_vocab, **(extra or {}),
    }
    return GgufHeader(version=3, metadata=metadata, tensors=tuple(tensors), alignment=32,
                      data_offset=1 << 20)


LLAMA_70B = fake_header(n_block=80, n_embd=8192, n_head=64, n_head_kv=8, n_ff=28672,
                        n_vocab=128256, ctx_train=131072)
MISTRAL_7B = fake_header(n_block=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336,
                         n_vocab=32768)


@pytest.fixture(scope="module")
def gemma() -> GgufHeader:
    return read_file_header(gemma_model_path())


# -- KV cache: llama.cpp's rules -----------------------------------------------------------------

@pytest.mark.parametrize(("ctx", "parallel", "unified", "n_ctx", "n_ctx_seq", "streams", "swa"), [
    (8192, None, None, 8192, 8192, 1, 2560),  # llama-server default: 4 slots, unified
    (8192, 1, None, 8192, 8192, 1, 1024),  # window 512 + ubatch 512
    (8192, 2, None, 8192, 4096, 2, 1024),  # one stream per slot
    (8192, 2, True, 8192, 8192, 1, 1536),  # unified: window per slot, shared cells
    (1000, 1, None, 1024, 1024, 1, 1024),  # padded to 256; the window is capped by the context
    (8192, 3, None, 8448, 2816, 3, 1024),  # ctx/3 = 2730 -> 2816 per stream
    (300, 1, None, 512, 512, 1, 512),  # ubatch follows a short context
])
def test_kv_layout_follows_llama_cpp(gemma: GgufHeader, ctx: int, parallel: int | None,
                                     unified: bool | None, n_ctx: int, n_ctx_seq: int,
                                     streams: int, swa: int) -> None:
    shape = fit.model_shape(gemma)
    layout = fit.kv_layout(shape, fit.FitSettings(ctx=ctx, parallel=parallel,
                                                  kv_unified=unified))
    assert (layout.n_ctx, layout.n_ctx_seq, layout.n_stream, layout.size_swa) == \
        (n_ctx, n_ctx_seq, streams, swa)


def test_gemma3_sliding_window_layers(gemma: GgufHeader) -> None:
    shape = fit.model_shape(gemma)
    # llama.cpp's default period 6: five sliding layers, then one dense
    assert shape.swa == tuple(il % 6 < 5 for il in range(18))
    assert shape.n_swa == 512
    settings = fit.FitSettings(ctx=8192, parallel=1)
    layout = fit.kv_layout(shape, settings)
    per_layer = fit.kv_layer_bytes(shape, settings, layout)
    row = 256 * 1 * 2 * 2  # head dim 256, 1 KV head, K and V, f16
    assert per_layer[5] == row * 8192  # dense
    assert per_layer[0] == row * 1024  # sliding: window + ubatch
    naive = 18 * row * 8192
    assert sum(per_layer) < 0.3 * naive  # a naive n_layer * n_ctx estimate is far off


def test_explicit_swa_pattern_array_wins() -> None:
    header = read_file_header(sg.write_model(Path(os.environ.get("TMPDIR", "/tmp"))
                                             / "fit-gemma2.gguf", sg.SPECS["gemma2"]))
    shape = fit.model_shape(header)
    assert shape.swa == (True, False, True, False)
    assert shape.n_swa == 512


def test_archs_without_swa_ignore_the_window_key() -> None:
    header = fake_header(arch="qwen2", n_block=4, n_embd=512, n_head=8, n_head_kv=2, n_ff=1024,
                         n_vocab=1000, extra={"qwen2.attention.sliding_window": 128})
    assert not any(fit.model_shape(header).swa)


def test_q8_0_cache_is_34_of_64_of_f16() -> None:
    shape = fit.model_shape(MISTRAL_7B)
    sizes = {}
    for cache in ("f16", "q8_0"):
        settings = fit.FitSettings(ctx=8192, parallel=1, cache_type_k=cache, cache_type_v=cache)
        sizes[cache] = sum(fit.kv_layer_bytes(shape, settings, fit.kv_layout(shape, settings)))
    assert sizes["f16"] == 32 * 8192 * 1024 * 2 * 2  # 1 GiB, as llama.cpp logs for Mistral 7B
    assert sizes["q8_0"] * 64 == sizes["f16"] * 34


def test_mla_cache_has_no_v() -> None:
    header = fake_header(arch="deepseek2", n_block=4, n_embd=1024, n_head=16, n_head_kv=16,
                         n_ff=2048, n_vocab=1000,
                         extra={"deepseek2.attention.kv_lora_rank": 512,
                                "deepseek2.rope.dimension_count": 64})
    shape = fit.model_shape(header)
    assert shape.k_dim == (576,) * 4 and shape.v_dim == (0,) * 4


# -- weights placement and the answer ------------------------------------------------------------

def test_mistral_7b_fits_a_24_gb_card() -> None:
    est = fit.estimate_fit(MISTRAL_7B, 8192, 24 * GiB, parallel=1)
    assert est.fits == "full"
    assert est.gpu_layers == est.n_layers == 33
    assert 3.5 * GiB < est.weights_bytes < 4.5 * GiB
    assert est.kv_cache_bytes == GiB
    assert not est.notes
    assert est.total_vram_bytes == (est.weights_bytes + est.kv_cache_bytes + est.compute_bytes
                                    + est.overhead_bytes)


def test_70b_q4_needs_offload_on_24_gb() -> None:
    est = fit.estimate_fit(LLAMA_70B, 8192, 24 * GiB, parallel=1, ram_bytes=64 * GiB)
    assert 38 * GiB < est.model_bytes < 44 * GiB
    assert est.fits == "partial"
    assert 30 < est.gpu_layers < 50
    assert est.total_vram_bytes <= 24 * GiB
    assert est.ram_ok is True
    assert any("--fit" in note for note in est.notes)  # llama-server's own 1 GiB headroom
    one_more = fit.estimate_buffers(fit.model_shape(LLAMA_70B),
                                    fit.FitSettings(ctx=8192, parallel=1), est.gpu_layers + 1)
    assert one_more[0].total > 24 * GiB  # the largest -ngl that fits, not a smaller one
    short = fit.estimate_fit(LLAMA_70B, 8192, 24 * GiB, parallel=1, ram_bytes=8 * GiB)
    assert short.fits == "no"
    assert short.ram_ok is False


def test_gpu_layers_grow_with_vram() -> None:
    previous = -1
    for gib in (0.5, 1, 2, 3, 4, 5, 6, 8):
        est = fit.estimate_fit(MISTRAL_7B, 8192, int(gib * GiB), parallel=1)
        assert est.gpu_layers >= previous
        previous = est.gpu_layers
        assert est.fits == ("no" if est.gpu_layers == 0 else
                            "full" if est.gpu_layers == est.n_layers else "partial")
    assert previous == 33


def test_no_answer_reports_full_offload_needs() -> None:
    est = fit.estimate_fit(MISTRAL_7B, 8192, 256 * MiB, parallel=1)
    assert est.fits == "no" and est.gpu_layers == 0
    assert est.total_vram_bytes == est.full_vram_bytes > 4 * GiB


def test_tied_output_is_copied_to_the_gpu(gemma: GgufHeader) -> None:
    shape = fit.model_shape(gemma)
    settings = fit.FitSettings(ctx=4096, parallel=1)
    gpu, cpu = fit.estimate_buffers(shape, settings, shape.n_layers)
    embd = shape.tied_bytes
    assert embd == 178257920
    assert gpu.weights == sum(shape.block_bytes) + shape.output_bytes + embd
    assert cpu.weights == shape.input_bytes == embd  # the input layer stays on the CPU
    gpu0, cpu0 = fit.estimate_buffers(shape, settings, 0)
    assert gpu0.total == 0
    assert cpu0.weights == shape.weights_bytes  # CPU only: one copy


def test_partial_offload_keeps_first_blocks_on_cpu() -> None:
    shape = fit.model_shape(MISTRAL_7B)
    settings = fit.FitSettings(ctx=4096, parallel=1)
    gpu, cpu = fit.estimate_buffers(shape, settings, 10)  # output + the last 9 blocks
    assert gpu.weights == shape.output_bytes + sum(shape.block_bytes[23:])
    assert cpu.weights == shape.input_bytes + sum(shape.block_bytes[:23])
    layout = fit.kv_layout(shape, settings)
    kv = fit.kv_layer_bytes(shape, settings, layout)
    assert gpu.kv_cache == sum(kv[23:]) and cpu.kv_cache == sum(kv[:23])


def test_largest_fitting_quant() -> None:
    shape = fit.model_shape(MISTRAL_7B)
    cands = [fit.Candidate("Q8_0", int(7.2 * GiB)), fit.Candidate("Q4_K_M", int(4.1 * GiB)),
             fit.Candidate("Q2_K", int(2.7 * GiB))]
    best = fit.largest_fitting(shape, cands, 8192, 6 * GiB, parallel=1)
    assert best is not None and best.name == "Q4_K_M"
    assert fit.largest_fitting(shape, cands, 8192, 1 * GiB, parallel=1) is None


def test_missing_keys_and_bad_settings_are_clear() -> None:
    header = GgufHeader(version=3, metadata={"general.architecture": "llama"}, tensors=(),
                        alignment=32, data_offset=0)
    with pytest.raises(fit.FitError, match="block_count"):
        fit.model_shape(header)
    with pytest.raises(fit.FitError, match="cache type"):
        fit.estimate_fit(MISTRAL_7B, 8192, GiB, cache_type="q3")
    with pytest.raises(fit.FitError, match="head_count"):
        fit.model_shape(GgufHeader(version=3, metadata={
            "general.architecture": "llama", "llama.block_count": 2,
            "llama.embedding_length": 64}, tensors=(), alignment=32, data_offset=0))


# -- the command ---------------------------------------------------------------------------------

def _run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    runner = CliRunner()
    result = runner.invoke(cli, ["models", "fit", *args], env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


JSON_KEYS = {"fits", "n_layers", "gpu_layers", "weights_bytes", "kv_cache_bytes",
             "compute_bytes", "total_vram_bytes", "vram_bytes", "ctx"}


def test_cli_local_file_json_and_table() -> None:
    path = str(gemma_model_path())
    code, out, _ = _run([path, "--vram", "8", "--ctx", "4096", "--parallel", "1", "--json"])
    assert code == 0
    data = json.loads(out)
    assert set(data) >= JSON_KEYS
    assert data["fits"] == "full" and data["gpu_layers"] == data["n_layers"] == 19
    assert data["ctx"] == 4096 and data["vram_bytes"] == 8 * GiB
    code, out, _ = _run([path, "--vram", "0.25"])
    assert code == 1
    assert "Does not fit" in out and "Compute buffer" in out


def test_cli_errors_are_one_line() -> None:
    path = str(gemma_model_path())
    code, _, err = _run([path])
    assert code == 2 and "--vram" in err and err.count("\n") == 1
    code, _, err = _run([path, "--vram", "8", "--gpu", "auto"])
    assert code == 2
    code, _, err = _run(["/nonexistent/model.gguf", "--vram", "8"])
    assert code == 2 and "does not exist" in err
    code, _, err = _run([path, "--gpu", "auto"], env={"LD_LIBRARY_PATH": "/nonexistent"})
    if code == 2:  # no NVML here: the error must point at --vram
        assert "--vram" in err and err.count("\n") == 1


def test_cli_bad_gguf_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(6))
    code, _, err = _run([str(bad), "--vram", "8"])
    assert code == 1 and err.startswith("error: GGUF header is truncated")


def test_cli_hub_repo_reads_only_the_header(tmp_path: Path) -> None:
    gemma = gemma_model_path()
    big = tmp_path / "big.gguf"  # stands in for a bigger quant: only its listed size matters
    with big.open("wb") as handle:
        handle.truncate(3 * GiB)
    with HubServer() as hub:
        repo = hub.repo("google/gemma-3-270m-GGUF")
        repo.add("gemma-3-270m-Q4_K_M.gguf", source=gemma)
        big_file = repo.add("gemma-3-270m-BF16.gguf", source=big)
        big_file._sha256 = "0" * 64  # skip hashing 3 GiB of zeros; fit never reads it
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": ""}
        code, out, err = _run(["google/gemma-3-270m-GGUF", "--quant", "Q4_K_M", "--vram", "2",
                               "--ctx", "8192", "--json"], env=env)
        assert code == 0, err
        data = json.loads(out)
        assert data["fits"] == "full"
        assert data["header_bytes_read"] < 16 * MiB
        assert data["largest_fitting_quant"] == "Q4_K_M"  # BF16 at 3 GiB does not fit 2 GiB
        resolves = hub.resolve_requests("gemma-3-270m-Q4_K_M.gguf")
        assert resolves and all(r.range for r in resolves)
        assert not hub.resolve_requests("gemma-3-270m-BF16.gguf")
        code, out, _ = _run(["google/gemma-3-270m-GGUF", "--quant", "Q4_K_M", "--vram", "8",
                             "--json"], env=env)
        assert json.loads(out)["largest_fitting_quant"] == "BF16"
        code, _, err = _run(["google/gemma-3-270m-GGUF", "--quant", "Q5_K_M", "--vram", "8"],
                            env=env)
        assert code == 2 and "Q5_K_M" in err


def test_cli_gpu_auto_reads_gpu0_through_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """NVML is simulated at the pynvml boundary (tests/fixtures/nvml_sim.py): a 24 GiB 3090."""
    from hlctl.gpu import nvml
    from tests.fixtures.nvml_sim import NvmlSim

    monkeypatch.setattr(nvml, "load_pynvml", lambda: NvmlSim("healthy_3090"))
    code, out, err = _run([str(gemma_model_path()), "--gpu", "auto", "--json"])
    assert code == 0, err
    data = json.loads(out)
    assert data["vram_bytes"] == 25769803776
    assert data["ram_bytes"] is not None  # this host's RAM, for a partial offload
    monkeypatch.setattr(nvml, "load_pynvml", lambda: NvmlSim("driver_not_loaded"))
    code, _, err = _run([str(gemma_model_path()), "--gpu", "auto"])
    assert code == 2 and "--vram" in err and err.count("\n") == 1


def test_cli_hub_split_model(tmp_path: Path) -> None:
    parts = sg.write_split_model(tmp_path, sg.SPECS["llama"], parts=3)
    whole = fit.model_shape(read_file_header(sg.write_model(tmp_path / "w.gguf",
                                                            sg.SPECS["llama"])))
    with HubServer() as hub:
        repo = hub.repo("lab/split-GGUF")
        for part in parts:
            repo.add(f"Q8_0/{part.name.replace('synthetic-llama', 'llama-Q8_0')}", source=part)
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": ""}
        code, out, err = _run(["lab/split-GGUF", "--vram", "1", "--ctx", "2048", "--parallel",
                               "1", "--json"], env=env)
        assert code == 0, err
        data = json.loads(out)
        assert data["model_bytes"] == whole.weights_bytes  # all three headers were read
        assert len(hub.resolve_requests()) >= 3


def test_cli_partial_offload_names_the_ngl(tmp_path: Path) -> None:
    path = sg.write_model(tmp_path / "qwen2.gguf", sg.SPECS["qwen2"])
    shape = fit.model_shape(read_file_header(path))
    full = fit.estimate_fit(shape, 4096, 64 * GiB, parallel=1).full_vram_bytes
    vram = f"{(full - 3 * MiB) / GiB:.6f}"
    code, out, _ = _run([str(path), "--vram", vram, "--ctx", "4096", "--parallel", "1",
                         "--ram", "1", "--json"])
    data = json.loads(out)
    assert code == 0
    assert data["fits"] == "partial" and 0 < data["gpu_layers"] < data["n_layers"]
    assert data["ram_ok"] is True and data["total_vram_bytes"] <= data["vram_bytes"]
    code, out, _ = _run([str(path), "--vram", vram, "--ctx", "4096", "--parallel", "1"])
    assert code == 0
    assert f"-ngl {data['gpu_layers']} of {data['n_layers']} layers" in " ".join(out.split())
    code, out, _ = _run([str(path), "--vram", vram, "--ctx", "4096", "--parallel", "1",
                         "--ram", "0.001", "--json"])
    assert code == 1 and json.loads(out)["fits"] == "no" and json.loads(out)["ram_ok"] is False


def test_cli_gated_repo_needs_hf_token() -> None:
    with HubServer() as hub:
        repo = hub.repo("google/gated-GGUF", gated=True, tokens=frozenset({"hf_good"}))
        repo.add("model-Q4_K_M.gguf", source=gemma_model_path())
        args = ["google/gated-GGUF", "--vram", "8", "--json"]
        code, _, err = _run(args, env={"HF_ENDPOINT": hub.url, "HF_TOKEN": ""})
        assert code == 1 and "gated" in err and "HF_TOKEN" in err
        assert err.count("\n") == 1
        code, out, err = _run(args, env={"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_good"})
        assert code == 0, err
        assert json.loads(out)["fits"] == "full"
        assert all(r.authorization for r in hub.resolve_requests()[-1:])


def test_encoder_only_models_have_no_kv() -> None:
    header = fake_header(arch="bert", n_block=4, n_embd=256, n_head=4, n_head_kv=4, n_ff=512,
                         n_vocab=1000)
    est = fit.estimate_fit(header, 512, 8 * GiB)
    assert est.kv_cache_total_bytes == 0
