"""Read a GGUF header (metadata, tensor infos) from any byte source, bounded against hostile files.

A header arrives from the network as often as from disk, so every count and length is checked
against a limit *before* anything is read or allocated for it: a claimed array of 2**60 strings
costs nothing until its bytes actually arrive, and reading stops at ``max_header_bytes``.
Large arrays (the tokenizer's vocabulary) are walked and dropped, keeping only their type and
length; small ones (per-layer head counts, the sliding-window pattern) are kept.

Sources implement ``read(offset, size) -> bytes`` and may return fewer bytes at the end of the
file: :class:`FileSource` for a local file, :class:`RangeSource` for a URL (HTTP Range requests
that fetch only what the parser asks for, in growing chunks, never the whole file).

The ``gguf`` package's ``GGUFReader`` memory-maps the whole file; this reader needs only the
first few megabytes and can run on a file that is still on the hub.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from hlctl.errors import HlctlError

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)


class GgufError(HlctlError):
    """The bytes are not a GGUF header this reader accepts (bad, hostile or truncated)."""


class GgufTruncatedError(GgufError):
    """The source ended before the header did."""


class GgufLimitError(GgufError):
    """A count, length or size in the header exceeds a sane limit."""


class GgufSourceError(GgufError):
    """The byte source itself failed (file unreadable, HTTP error)."""


class ByteSource(Protocol):
    """Anything that returns up to ``size`` bytes at ``offset`` (fewer only at the end)."""

    def read(self, offset: int, size: int) -> bytes: ...


@dataclass(frozen=True)
class GgufLimits:
    """Bounds on what a header may claim. Real files sit far below every one of them."""

    max_header_bytes: int = 256 << 20  # the biggest real headers (huge vocabularies) are ~20 MB
    max_tensors: int = 1 << 20
    max_kv: int = 1 << 16
    max_key_len: int = 1 << 16
    max_string_len: int = 16 << 20  # chat templates reach ~100 KB
    max_tensor_name_len: int = 1024  # ggml itself allows 63
    max_array_len: int = 1 << 28
    max_array_depth: int = 2
    keep_array_len: int = 4096  # arrays up to this long are kept (per-layer values)
    first_read: int = 1 << 20
    max_read: int = 16 << 20


DEFAULT_LIMITS = GgufLimits()


# GGUF value types -> struct format of one element (little-endian).
_SCALAR_FORMATS: dict[int, str] = {
    0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d",
}
_STRING, _ARRAY = 8, 9
_STRUCTS = {fmt: struct.Struct("<" + fmt) for fmt in _SCALAR_FORMATS.values()}
_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32",
               6: "float32", 7: "bool", 8: "string", 9: "array", 10: "uint64", 11: "int64",
               12: "float64"}


@dataclass(frozen=True)
class ArraySummary:
    """An array too long to keep: its element type and length only."""

    element_type: str
    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: shape[0] is the contiguous dimension
    ggml_type: int
    offset: int  # relative to the start of the tensor data

    @property
    def type_name(self) -> str:
        return GGMLQuantizationType(self.ggml_type).name

    @property
    def n_elements(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def nbytes(self) -> int:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(self.ggml_type)]
        return self.n_elements // block * type_size


@dataclass(frozen=True)
class GgufHeader:
    """What a GGUF file says about itself before its tensor data starts."""

    version: int
    metadata: Mapping[str, Any]  # scalars, strings, kept lists, or ArraySummary
    tensors: tuple[TensorInfo, ...]
    alignment: int
    data_offset: int  # where tensor data starts in the file
    files: int = 1  # >1 for a split model merged by merge_split_headers
    header_size: int = 0  # bytes of header before the alignment padding
    extra: Mapping[str, Any] = field(default_factory=dict)

    # -- general ----------------------------------------------------------------------------
    @property
    def architecture(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None

    @property
    def split_count(self) -> int:
        value = self.metadata.get("split.count")
        return value if isinstance(value, int) and value > 0 else 1

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def arch_value(self, key: str) -> Any:
        """``{architecture}.{key}`` from the metadata, or None."""
        arch = self.architecture
        return None if arch is None else self.metadata.get(f"{arch}.{key}")

    def arch_int(self, key: str) -> int | None:
        value = self.arch_value(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def arch_int_or_list(self, key: str) -> int | tuple[int, ...] | None:
        """A value that is one integer, or one per layer (e.g. head_count_kv of some models)."""
        value = self.arch_value(key)
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                           for v in value):
            return tuple(value)
        return None

    # -- the hyperparameters fit needs ------------------------------------------------------
    @property
    def block_count(self) -> int | None:
        return self.arch_int("block_count")

    @property
    def context_length(self) -> int | None:
        return self.arch_int("context_length")

    @property
    def embedding_length(self) -> int | None:
        return self.arch_int("embedding_length")

    @property
    def head_count(self) -> int | tuple[int, ...] | None:
        return self.arch_int_or_list("attention.head_count")

    @property
    def head_count_kv(self) -> int | tuple[int, ...] | None:
        return self.arch_int_or_list("attention.head_count_kv")

    @property
    def key_length(self) -> int | None:
        return self.arch_int("attention.key_length")

    @property
    def value_length(self) -> int | None:
        return self.arch_int("attention.value_length")

    @property
    def key_length_swa(self) -> int | None:
        return self.arch_int("attention.key_length_swa")

    @property
    def value_length_swa(self) -> int | None:
        return self.arch_int("attention.value_length_swa")

    @property
    def sliding_window(self) -> int | None:
        return self.arch_int("attention.sliding_window")

    @property
    def sliding_window_pattern(self) -> int | tuple[bool, ...] | None:
        """A period (every Nth layer is full attention) or one flag per layer (True = SWA)."""
        value = self.arch_value("attention.sliding_window_pattern")
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, list) and all(isinstance(v, bool) for v in value):
            return tuple(value)
        return None

    @property
    def vocab_size(self) -> int | None:
        explicit = self.arch_int("vocab_size")
        if explicit:
            return explicit
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokens, ArraySummary):
            return tokens.length
        if isinstance(tokens, list):
            return len(tokens)
        for tensor in self.tensors:
            if tensor.name in ("token_embd.weight", "output.weight") and len(tensor.shape) == 2:
                return tensor.shape[1]
        return None


# -- parsing ------------------------------------------------------------------------------------

class _Cursor:
    """Sequential reads over a source, buffered in growing chunks, bounded in total."""

    def __init__(self, source: ByteSource, limits: GgufLimits) -> None:
        self.source = source
        self.limits = limits
        self.pos = 0
        self._buf = b""
        self._buf_start = 0
        self._next_read = limits.first_read

    def take(self, size: int, what: str) -> bytes:
        end = self.pos + size
        if end > self.limits.max_header_bytes:
            raise GgufLimitError(f"GGUF header is larger than {self.limits.max_header_bytes} "
                                 f"bytes (reading {what} at offset {self.pos})")
        buf_end = self._buf_start + len(self._buf)
        if not (self._buf_start <= self.pos and end <= buf_end):
            self._fill(size, what)
        start = self.pos - self._buf_start
        self.pos = end
        return self._buf[start:start + size]

    def skip(self, size: int, what: str) -> None:
        """Move past ``size`` bytes; they are read (or found missing) only if needed later."""
        end = self.pos + size
        if end > self.limits.max_header_bytes:
            raise GgufLimitError(f"GGUF header is larger than {self.limits.max_header_bytes} "
                                 f"bytes (skipping {what} at offset {self.pos})")
        self.pos = end

    def check_reached(self, what: str) -> None:
        """Confirm the source really extends to the current position (skips read nothing)."""
        beyond = self.pos > self._buf_start + len(self._buf)
        if self.pos and beyond and len(self.source.read(self.pos - 1, 1)) != 1:
            raise GgufTruncatedError(f"GGUF header is truncated: file ends before byte "
                                         f"{self.pos} ({what})")

    def _fill(self, size: int, what: str) -> None:
        want = min(max(size, self._next_read), self.limits.max_header_bytes - self.pos)
        self._next_read = min(self._next_read * 2, self.limits.max_read)
        data = self.source.read(self.pos, want)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise GgufSourceError("byte source returned something other than bytes")
        if len(data) < size:
            raise GgufTruncatedError(f"GGUF header is truncated: file ends at byte "
                                     f"{self.pos + len(data)} while reading {what}")
        self._buf = bytes(data[:want])
        self._buf_start = self.pos

    def unpack(self, fmt: str, what: str) -> Any:
        st = _STRUCTS[fmt]
        return st.unpack(self.take(st.size, what))[0]

    def string(self, max_len: int, what: str) -> bytes:
        length = self.unpack("Q", f"length of {what}")
        if length > max_len:
            raise GgufLimitError(f"GGUF {what} claims {length} bytes (limit {max_len})")
        return self.take(length, what)


def read_header(source: ByteSource, limits: GgufLimits = DEFAULT_LIMITS) -> GgufHeader:
    """Parse the header at the start of ``source``; raise a GgufError subclass when it is bad."""
    cur = _Cursor(source, limits)
    magic = cur.take(4, "magic")
    if magic != MAGIC:
        raise GgufError(f"not a GGUF file: magic is {magic!r}, expected {MAGIC!r}")
    version = cur.unpack("I", "version")
    if version not in SUPPORTED_VERSIONS:
        if version == 1:
            raise GgufError("GGUF version 1 is not supported (llama.cpp dropped it); "
                            "convert the model again")
        if version & 0xFFFF == 0 and version >> 16:
            raise GgufError("big-endian GGUF files are not supported")
        raise GgufError(f"unknown GGUF version {version} (supported: 2, 3)")
    n_tensors = cur.unpack("Q", "tensor count")
    if n_tensors > limits.max_tensors:
        raise GgufLimitError(f"GGUF header claims {n_tensors} tensors (limit {limits.max_tensors})")
    n_kv = cur.unpack("Q", "metadata count")
    if n_kv > limits.max_kv:
        raise GgufLimitError(f"GGUF header claims {n_kv} metadata entries (limit {limits.max_kv})")

    metadata: dict[str, Any] = {}
    for index in range(n_kv):
        raw_key = cur.string(limits.max_key_len, f"key of metadata entry {index}")
        try:
            key = raw_key.decode("utf-8")
        except UnicodeDecodeError:
            raise GgufError(f"GGUF metadata entry {index} has a key that is not UTF-8") from None
        if key in metadata:
            raise GgufError(f"GGUF metadata key {key!r} appears twice")
        value_type = cur.unpack("I", f"type of {key!r}")
        metadata[key] = _read_value(cur, value_type, key, depth=0)

    alignment = _alignment(metadata)
    tensors: list[TensorInfo] = []
    names: set[str] = set()
    for index in range(n_tensors):
        tensor = _read_tensor_info(cur, index, alignment)
        if tensor.name in names:
            raise GgufError(f"GGUF tensor {tensor.name!r} appears twice")
        names.add(tensor.name)
        tensors.append(tensor)
    cur.check_reached("end of header")
    data_offset = -(-cur.pos // alignment) * alignment
    return GgufHeader(version=version, metadata=metadata, tensors=tuple(tensors),
                      alignment=alignment, data_offset=data_offset, header_size=cur.pos)


def _read_value(cur: _Cursor, value_type: int, key: str, depth: int) -> Any:
    limits = cur.limits
    if value_type in _SCALAR_FORMATS:
        return cur.unpack(_SCALAR_FORMATS[value_type], f"value of {key!r}")
    if value_type == _STRING:
        return cur.string(limits.max_string_len, f"string value of {key!r}").decode(
            "utf-8", errors="replace")
    if value_type != _ARRAY:
        raise GgufError(f"GGUF metadata {key!r} has unknown value type {value_type}")
    if depth >= limits.max_array_depth:
        raise GgufLimitError(f"GGUF metadata {key!r} nests arrays deeper than "
                             f"{limits.max_array_depth}")
    element_type = cur.unpack("I", f"element type of {key!r}")
    length = cur.unpack("Q", f"length of {key!r}")
    if length > limits.max_array_len:
        raise GgufLimitError(f"GGUF metadata {key!r} claims {length} elements "
                             f"(limit {limits.max_array_len})")
    keep = length <= limits.keep_array_len
    if element_type in _SCALAR_FORMATS:
        st = _STRUCTS[_SCALAR_FORMATS[element_type]]
        if not keep:
            # Fixed-size elements: jump over them; the cursor's total bound still applies.
            cur.skip(st.size * length, f"array {key!r}")
            return ArraySummary(_TYPE_NAMES[element_type], length)
        data = cur.take(st.size * length, f"array {key!r}")
        return [v[0] for v in st.iter_unpack(data)]
    if element_type == _STRING:
        values: list[str] = []
        for i in range(length):
            raw = cur.string(limits.max_string_len, f"element {i} of {key!r}")
            if keep:
                values.append(raw.decode("utf-8", errors="replace"))
        return values if keep else ArraySummary("string", length)
    if element_type == _ARRAY:
        for _ in range(length):
            _read_value(cur, _ARRAY, key, depth + 1)
        return ArraySummary("array", length)
    raise GgufError(f"GGUF metadata {key!r} is an array of unknown type {element_type}")


def _alignment(metadata: Mapping[str, Any]) -> int:
    value = metadata.get("general.alignment", 32)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 \
            or value & (value - 1) or value > 1 << 30:
        raise GgufError(f"GGUF general.alignment must be a power of two, got {value!r}")
    return value


def _read_tensor_info(cur: _Cursor, index: int, alignment: int) -> TensorInfo:
    limits = cur.limits
    raw = cur.string(limits.max_tensor_name_len, f"name of tensor {index}")
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise GgufError(f"GGUF tensor {index} has a name that is not UTF-8") from None
    n_dims = cur.unpack("I", f"dimension count of {name!r}")
    if not 1 <= n_dims <= 4:
        raise GgufError(f"GGUF tensor {name!r} has {n_dims} dimensions (ggml allows 1 to 4)")
    shape = struct.unpack(f"<{n_dims}Q", cur.take(8 * n_dims, f"shape of {name!r}"))
    elements = 1
    for dim in shape:
        elements *= dim
    if elements >= 1 << 62:
        raise GgufLimitError(f"GGUF tensor {name!r} claims {elements} elements")
    ggml_type = cur.unpack("I", f"type of {name!r}")
    try:
        block, _ = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise GgufError(f"GGUF tensor {name!r} has unknown ggml type {ggml_type}") from None
    if shape[0] % block:
        raise GgufError(f"GGUF tensor {name!r}: row length {shape[0]} is not a multiple of "
                        f"the {GGMLQuantizationType(ggml_type).name} block size {block}")
    offset = cur.unpack("Q", f"offset of {name!r}")
    if offset % alignment:
        raise GgufError(f"GGUF tensor {name!r}: offset {offset} is not aligned to {alignment}")
    if offset >= 1 << 62:
        raise GgufLimitError(f"GGUF tensor {name!r}: offset {offset} is beyond any real file")
    return TensorInfo(name=name, shape=tuple(shape), ggml_type=ggml_type, offset=offset)


def merge_split_headers(headers: list[GgufHeader]) -> GgufHeader:
    """One header for a split model: the first shard's metadata, every shard's tensors."""
    if not headers:
        raise GgufError("no GGUF headers to merge")
    first = headers[0]
    expected = first.split_count
    if len(headers) != expected:
        raise GgufError(f"split GGUF has {expected} parts, got {len(headers)}")
    tensors: list[TensorInfo] = []
    seen: set[str] = set()
    for header in headers:
        for tensor in header.tensors:
            if tensor.name in seen:
                raise GgufError(f"split GGUF: tensor {tensor.name!r} appears in two parts")
            seen.add(tensor.name)
            tensors.append(tensor)
    return GgufHeader(version=first.version, metadata=first.metadata, tensors=tuple(tensors),
                      alignment=first.alignment, data_offset=first.data_offset,
                      files=len(headers), header_size=first.header_size)


# -- sources ------------------------------------------------------------------------------------

class BytesSource:
    """An in-memory source (tests, fuzzing)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset:offset + size]


