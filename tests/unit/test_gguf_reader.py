"""The bounded GGUF header reader against real files, the gguf package's reader, and hostile bytes.

Real parts: GGUF files written by the ``gguf`` package's GGUFWriter, the real Gemma 3 270M
file, the ``gguf`` package's own GGUFReader as the reference, and a real HTTP server (stdlib,
threaded, honouring Range) for RangeSource.
"""

from __future__ import annotations

import threading
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import gguf
import pytest

from hlctl.models import gguf as hg
from tests.fixtures import synthetic_gguf as sg
from tests.fixtures.llama_build import gemma_model_path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf")
    return {name: sg.write_model(root / f"{name}.gguf", spec) for name, spec in sg.SPECS.items()}


def _assert_matches_reference(path: Path, header: hg.GgufHeader) -> None:
    ref = gguf.GGUFReader(path)
    assert header.data_offset == ref.data_offset
    assert header.alignment == ref.alignment
    assert [t.name for t in header.tensors] == [t.name for t in ref.tensors]
    for mine, theirs in zip(header.tensors, ref.tensors, strict=True):
        assert mine.shape == tuple(int(d) for d in theirs.shape)
        assert mine.ggml_type == int(theirs.tensor_type)
        assert header.data_offset + mine.offset == int(theirs.data_offset)
        assert mine.nbytes == int(theirs.n_bytes)
    for key, field in ref.fields.items():
        if key.startswith("GGUF."):
            continue
        value = header.metadata[key]
        if isinstance(value, hg.ArraySummary):
            assert value.length == len(field.data)
        elif field.types[0] == gguf.GGUFValueType.STRING:
            assert value == field.contents()
        elif isinstance(value, float):
            assert value == pytest.approx(field.contents())
        else:
            assert value == field.contents()


@pytest.mark.parametrize("name", sorted(sg.SPECS))
def test_synthetic_models_match_gguf_reader(models: dict[str, Path], name: str) -> None:
    header = hg.read_file_header(models[name])
    _assert_matches_reference(models[name], header)
    spec = sg.SPECS[name]
    assert header.architecture == spec.arch
    assert header.block_count == spec.n_layer
    assert header.embedding_length == spec.n_embd
    assert header.head_count == spec.n_head
    assert header.head_count_kv == spec.n_head_kv
    assert header.vocab_size == spec.n_vocab
    assert header.sliding_window == spec.sliding_window
    expected_pattern = tuple(spec.swa_pattern) if isinstance(spec.swa_pattern, list) \
        else spec.swa_pattern
    assert header.sliding_window_pattern == expected_pattern
    # the tensor data the header describes ends exactly at the end of the file
    end = max(header.data_offset + t.offset + t.nbytes for t in header.tensors)
    assert end == models[name].stat().st_size


def test_real_gemma_header() -> None:
    # GGUFReader takes ~40 s on this file's 262k-token vocabulary, so the reference check
    # runs on the synthetic models; here the known facts and the data layout must agree.
    path = gemma_model_path()
    header = hg.read_file_header(path)
    end = max(header.data_offset + t.offset + t.nbytes for t in header.tensors)
    assert end == path.stat().st_size
    assert header.tensor_bytes == 246587904
    assert header.architecture == "gemma3"
    assert header.block_count == 18
    assert header.sliding_window == 512
    assert header.key_length == 256
    assert header.vocab_size == 262144
    assert isinstance(header.metadata["tokenizer.ggml.tokens"], hg.ArraySummary)
    assert len(header.tensors) == 236


def test_split_model_merges_all_parts(tmp_path: Path) -> None:
    parts = sg.write_split_model(tmp_path, sg.SPECS["llama"], parts=3)
    assert len(parts) == 3
    whole = hg.read_file_header(sg.write_model(tmp_path / "whole.gguf", sg.SPECS["llama"]))
    merged = hg.read_model_header(parts[1])  # any part finds its siblings
    assert merged.files == 3
    assert sorted(t.name for t in merged.tensors) == sorted(t.name for t in whole.tensors)
    assert merged.tensor_bytes == whole.tensor_bytes
    parts[2].unlink()
    with pytest.raises(hg.GgufSourceError, match="missing part"):
        hg.read_model_header(parts[0])


@pytest.mark.parametrize("name", sorted(sg.hostile_headers()))
def test_hostile_headers_raise_their_error(name: str) -> None:
    data, error_name = sg.hostile_headers()[name]
    with pytest.raises(hg.GgufError) as caught:
        hg.read_header(hg.BytesSource(data))
    assert type(caught.value).__name__ == error_name
    assert str(caught.value)  # one sentence for the user


@pytest.mark.parametrize("name", ["huge_tensor_count", "huge_kv_count", "huge_array",
                                  "huge_string_value", "u64_array_past_header_limit"])
