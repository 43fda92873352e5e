"""Estimate whether a GGUF model fits a GPU, from its header alone, the way llama.cpp sizes it.

Pure functions over dataclasses: :func:`model_shape` turns a :class:`GgufHeader` into the
hyperparameters llama.cpp would derive, :func:`estimate_buffers` sizes what llama-server
allocates for a given ``-ngl`` (model, KV cache and compute buffers per side), and
:func:`estimate_fit` answers "full", "partial" (with ``-ngl N``) or "no".

The rules follow llama.cpp (llama-context.cpp, llama-kv-cache*.cpp, llama-model.cpp):
- the context is padded to 256; with ``--parallel N`` and no unified KV, each of the N
  streams gets ``pad(n_ctx / N, 256)`` cells; llama-server's default (no ``--parallel``) is 4
  slots sharing one unified cache;
- sliding-window layers get their own cache of ``pad(min(n_ctx_seq, n_swa * (N if unified
  else 1) + n_ubatch), 256)`` cells per stream; which layers slide comes from the header's
  pattern (a period or per-layer flags) or the architecture's default period;
- ``-ngl N`` puts the last N of the n_block + 1 layers on the GPU (the +1 is the output
  layer); the token embedding always stays on the CPU, and a model whose output reuses the
  embedding (tied) gets a copy of it on the GPU; KV cache lives with its layer.
The compute buffer is llama.cpp's worst-case graph for one micro-batch: the logits of
``n_ubatch`` outputs plus the largest per-layer activations (see :func:`compute_buffer_bytes`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from hlctl.errors import HlctlError
from hlctl.models.gguf import GgufHeader

MiB = 1 << 20
GiB = 1 << 30
KV_PAD = 256
# CUDA context, cuBLAS workspace and the driver's own reservations on the card: not
# measurable without a GPU; 400-600 MiB on consumer cards under CUDA 12 is typical.
CUDA_OVERHEAD_BYTES = 512 * MiB
# llama-server's --fit (on by default) keeps this much of each GPU free (-fitt, in MiB there).
LLAMA_FIT_TARGET_BYTES = 1024 * MiB
# (block size, bytes per block) of the KV cache types llama.cpp accepts (-ctk / -ctv).
KV_TYPES: dict[str, tuple[int, int]] = {
    "f32": (1, 4), "f16": (1, 2), "bf16": (1, 2), "q8_0": (32, 34), "q4_0": (32, 18),
    "q4_1": (32, 20), "q5_0": (32, 22), "q5_1": (32, 24), "iq4_nl": (32, 18),
}
# Architectures that llama.cpp runs with a sliding-window cache: default period of the
# pattern, whether the dense layer comes first in each period, default window (None: the
# header must give it). Others ignore any sliding_window key in the header, as llama.cpp does.
SWA_ARCHS: dict[str, tuple[int, bool, int | None]] = {
    "gemma2": (2, False, 4096),
    "gemma3": (6, False, None),
    "gemma3n": (5, False, None),
    "cohere2": (4, False, None),
    "gpt-oss": (2, False, None),
    "exaone4": (4, False, None),
    "olmo2": (4, False, None),
    "llama4": (4, False, 8192),
    "afmoe": (4, False, None),
    "smallthinker": (4, True, None),
}
# Archs whose memory is (partly) recurrent state, which this estimate does not model.
RECURRENT_ARCHS = frozenset({"mamba", "mamba2", "rwkv6", "rwkv7", "arwkv7", "rwkv6qwen2",
                             "jamba", "falcon-h1", "nemotron_h", "granitehybrid", "lfm2",
                             "lfm2moe", "qwen3next", "plamo2"})
# Encoder-only models: llama.cpp gives them no KV cache at all (create_memory returns none).
NO_KV_ARCHS = frozenset({"bert", "jina-bert-v2", "jina-bert-v3", "nomic-bert",
                         "nomic-bert-moe", "neo-bert", "eurobert", "modern-bert",
                         "gemma-embedding", "wavtokenizer-dec", "dream", "llada", "llada-moe",
                         "rnd1"})
_BLOCK = re.compile(r"^blk\.(\d+)\.")
_INPUT_TENSORS = ("token_embd.", "token_embd_norm.", "token_types.", "position_embd.")

FitAnswer = Literal["full", "partial", "no"]


class FitError(HlctlError):
    """The header lacks what an estimate needs (unknown shape, missing keys)."""


@dataclass(frozen=True)
class ModelShape:
    """The hyperparameters and weight sizes llama.cpp would derive from a header."""

    arch: str
    n_block: int
    n_embd: int
    n_vocab: int
    n_ctx_train: int
    n_ff: int  # widest dense FFN
    n_head: tuple[int, ...]  # per block
    n_head_kv: tuple[int, ...]  # per block
    k_dim: tuple[int, ...]  # per block: K row width (head dim x kv heads)
    v_dim: tuple[int, ...]  # per block: V row width (0 for MLA)
    swa: tuple[bool, ...]  # per block: sliding-window layer
    n_swa: int
    block_bytes: tuple[int, ...]  # weights per block
    input_bytes: int  # token embedding & co, always on the CPU
    output_bytes: int  # output norm & head (and small leftovers), the "output layer"
    tied_bytes: int  # >0: the output reuses the embedding; its copy on a GPU costs this much
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_ff_shexp: int = 0
    notes: tuple[str, ...] = ()

    @property
    def n_ff_active(self) -> int:
        """FFN width one token passes through: dense, or the experts it is routed to."""
        if self.n_expert and self.n_expert_used and self.n_ff_exp:
            return max(self.n_ff_exp * self.n_expert_used + self.n_ff_shexp, self.n_ff)
        return self.n_ff

    @property
    def n_layers(self) -> int:
        """Offloadable layers as llama.cpp counts them (``-ngl``): blocks + the output layer."""
        return self.n_block + 1

    @property
    def weights_bytes(self) -> int:
        return sum(self.block_bytes) + self.input_bytes + self.output_bytes

    def scaled(self, weights_bytes: int) -> ModelShape:
        """The same architecture at another quant: weights scaled to ``weights_bytes``."""
        ratio = weights_bytes / max(self.weights_bytes, 1)
        return replace(self, block_bytes=tuple(round(b * ratio) for b in self.block_bytes),
                       input_bytes=round(self.input_bytes * ratio),
                       output_bytes=round(self.output_bytes * ratio),
                       tied_bytes=round(self.tied_bytes * ratio))


def _per_block(value: int | tuple[int, ...] | None, n_block: int, what: str) -> tuple[int, ...]:
    if value is None:
        raise FitError(f"the GGUF header gives no {what}")
    if isinstance(value, int):
        return (value,) * n_block
    if len(value) != n_block:
        raise FitError(f"the GGUF header gives {len(value)} values of {what} "
                       f"for {n_block} blocks")
    return tuple(value)


def _swa_layers(header: GgufHeader, arch: str, n_block: int) -> tuple[tuple[bool, ...], int]:
    default = SWA_ARCHS.get(arch)
    if default is None:
        return (False,) * n_block, 0
    period, dense_first, default_window = default
    window = header.sliding_window or default_window or 0
    if window <= 0:  # e.g. gemma3 without a window: every layer is dense
        return (False,) * n_block, 0
    pattern = header.sliding_window_pattern
    if isinstance(pattern, tuple):
        if len(pattern) != n_block:
            raise FitError(f"the GGUF header gives {len(pattern)} sliding-window flags "
                           f"for {n_block} blocks")
        return pattern, window
    if isinstance(pattern, int):
        period = pattern
    if period == 0:
        return (True,) * n_block, window
    if dense_first:
        return tuple(il % period != 0 for il in range(n_block)), window
    return tuple(il % period < period - 1 for il in range(n_block)), window


def model_shape(header: GgufHeader) -> ModelShape:
    """Derive llama.cpp's view of the model; FitError names what is missing."""
    arch = header.architecture
    if not arch:
        raise FitError("the GGUF header has no general.architecture")
    n_block = header.block_count
    n_embd = header.embedding_length
    if not n_block or n_block <= 0 or not n_embd or n_embd <= 0:
        raise FitError(f"the GGUF header lacks {arch}.block_count or {arch}.embedding_length")
    n_head = _per_block(header.head_count, n_block, f"{arch}.attention.head_count")
    n_head_kv_raw = header.head_count_kv
    n_head_kv = _per_block(n_head_kv_raw if n_head_kv_raw is not None else header.head_count,
                           n_block, f"{arch}.attention.head_count_kv")
    if n_head[0] <= 0:
        raise FitError(f"the GGUF header gives head_count {n_head[0]}")
    swa, n_swa = _swa_layers(header, arch, n_block)

    notes: list[str] = []
    kv_lora = header.arch_int("attention.kv_lora_rank")
    if kv_lora:  # MLA (DeepSeek 2/3, Kimi): one compressed K row, no V
        rope_dim = header.arch_int("rope.dimension_count") or 64
        k_dim = tuple((kv_lora + rope_dim) if h else 0 for h in n_head_kv)
        v_dim = (0,) * n_block
    else:
        hk_full = header.key_length or n_embd // n_head[0]
        hv_full = header.value_length or n_embd // n_head[0]
        hk_swa = header.key_length_swa or hk_full
        hv_swa = header.value_length_swa or hv_full
        k_dim = tuple((hk_swa if swa[il] else hk_full) * n_head_kv[il] for il in range(n_block))
        v_dim = tuple((hv_swa if swa[il] else hv_full) * n_head_kv[il] for il in range(n_block))
    if arch in NO_KV_ARCHS:
        k_dim = v_dim = (0,) * n_block
    if arch in RECURRENT_ARCHS:
        notes.append(f"{arch} keeps recurrent state that this estimate does not include")

    block_bytes = [0] * n_block
    input_bytes = output_bytes = 0
    names = set()
    for tensor in header.tensors:
        names.add(tensor.name)
        match = _BLOCK.match(tensor.name)
        if match:
            il = int(match.group(1))
            if il < n_block:
                block_bytes[il] += tensor.nbytes
            else:  # e.g. MTP/NextN blocks beyond block_count: llama.cpp puts them last
                output_bytes += tensor.nbytes
        elif tensor.name.startswith(_INPUT_TENSORS):
            input_bytes += tensor.nbytes
        else:
            output_bytes += tensor.nbytes
    tied = 0
    if "output.weight" not in names:
        tied = sum(t.nbytes for t in header.tensors if t.name == "token_embd.weight")

    n_vocab = header.vocab_size or 0
    if n_vocab <= 0:
        raise FitError("the GGUF header gives no vocabulary size")
    n_ff_raw = header.arch_int_or_list("feed_forward_length")
    n_ff = max(n_ff_raw) if isinstance(n_ff_raw, tuple) and n_ff_raw else (
        n_ff_raw if isinstance(n_ff_raw, int) else 4 * n_embd)
    n_expert = header.arch_int("expert_count") or 0
    n_ff_exp = header.arch_int("expert_feed_forward_length") or (n_ff if n_expert else 0)
    n_shared = header.arch_int("expert_shared_count") or 0
    n_ff_shexp = (header.arch_int("expert_shared_feed_forward_length") or n_ff_exp) * n_shared
    return ModelShape(arch=arch, n_block=n_block, n_embd=n_embd, n_vocab=n_vocab,
                      n_ctx_train=header.context_length or 0, n_ff=n_ff, n_head=n_head,
                      n_head_kv=n_head_kv, k_dim=k_dim, v_dim=v_dim, swa=swa, n_swa=n_swa,
                      block_bytes=tuple(block_bytes), input_bytes=input_bytes,
                      output_bytes=output_bytes, tied_bytes=tied, n_expert=n_expert,
                      n_expert_used=header.arch_int("expert_used_count") or 0,
                      n_ff_exp=n_ff_exp, n_ff_shexp=n_ff_shexp, notes=tuple(notes))