class FileSource:
    """A local file, read with pread so no file position is shared."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise GgufSourceError(f"cannot open {self.path}: {exc.strerror}") from None

    def read(self, offset: int, size: int) -> bytes:
        try:
            return os.pread(self._fd, size, offset)
        except OSError as exc:
            raise GgufSourceError(f"cannot read {self.path}: {exc.strerror}") from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_file_header(path: Path | str, limits: GgufLimits = DEFAULT_LIMITS) -> GgufHeader:
    """The header of a local GGUF file; a directory or missing file is a GgufSourceError."""
    path = Path(path)
    if path.is_dir():
        raise GgufSourceError(f"{path} is a directory, not a GGUF file")
    with FileSource(path) as source:
        return read_header(source, limits)


class RangeSource:
    """A remote file read with HTTP Range requests: only the bytes asked for are fetched.

    ``bytes_fetched`` counts the body bytes received, so callers (and tests) can see that a
    header read stays at a few megabytes. A server that ignores Range and answers 200 is read
    only up to the requested size, then the connection is dropped.
    """

    def __init__(self, url: str, *, token: str | None = None, client: Any = None,
                 timeout: float = 30.0) -> None:
        import httpx

        self.url = url
        self.bytes_fetched = 0
        self.requests = 0
        self._own_client = client is None
        self._client = client if client is not None else httpx.Client(
            follow_redirects=True, timeout=timeout)
        # httpx drops Authorization on a redirect to another host (the hub's CDN), as it must.
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def read(self, offset: int, size: int) -> bytes:
        import httpx

        if size <= 0:
            return b""
        headers = {**self._headers, "Range": f"bytes={offset}-{offset + size - 1}",
                   "Accept-Encoding": "identity"}
        self.requests += 1
        try:
            with self._client.stream("GET", self.url, headers=headers) as response:
                status = response.status_code
                if status == 416:
                    return b""
                if status in (401, 403):
                    from hlctl.models.hub import GATED_MESSAGE

                    raise GgufSourceError(f"HTTP {status} for {self.url}: {GATED_MESSAGE}")
                if status == 404:
                    raise GgufSourceError(f"HTTP 404: {self.url} was not found")
                if status not in (200, 206):
                    raise GgufSourceError(f"HTTP {status} reading the GGUF header from {self.url}")
                if status == 200 and offset > 0:
                    raise GgufSourceError(f"{self.url} ignores HTTP Range requests; cannot read "
                                          "the header without downloading the whole file")
                content_range = response.headers.get("Content-Range", "")
                if status == 206 and content_range and not content_range.startswith(
                        f"bytes {offset}-"):
                    raise GgufSourceError(f"{self.url} answered range {offset}- with "
                                          f"{content_range[:80]!r}")
                return self._read_body(response, size)
        except httpx.HTTPError as exc:
            raise GgufSourceError(f"cannot read {self.url}: {type(exc).__name__}: {exc}") from None

    def _read_body(self, response: Any, size: int) -> bytes:
        parts: list[bytes] = []
        have = 0
        for chunk in response.iter_raw():
            take = chunk[: size - have]
            parts.append(take)
            have += len(take)
            self.bytes_fetched += len(chunk)
            if have >= size:
                break  # leaving the stream early closes the connection: no more body is read
        return b"".join(parts)

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def __enter__(self) -> RangeSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SHARD_NAME = re.compile(r"^(?P<base>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")


def read_model_header(path: Path | str, limits: GgufLimits = DEFAULT_LIMITS) -> GgufHeader:
    """The header of a local model; for one shard of a split model, all shards merged."""
    path = Path(path)
    match = _SHARD_NAME.match(path.name)
    if match is None or int(match["count"]) == 1:
        return read_file_header(path, limits)
    count = int(match["count"])
    parts = [path.with_name(f"{match['base']}-{i:05d}-of-{count:05d}.gguf")
             for i in range(1, count + 1)]
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise GgufSourceError(f"split model {match['base']}: missing part(s) "
                              f"{', '.join(missing)} next to {path.name}")
    return merge_split_headers([read_file_header(p, limits) for p in parts])


def read_remote_header(urls: list[str], *, token: str | None = None, client: Any = None,
                       limits: GgufLimits = DEFAULT_LIMITS) -> tuple[GgufHeader, int]:
    """The header of a remote model (all parts of a split one) and the bytes fetched for it."""
    headers = []
    fetched = 0
    for url in urls:
        with RangeSource(url, token=token, client=client) as source:
            headers.append(read_header(source, limits))
            fetched += source.bytes_fetched
    header = headers[0] if len(headers) == 1 else merge_split_headers(headers)
    return header, fetched
