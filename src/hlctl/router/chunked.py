"""HTTP/1.1 chunked transfer coding: the router's server reads request bodies with it, and
its upstream client reads llama-server's streamed answers.

Each ``feed`` takes whatever a read brought, decodes what is complete and keeps the rest.
A read made of whole chunks (a stream's usual read) is decoded with C-speed splits; anything
else step by step. Framing is strict (hex digits only in sizes, CRLF after each chunk): a
lenient parser is how two parsers on one path come to disagree.
"""

from __future__ import annotations


class BadChunkedFraming(ConnectionError):
    """The chunked framing is broken: from an upstream, a failed answer; from a client, a 400."""


class ChunkedDecoder:
    """Undo HTTP/1.1 chunked framing, whatever the reads' boundaries."""

    def __init__(self) -> None:
        self.left = 0  # payload bytes still to come in the current chunk
        self.crlf = False  # the CRLF after a chunk's payload is still to come
        self.trailer = False  # past the last (empty) chunk: reading trailer lines
        self.pending = b""  # an incomplete size or trailer line
        self.done = False
        self.extra = b""  # bytes after the end of the body (a protocol error upstream)

    def feed(self, data: bytes) -> bytes:
        if self.pending:
            data = self.pending + data
            self.pending = b""
        elif not (self.left or self.crlf or self.trailer) and data.endswith(b"\r\n"):
            whole = _whole_chunks(data)
            if whole is not None:
                payload, self.done = whole
                return payload
        out: list[bytes] = []
        pos, end = 0, len(data)
        find = data.find
        while pos < end:
            if self.left:  # the rest of a chunk split across reads
                stop = min(end, pos + self.left)
                out.append(data[pos:stop])
                self.left -= stop - pos
                pos = stop
                self.crlf = self.left == 0
                continue
            if self.crlf:
                if end - pos < 2:
                    self.pending = data[pos:]
                    break
                if not data.startswith(b"\r\n", pos):
                    raise BadChunkedFraming("bad chunked framing")
                pos += 2
                self.crlf = False
                continue
            eol = find(b"\r\n", pos)
            if eol < 0:
                if end - pos > 4096:
                    raise BadChunkedFraming("bad chunked framing")
                self.pending = data[pos:]
                break
            if self.trailer:
                if eol == pos:
                    self.done = True
                    self.extra = data[pos + 2:]
                    break
                pos = eol + 2
                continue  # a trailer field: nothing the router needs
            size = _chunk_size(data[pos:eol])
            pos = eol + 2
            if size <= 0:
                if size < 0:
                    raise BadChunkedFraming("bad chunk size")
                self.trailer = True
                continue
            stop = pos + size
            if stop + 2 <= end:  # the usual case: the whole chunk and its CRLF are here
                if not data.startswith(b"\r\n", stop):
                    raise BadChunkedFraming("bad chunked framing")
                out.append(data[pos:stop])
                pos = stop + 2
            else:
                self.left = size
        return out[0] if len(out) == 1 else b"".join(out)


_HEX_DIGITS = b"0123456789abcdefABCDEF"


def _whole_chunks(data: bytes) -> tuple[bytes, bool] | None:
    """Decode reads made of whole chunks with C-speed splits (a stream's usual reads).

    The CRLFs split ``data`` into size lines and payloads; that is the framing only if
    every payload's length is the size before it (a payload holding a CRLF fails that
    check, from the first chunk on, and leaves the exact decoder to it). Returns the
    payload and whether the last chunk came, or None to decode step by step.
    """
    parts = data[:-2].split(b"\r\n")
    if len(parts) % 2:
        return None
    sizes = parts[0::2]
    payloads = parts[1::2]
    if b"".join(sizes).translate(None, _HEX_DIGITS):
        return None  # not plain hex digits: the exact decoder says what is wrong
    try:
        lengths = [int(size, 16) for size in sizes]
    except ValueError:  # an extension (1a;name=value) or not a size at all
        return None
    if lengths != list(map(len, payloads)):
        return None
    if 0 in lengths:
        # The last chunk: allowed only at the very end, and without trailers.
        if lengths[-1] != 0 or lengths.count(0) != 1:
            return None
        return b"".join(payloads), True
    return b"".join(payloads), False


def _chunk_size(line: bytes) -> int:
    """A chunk-size line, extensions (``1a;name=value``) ignored. Hex digits only: int()
    would also take a sign, spaces and underscores ("+5", " 5", "1_0"), which another HTTP
    parser on the path could read differently (request smuggling)."""
    digits = line.split(b";", 1)[0] if b";" in line else line
    if not digits or len(digits) > 16 or digits.translate(None, _HEX_DIGITS):
        raise BadChunkedFraming("bad chunk size")
    return int(digits, 16)