# -- settings and KV layout -----------------------------------------------------------------------

@dataclass(frozen=True)
class FitSettings:
    """The llama-server options that change memory. ``parallel=None`` is llama-server's
    default: 4 slots sharing one unified KV cache."""

    ctx: int = 8192  # 0: the model's training context, as llama.cpp does
    parallel: int | None = None
    kv_unified: bool | None = None  # None: unified exactly when parallel is None
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    n_batch: int = 2048
    n_ubatch: int = 512
    flash_attn: bool = True  # llama-server's "auto" enables it where the backend supports it
    swa_full: bool = False

    def __post_init__(self) -> None:
        for name in (self.cache_type_k, self.cache_type_v):
            if name not in KV_TYPES:
                raise FitError(f"unknown cache type {name!r}",
                               hint=f"one of {', '.join(KV_TYPES)}")
        if self.ctx < 0:
            raise FitError(f"context size must be positive, got {self.ctx}")
        if self.parallel is not None and self.parallel < 1:
            raise FitError(f"--parallel must be at least 1, got {self.parallel}")

    @property
    def n_seq(self) -> int:
        return 4 if self.parallel is None else self.parallel

    @property
    def unified(self) -> bool:
        return self.parallel is None if self.kv_unified is None else self.kv_unified


def _pad(value: int, to: int = KV_PAD) -> int:
    return -(-value // to) * to


@dataclass(frozen=True)
class KvLayout:
    n_ctx: int  # after padding and rounding, as llama.cpp logs it
    n_ctx_seq: int
    n_stream: int
    size_full: int  # cells per stream of a dense layer
    size_swa: int  # cells per stream of a sliding-window layer
    n_ubatch: int  # the micro-batch the worst-case graph uses


def kv_layout(shape: ModelShape, settings: FitSettings) -> KvLayout:
    n_ctx = settings.ctx or shape.n_ctx_train
    if n_ctx <= 0:
        raise FitError("no context size given and the model states no training context")
    n_seq = settings.n_seq
    n_ctx = _pad(n_ctx)
    if settings.unified:
        n_ctx_seq = n_ctx
        n_stream = 1
    else:
        n_ctx_seq = _pad(n_ctx // n_seq)
        n_ctx = n_ctx_seq * n_seq
        n_stream = n_seq
    n_batch = min(n_ctx, settings.n_batch)
    n_ubatch = min(n_batch, settings.n_ubatch)
    size_swa = n_ctx_seq
    if any(shape.swa) and not settings.swa_full:
        size_swa = _pad(min(n_ctx_seq, shape.n_swa * (n_seq if settings.unified else 1)
                            + n_ubatch))
    return KvLayout(n_ctx=n_ctx, n_ctx_seq=n_ctx_seq, n_stream=n_stream, size_full=n_ctx_seq,
                    size_swa=size_swa, n_ubatch=min(n_ctx, n_ubatch))


def _row_bytes(type_name: str, width: int) -> int:
    block, size = KV_TYPES[type_name]
    return -(-width // block) * size


def kv_layer_bytes(shape: ModelShape, settings: FitSettings, layout: KvLayout) -> tuple[int, ...]:
    """KV cache bytes of each block (K and V, all streams)."""
    out = []
    for il in range(shape.n_block):
        cells = (layout.size_swa if shape.swa[il] else layout.size_full) * layout.n_stream
        k = _row_bytes(settings.cache_type_k, shape.k_dim[il]) if shape.k_dim[il] else 0
        v = _row_bytes(settings.cache_type_v, shape.v_dim[il]) if shape.v_dim[il] else 0
        out.append((k + v) * cells)
    return tuple(out)


def compute_buffer_bytes(shape: ModelShape, settings: FitSettings, layout: KvLayout) -> int:
    """llama.cpp's worst-case compute buffer: one micro-batch of ``n_ubatch`` tokens.

    ggml's allocator reuses memory, so the buffer is what is alive at the peak:
    - the attention masks, graph inputs alive throughout: one per cache (dense, sliding), each
      ``cells per stream x n_ubatch``, f16 with flash attention, f32 without;
    - plus the larger of one layer's activations, per token: the FFN's gate, up and product
      (for MoE: those of the experts used, and the router's scores) or the attention's
      query-sized tensors (without flash attention, the full score matrix over the cache),
      or the output head's logits (llama-server asks for one output per slot, so
      ``n_vocab x slots``), whichever is larger, next to ~5 hidden-state rows per token.
    Measured on llama-server's CPU backend, this matches its log to within 1% for dense
    models (tests/integration/test_fit_accuracy.py).
    """
    n_tok = layout.n_ubatch
    f32 = 4
    has_dense = not all(shape.swa)
    has_swa = any(shape.swa)
    mask_elem = 2 if settings.flash_attn else 4
    masks = n_tok * mask_elem * ((layout.size_full if has_dense else 0)
                                 + (layout.size_swa if has_swa else 0))
    q_dim = max(h * (k // max(kv, 1)) for h, k, kv in
                zip(shape.n_head, shape.k_dim, shape.n_head_kv, strict=True))
    ffn_width = 3 * shape.n_ff_active + shape.n_expert
    attn_width = 2 * q_dim + 2 * max(shape.k_dim)
    n_out = min(n_tok, settings.n_seq)
    peak = max(max(ffn_width, attn_width) * n_tok * f32, shape.n_vocab * n_out * f32)
    total = masks + 5 * shape.n_embd * n_tok * f32 + peak
    if not settings.flash_attn:
        # the score matrix of the widest cache, its softmax input, and the query-sized tensors
        n_kv = max(layout.size_swa if s else layout.size_full for s in shape.swa)
        attn = (max(shape.n_head) * n_kv + 11 * q_dim // 2 + shape.n_embd) * n_tok * f32
        total = max(total, masks + attn)
    return total


# -- buffers and the answer ------------------------------------------------------------------------

@dataclass(frozen=True)
class Buffers:
    """What llama-server allocates on one side (GPU or CPU), by kind, in bytes."""

    weights: int = 0
    kv_cache: int = 0
    compute: int = 0
    overhead: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.overhead


def estimate_buffers(shape: ModelShape, settings: FitSettings, gpu_layers: int, *,
                     overhead_bytes: int = CUDA_OVERHEAD_BYTES) -> tuple[Buffers, Buffers]:
    """(GPU, CPU) buffers for ``-ngl gpu_layers`` (0 = CPU only, as in the accuracy test)."""
    gpu_layers = max(0, min(gpu_layers, shape.n_layers))
    layout = kv_layout(shape, settings)
    kv = kv_layer_bytes(shape, settings, layout)
    compute = compute_buffer_bytes(shape, settings, layout)
    first_gpu_block = shape.n_layers - gpu_layers  # blocks from here on are on the GPU
    gpu_blocks = range(first_gpu_block, shape.n_block)
    cpu_blocks = range(0, min(first_gpu_block, shape.n_block))
    output_on_gpu = gpu_layers >= 1
    gpu_weights = sum(shape.block_bytes[il] for il in gpu_blocks)
    cpu_weights = shape.input_bytes + sum(shape.block_bytes[il] for il in cpu_blocks)
    if output_on_gpu:
        gpu_weights += shape.output_bytes + shape.tied_bytes
    else:
        cpu_weights += shape.output_bytes
    if gpu_layers == 0:
        return Buffers(), Buffers(weights=cpu_weights, kv_cache=sum(kv), compute=compute)
    gpu = Buffers(weights=gpu_weights, kv_cache=sum(kv[il] for il in gpu_blocks),
                  compute=compute, overhead=overhead_bytes)
    # With everything offloaded the host keeps only input staging; a partial offload runs
    # the CPU layers' activations on the host too.
    host_compute = (layout.n_ubatch * shape.n_embd * 4 if first_gpu_block <= 0
                    else compute)
    cpu = Buffers(weights=cpu_weights, kv_cache=sum(kv[il] for il in cpu_blocks),
                  compute=host_compute)
    return gpu, cpu


@dataclass(frozen=True)
class FitEstimate:
    """The answer, with the figures behind it (bytes). For fits="no" the GPU figures are
    those of a full offload, i.e. what the card would need."""

    fits: FitAnswer
    n_layers: int  # as -ngl counts: blocks + output layer
    n_blocks: int
    gpu_layers: int  # the -ngl value to run with (n_layers for a full offload)
    weights_bytes: int  # on the GPU
    kv_cache_bytes: int  # on the GPU
    compute_bytes: int  # on the GPU
    overhead_bytes: int
    total_vram_bytes: int  # the GPU needs this much at gpu_layers
    vram_bytes: int  # the GPU has this much
    ctx: int  # the context llama.cpp will use (padded)
    ctx_requested: int
    parallel: int
    kv_unified: bool
    cache_type: str
    full_vram_bytes: int  # what a full offload needs
    model_bytes: int  # all weights
    kv_cache_total_bytes: int  # KV of all layers at this context
    ram_needed_bytes: int  # host memory for the CPU side at gpu_layers
    ram_bytes: int | None
    ram_ok: bool | None
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, object]:
        return {
            "fits": self.fits, "n_layers": self.n_layers, "n_blocks": self.n_blocks,
            "gpu_layers": self.gpu_layers, "weights_bytes": self.weights_bytes,
            "kv_cache_bytes": self.kv_cache_bytes, "compute_bytes": self.compute_bytes,
            "overhead_bytes": self.overhead_bytes, "total_vram_bytes": self.total_vram_bytes,
            "vram_bytes": self.vram_bytes, "ctx": self.ctx, "ctx_requested": self.ctx_requested,
            "parallel": self.parallel, "kv_unified": self.kv_unified,
            "cache_type": self.cache_type, "full_vram_bytes": self.full_vram_bytes,
            "model_bytes": self.model_bytes, "kv_cache_total_bytes": self.kv_cache_total_bytes,
            "ram_needed_bytes": self.ram_needed_bytes, "ram_bytes": self.ram_bytes,
            "ram_ok": self.ram_ok, "notes": list(self.notes),
        }


def estimate_fit(header: GgufHeader | ModelShape, ctx: int, vram_bytes: int, *,
                 cache_type: str = "f16", parallel: int | None = None,
                 ram_bytes: int | None = None, kv_unified: bool | None = None,
                 n_batch: int = 2048, n_ubatch: int = 512, flash_attn: bool = True,
                 overhead_bytes: int = CUDA_OVERHEAD_BYTES) -> FitEstimate:
    """Will the model run with everything on a GPU of ``vram_bytes``, with part, or not at all?"""
    shape = header if isinstance(header, ModelShape) else model_shape(header)
    settings = FitSettings(ctx=ctx, parallel=parallel, kv_unified=kv_unified,
                           cache_type_k=cache_type, cache_type_v=cache_type, n_batch=n_batch,
                           n_ubatch=n_ubatch, flash_attn=flash_attn)
    layout = kv_layout(shape, settings)
    full_gpu, full_cpu = estimate_buffers(shape, settings, shape.n_layers,
                                          overhead_bytes=overhead_bytes)
    notes = list(shape.notes)
    if shape.n_ctx_train and layout.n_ctx_seq > shape.n_ctx_train:
        notes.append(f"context {layout.n_ctx_seq} per slot exceeds the model's training "
                     f"context {shape.n_ctx_train}")

    chosen, gpu, cpu = 0, full_gpu, full_cpu
    if full_gpu.total <= vram_bytes:
        chosen = shape.n_layers
    else:
        for n in range(shape.n_layers - 1, 0, -1):
            g, c = estimate_buffers(shape, settings, n, overhead_bytes=overhead_bytes)
            if g.total <= vram_bytes:
                chosen, gpu, cpu = n, g, c
                break
    ram_ok = None if ram_bytes is None else cpu.total <= ram_bytes
    if chosen > 0 and vram_bytes - gpu.total < LLAMA_FIT_TARGET_BYTES:
        notes.append(f"less than {LLAMA_FIT_TARGET_BYTES // MiB} MiB stays free: llama-server's "
                     "--fit (on by default) may offload fewer layers or shrink the context; "
                     "run it with -ngl and -c set, or -fit off")
    if chosen == shape.n_layers:
        fits: FitAnswer = "full"
    elif chosen > 0 and ram_ok is not False:
        fits = "partial"
    else:
        fits = "no"
        if chosen > 0:
            notes.append("the layers left on the CPU need more RAM than the host has")
        chosen, gpu, cpu = 0, full_gpu, full_cpu
        _, cpu_only = estimate_buffers(shape, settings, 0)
        cpu = cpu_only
        ram_ok = None if ram_bytes is None else cpu.total <= ram_bytes
    all_kv = sum(kv_layer_bytes(shape, settings, layout))
    return FitEstimate(
        fits=fits, n_layers=shape.n_layers, n_blocks=shape.n_block, gpu_layers=chosen,
        weights_bytes=gpu.weights, kv_cache_bytes=gpu.kv_cache, compute_bytes=gpu.compute,
        overhead_bytes=gpu.overhead, total_vram_bytes=gpu.total, vram_bytes=vram_bytes,
        ctx=layout.n_ctx, ctx_requested=ctx, parallel=settings.n_seq,
        kv_unified=settings.unified, cache_type=cache_type, full_vram_bytes=full_gpu.total,
        model_bytes=shape.weights_bytes, kv_cache_total_bytes=all_kv,
        ram_needed_bytes=cpu.total, ram_bytes=ram_bytes, ram_ok=ram_ok, notes=tuple(notes))


@dataclass(frozen=True)
class Candidate:
    """Another file of the same model at another quant: its name and its tensor data size."""

    name: str
    weights_bytes: int


def largest_fitting(shape: ModelShape, candidates: Sequence[Candidate], ctx: int,
                    vram_bytes: int, **options: object) -> Candidate | None:
    """The biggest candidate that fits fully. The architecture (KV, compute) is the same for
    every quant of a model, so one header serves and only the weights scale."""
    best: Candidate | None = None
    for cand in sorted(candidates, key=lambda c: c.weights_bytes, reverse=True):
        estimate = estimate_fit(shape.scaled(cand.weights_bytes), ctx, vram_bytes,
                                **options)  # type: ignore[arg-type]
        if estimate.fits == "full":
            best = cand
            break
    return best
