"""The sparse GGUF header walk: a header read from a random-access byte source (source.py) with few bytes.

A 512 KiB prefix first, which holds the whole header of most small models. A bigger header is walked with sparse
reads: the contents of arrays the reader summarises anyway (more than MAX_KEPT_ARRAY elements: scores, token
types, and - found by probing where the string chain ends instead of reading it - vocabularies and merges) are
skipped, so a 262k-token vocabulary costs ~1-2 MB instead of ~16 MB. Skipped arrays are rebuilt as same-length
filler, so every offset, size and count gpcrun reports is exact; the result is accepted only if it parses and
reconciles with the file size, else the header is read in full (growing the prefix geometrically; the source
caps what it reads). Parsing is reader.py's: this module only finds which bytes to read.
"""
from __future__ import annotations

import struct

from ..errors import GGUFError
from .ggml import GGML_MAX_DIMS, GGUF_MAGIC, SUPPORTED_VERSIONS
from .ggml import FIXED_SIZES as _FIXED
from .ggml import GGUF_ARRAY as _ARRAY
from .ggml import GGUF_STRING as _STRING
from .probe import SkipContext, find_strings_end
from .reader import MAX_KEPT_ARRAY, HeaderIncomplete, parse_header_bytes
from .source import KIB, ByteSource, WalkFailed
from .source import u32 as _u32
from .source import u64 as _u64

INITIAL_READ = 512 * KIB  # first range: the whole header of most small models
SKIP_MIN_BYTES = 512 * KIB  # probe for the end of a summarised string array when 8*count (its least size) is this big


def _walk_strings(src: ByteSource, pos: int, count: int, size: int) -> int:
    """Offset after `count` strings from pos, reading them (geometric readahead)."""
    unpack = struct.Struct("<Q").unpack_from
    while count:
        src.ensure(pos, 8)
        s0, data = src.segment(pos)
        p, lim = pos - s0, len(data)
        while count and p + 8 <= lim:
            n = unpack(data, p)[0]
            if p + 8 + n > lim:
                break
            p += 8 + n
            count -= 1
        pos = s0 + p
        if count:
            n = _u64(src, pos)
            if pos + 8 + n > size:
                raise WalkFailed("string past the end of the file")
            src.ensure(pos, 8 + n)
    return pos


def _sparse_header(src: ByteSource) -> tuple[bytearray, bool]:
    """The header rebuilt from sparse reads: real bytes, except summarised arrays' contents (filler of the
    same length). Returns (header, skipped_any). Raises WalkFailed when the walk cannot go on."""
    size = src.size
    head = src.read(0, 24)
    if head[:4] != GGUF_MAGIC:
        raise WalkFailed("bad magic")
    version = struct.unpack_from("<I", head, 4)[0]
    if version & 0xFFFF == 0 or version not in SUPPORTED_VERSIONS:
        raise WalkFailed("big-endian or unsupported version")  # the full read handles (and reports) these
    tensor_count, kv_count = struct.unpack_from("<QQ", head, 8)
    if kv_count > size // 13 or tensor_count > size // 24:
        raise WalkFailed("absurd counts")
    pos, alignment = 24, 32
    fills: list[tuple[int, int, str, int]] = []
    seen: set = set()

    def rd_str(p: int) -> tuple[bytes, int]:
        n = _u64(src, p)
        if p + 8 + n > size:
            raise WalkFailed("string past the end")
        return src.read(p + 8, n), p + 8 + n

    for i in range(kv_count):
        key, pos = rd_str(pos)
        seen.add(key.decode("utf-8", errors="replace"))
        vtype = _u32(src, pos)
        pos += 4
        if vtype in _FIXED:
            v = src.read(pos, _FIXED[vtype])
            if key == b"general.alignment" and vtype == 4:
                alignment = struct.unpack("<I", v)[0] or 32
            pos += _FIXED[vtype]
        elif vtype == _STRING:
            _, pos = rd_str(pos)
        elif vtype == _ARRAY:
            etype, count = struct.unpack("<IQ", src.read(pos, 12))
            pos += 12
            if etype in _FIXED:
                nbytes = count * _FIXED[etype]
                if pos + nbytes > size:
                    raise WalkFailed("array past the end")
                if count <= MAX_KEPT_ARRAY:
                    src.ensure(pos, nbytes)
                else:
                    fills.append((pos, nbytes, "fixed", count))
                pos += nbytes
            elif etype == _STRING:
                if count > (size - pos) // 8:
                    raise WalkFailed("string array past the end")
                if count <= MAX_KEPT_ARRAY:
                    pos = _walk_strings(src, pos, count, size)
                else:
                    end = None
                    if 8 * count >= SKIP_MIN_BYTES:
                        end = find_strings_end(src, pos, count, SkipContext(size, kv_count - i - 1, tensor_count, seen))
                    if end is None:
                        end = _walk_strings(src, pos, count, size)
                    fills.append((pos, end - pos, "strings", count))
                    pos = end
            else:
                raise WalkFailed("unsupported array type")
        else:
            raise WalkFailed("unknown value type")
    if alignment & (alignment - 1):
        raise WalkFailed("odd alignment")
    for _ in range(tensor_count):
        _, pos = rd_str(pos)
        n_dims = _u32(src, pos)
        if n_dims > GGML_MAX_DIMS:
            raise WalkFailed("n_dims")
        src.ensure(pos, 4 + 8 * n_dims + 12)
        pos += 4 + 8 * n_dims + 12
    data_start = pos + (-pos % alignment)
    hlen = data_start if tensor_count else min(data_start, size)
    if hlen > size:
        raise WalkFailed("header past the end")
    src.ensure(pos, hlen - pos)  # alignment padding
    buf = bytearray(hlen)
    for s0, chunk in zip(src.starts, src.chunks):
        if s0 < hlen:
            n = min(len(chunk), hlen - s0)
            buf[s0:s0 + n] = chunk[:n]
    for start, nbytes, kind, count in fills:
        buf[start:start + nbytes] = _filler(nbytes, kind, count)
    return buf, bool(fills)