def test_claimed_sizes_allocate_nothing(name: str) -> None:
    data, _ = sg.hostile_headers()[name]
    tracemalloc.start()
    try:
        with pytest.raises(hg.GgufError):
            hg.read_header(hg.BytesSource(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024


def test_every_truncation_is_reported(models: dict[str, Path]) -> None:
    data = models["gemma2"].read_bytes()
    header = hg.read_header(hg.BytesSource(data))
    end = header.header_size
    cuts = sorted({*range(0, 64), *range(64, end, max(1, end // 150)), end - 1})
    for cut in cuts:
        with pytest.raises(hg.GgufError):
            hg.read_header(hg.BytesSource(data[:cut]))


def test_header_limit_applies(models: dict[str, Path]) -> None:
    with pytest.raises(hg.GgufLimitError, match="larger than"):
        hg.read_file_header(models["qwen2"], hg.GgufLimits(max_header_bytes=4096))


def test_missing_file_and_directory_are_source_errors(tmp_path: Path) -> None:
    with pytest.raises(hg.GgufSourceError, match="cannot open"):
        hg.read_file_header(tmp_path / "nope.gguf")
    with pytest.raises(hg.GgufSourceError, match="directory"):
        hg.read_file_header(tmp_path)


# -- RangeSource over real HTTP -----------------------------------------------------------------

class _RangeServer:
    """Serves one file; honours Range unless ``ignore_range``; checks a bearer token if set."""

    def __init__(self, data: bytes, *, token: str | None = None,
                 ignore_range: bool = False, lie_about_range: bool = False) -> None:
        self.data = data
        self.token = token
        self.ignore_range = ignore_range
        self.lie = lie_about_range  # always serve from byte 0, and say so
        self.auth_seen: list[str | None] = []
        self.bytes_sent = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                auth = self.headers.get("Authorization")
                outer.auth_seen.append(auth)
                if outer.token and auth != f"Bearer {outer.token}":
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, end = 0, len(outer.data)
                rng = self.headers.get("Range")
                status = 200
                if rng and not outer.ignore_range:
                    first, last = rng.removeprefix("bytes=").split("-")
                    start, end = int(first), min(int(last) + 1, len(outer.data))
                    if outer.lie:
                        start, end = 0, end - start
                    if start >= len(outer.data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                self.send_response(status)
                if status == 206:
                    self.send_header("Content-Range",
                                     f"bytes {start}-{end - 1}/{len(outer.data)}")
                self.send_header("Content-Length", str(end - start))
                self.end_headers()
                try:
                    for offset in range(start, end, 1 << 16):
                        chunk = outer.data[offset:min(end, offset + (1 << 16))]
                        self.wfile.write(chunk)
                        outer.bytes_sent += len(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading, as RangeSource does

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/model.gguf"

    def __enter__(self) -> _RangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def gemma_bytes() -> Iterator[bytes]:
    yield gemma_model_path().read_bytes()


def test_range_source_reads_only_the_header(gemma_bytes: bytes) -> None:
    with _RangeServer(gemma_bytes) as server, hg.RangeSource(server.url) as source:
        header = hg.read_header(source)
        fetched = source.bytes_fetched
    assert header == hg.read_file_header(gemma_model_path())
    assert header.data_offset < fetched < 16 << 20  # a few MB of a 253 MB file
    assert fetched < len(gemma_bytes) / 10


def test_range_source_sends_the_token_and_reports_gated(gemma_bytes: bytes) -> None:
    with _RangeServer(gemma_bytes, token="s3cret") as server:
        with hg.RangeSource(server.url, token="s3cret") as source:
            assert hg.read_header(source).architecture == "gemma3"
        assert server.auth_seen[0] == "Bearer s3cret"
        with hg.RangeSource(server.url) as source, \
                pytest.raises(hg.GgufSourceError, match=r"gated.*HF_TOKEN"):
            hg.read_header(source)


def test_range_source_refuses_a_server_without_ranges(gemma_bytes: bytes) -> None:
    with _RangeServer(gemma_bytes, ignore_range=True) as server, \
            hg.RangeSource(server.url) as source:
        with pytest.raises(hg.GgufSourceError, match="ignores HTTP Range"):
            hg.read_header(source)
        assert source.bytes_fetched < 8 << 20  # it stopped reading, never the whole file


def test_range_source_refuses_a_wrong_content_range(gemma_bytes: bytes) -> None:
    with _RangeServer(gemma_bytes, lie_about_range=True) as server, \
            hg.RangeSource(server.url) as source, \
            pytest.raises(hg.GgufSourceError, match="answered range"):
        hg.read_header(source)


def test_range_source_truncated_remote_file(models: dict[str, Path]) -> None:
    data = models["llama"].read_bytes()[:1000]
    with _RangeServer(data) as server, hg.RangeSource(server.url) as source, \
            pytest.raises(hg.GgufTruncatedError):
        hg.read_header(source)


def test_range_source_unreachable() -> None:
    with hg.RangeSource("http://127.0.0.1:9/x.gguf", timeout=2) as source, \
            pytest.raises(hg.GgufSourceError, match="cannot read"):
        hg.read_header(source)
