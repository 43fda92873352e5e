"""Fuzz the bounded GGUF header reader: whatever the bytes, a header or a GgufError, fast.

At least 10,000 generated inputs run per CI run (``HLCTL_FUZZ_EXAMPLES`` raises or lowers
it): random bytes behind a valid preamble, and mutations (byte flips, 64-bit integers written
over counts and lengths, truncation, insertion) of a real header written by GGUFWriter with
every value type. The reader must return a GgufHeader or raise a GgufError subclass; any other
exception, or a slow parse (a sign of work proportional to a claimed count), fails.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hlctl.models import gguf as hg

TOTAL = int(os.environ.get("HLCTL_FUZZ_EXAMPLES", "10000"))
SMALL_LIMITS = hg.GgufLimits(max_header_bytes=1 << 20, first_read=4096)
_FUZZ_SETTINGS = dict(deadline=None, database=None, derandomize=False,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _base_header(tmp: Path) -> bytes:
    path = tmp / "fuzz-base.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(2)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_array("llama.attention.head_count_kv", [1, 2])
    writer.add_array("llama.attention.sliding_window_pattern", [True, False])
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_string("general.name", "fuzz")
    writer.add_token_list(["<unk>", "a", "bb", "ccc"])
    writer.add_int64("x.i64", -5)
    writer.add_float64("x.f64", 0.5)
    writer.add_array("x.f32s", [0.5, 1.5])
    writer.add_tensor("token_embd.weight", np.zeros((4, 64), dtype=np.float16))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
    writer.add_tensor("output.weight", np.zeros((4, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    header = hg.read_header(hg.BytesSource(data))
    return data[:header.data_offset]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return _base_header(tmp_path_factory.mktemp("fuzz"))


def _parse(data: bytes) -> None:
    started = time.perf_counter()
    try:
        header = hg.read_header(hg.BytesSource(data), SMALL_LIMITS)
    except hg.GgufError as exc:
        assert str(exc)
    else:
        assert header.data_offset >= 24
        assert all(t.nbytes >= 0 for t in header.tensors)
    # work follows the bytes present, never a claimed count: tiny inputs parse in microseconds
    assert time.perf_counter() - started < 0.5


def test_random_bytes_after_a_valid_preamble() -> None:
    count = 0

    @settings(max_examples=TOTAL * 3 // 10, **_FUZZ_SETTINGS)
    @given(version=st.sampled_from([1, 2, 3, 4, 0x03000000]),
           n_tensors=st.one_of(st.integers(0, 8), st.integers(0, 2**64 - 1)),
           n_kv=st.one_of(st.integers(0, 8), st.integers(0, 2**64 - 1)),
           body=st.binary(max_size=512))
    def run(version: int, n_tensors: int, n_kv: int, body: bytes) -> None:
        nonlocal count
        count += 1
        _parse(b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + body)

    run()
    assert count >= TOTAL * 3 // 10


_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 4095), st.integers(1, 255)),
    st.tuples(st.just("u64"), st.integers(0, 4095),
              st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1, 1 << 20, 1 << 40])),
    st.tuples(st.just("u32"), st.integers(0, 4095),
              st.sampled_from([0, 4, 5, 8, 9, 12, 13, 77, 2**32 - 1])),
    st.tuples(st.just("cut"), st.integers(0, 4095), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 4095), st.integers(0, 255)),
)


def _mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, where, value in mutations:
        if not buf:
            break
        pos = where % len(buf)
        if kind == "flip":
            buf[pos] ^= value
        elif kind == "u64":
            buf[pos:pos + 8] = struct.pack("<Q", value)
        elif kind == "u32":
            buf[pos:pos + 4] = struct.pack("<I", value)
        elif kind == "cut":
            del buf[pos:]
        else:
            buf.insert(pos, value)
    return bytes(buf)


def test_mutations_of_a_real_header(base: bytes) -> None:
    count = 0

    @settings(max_examples=TOTAL - TOTAL * 3 // 10, **_FUZZ_SETTINGS)
    @given(mutations=st.lists(_mutation, min_size=1, max_size=4))
    def run(mutations: list[tuple[str, int, int]]) -> None:
        nonlocal count
        count += 1
        _parse(_mutate(base, mutations))

    run()
    assert count >= TOTAL - TOTAL * 3 // 10


def test_unmutated_base_parses(base: bytes) -> None:
    header = hg.read_header(hg.BytesSource(base), SMALL_LIMITS)
    assert header.head_count_kv == (1, 2)
    assert header.sliding_window_pattern == (True, False)
    assert header.metadata["x.i64"] == -5
    assert [t.name for t in header.tensors] == ["token_embd.weight", "blk.0.attn_norm.weight",
                                                "output.weight"]