def _filler(nbytes: int, kind: str, count: int) -> bytes:
    """Same-length stand-in for a summarised array's contents: zeros, or `count` equal strings of 'x'."""
    if kind == "fixed":
        return bytes(nbytes)
    q, r = divmod(nbytes - 8 * count, count)
    one = struct.pack("<Q", q) + b"x" * q
    return one * (count - 1) + struct.pack("<Q", q + r) + b"x" * (q + r)


def read_header(src: ByteSource, display: str, shard: int) -> tuple[bytes, tuple, bool]:
    """(header bytes, parsed part, synthetic) for one GGUF file: the first INITIAL_READ bytes, then the sparse
    walk, then the full prefix. GGUFError for a bad header; WalkFailed when the source answers oddly."""
    src.fetch(0, INITIAL_READ)
    size = src.size
    if not src.starts:
        raise GGUFError(display, "empty file, not a GGUF file")
    s0, data = src.segment(0)
    try:
        part = parse_header_bytes(bytes(data), size, display, shard)
        return _prefix(src, part[2].header_bytes), part, False
    except HeaderIncomplete:
        pass
    version = struct.unpack_from("<I", data, 4)[0] if len(data) >= 8 else 0
    if version & 0xFFFF == 0 and version:
        version = struct.unpack_from(">I", data, 4)[0]
    # not GGUF at all (an error page, an LFS pointer...):
    if data[:4] != GGUF_MAGIC or version not in SUPPORTED_VERSIONS:
        parse_header_bytes(bytes(data), len(data), display, shard)  # raises the reader's own error, now
        raise GGUFError(display, "not a GGUF file")
    if src.ranges:
        try:
            buf, synthetic = _sparse_header(src)
            part = parse_header_bytes(bytes(buf), size, display, shard)
            if part[2].reconciled and part[2].header_bytes == len(buf):
                return bytes(buf), part, synthetic
        except (WalkFailed, GGUFError, KeyError, struct.error):
            pass
    # In full: grow the prefix geometrically (keeping what was read) until the header parses.
    n = INITIAL_READ
    while True:
        n = min(n * 2, size)
        if src.ranges:
            src.ensure(0, n)
        else:
            _prefix(src, n)
        data = src.segment(0)[1]
        try:
            part = parse_header_bytes(bytes(data[:n]), size, display, shard)
            return _prefix(src, part[2].header_bytes), part, False
        except HeaderIncomplete:
            if n >= size:
                raise


def _prefix(src: ByteSource, n: int) -> bytes:
    """The first n bytes of the file (a fresh read from byte 0 when the source ignores ranges: a GET)."""
    data = src.segment(0)[1]
    if len(data) >= n:
        return bytes(data[:n])
    if src.ranges:
        return src.read(0, n)
    src.starts, src.chunks = [], []
    src.fetch(0, n)
    return bytes(src.segment(0)[1][:n])
