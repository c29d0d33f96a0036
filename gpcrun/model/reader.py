"""The binary GGUF reader: header (metadata KVs, tensor infos) -> parsed parts, never tensor data.

Large string arrays (vocabularies, merges) are skipped without building per-element Python objects:
gguf.GGUFReader took 27 s on llama.cpp's ggml-vocab-gemma-4.gguf here (issue 2); see
scripts/bench/inspect_speed.py. Reads a local file (mmap) or a prefix of one (parse_header_bytes: hub range
reads); shards.py assembles the parts into a ModelInfo.
"""
from __future__ import annotations

import mmap
import os
import stat
import struct
import sys
from pathlib import Path

from ..errors import GGUFError, ModelFileError
from .ggml import (GGML_MAX_DIMS, GGML_QUANT_SIZES, GGML_TYPE_NAMES, GGUF_MAGIC, INT64_MAX, SUPPORTED_VERSIONS,
                   VALUE_TYPE_NAMES)
from .ggml import GGUF_ARRAY as _ARRAY
from .ggml import GGUF_STRING as _STRING
from .ggml import SCALAR_FORMATS as _SCALAR
from .info import _LAYER_RE, KVField, ShardInfo, TensorInfo, tensor_role

# Arrays longer than this are summarised (type + count), not decoded: vocabularies, scores, merges.
MAX_KEPT_ARRAY = 1024
_FAST_SKIP_MIN = 2048  # below this, a plain loop beats numpy's fixed costs
# The plain loop walks ~13 M strings/s here and importing numpy costs 60-100 ms: only a very long array pays
# for the import (gemma-4's 777k strings: loop 61 ms, numpy 13 ms + import); inspect_speed.py measures both.
_IMPORT_NUMPY_MIN = 1_000_000


class _Header:
    __slots__ = ("version", "byte_order", "metadata", "raw_tensors", "alignment", "data_start", "kv_count",
                 "tensor_count")


def _skip_strings_py(buf, pos: int, count: int, end: int, path: str, unpack_u64) -> int:
    for _ in range(count):
        if pos + 8 > end:
            raise GGUFError(path, "truncated inside a string array", pos)
        n = unpack_u64(buf, pos)[0]
        pos += 8 + n
        if pos > end:
            raise GGUFError(path, f"string length {n} runs past end of file", pos - n - 8)
    return pos


def _skip_strings_fast(buf, pos: int, count: int, end: int, path: str, unpack_u64) -> int:
    """Offset after `count` GGUF strings starting at `pos`, little-endian only; exact, like _skip_strings_py.

    Candidates are offsets whose u64 length is < 256 (seven zero bytes follow the low one): in vocabularies
    nearly every candidate is a true boundary and nearly every boundary a candidate. From `pos` the chain is
    followed exactly: a run of candidates each ending where the next begins (cand + 8 + len == next cand)
    is taken in bulk, a boundary that is no candidate (a string of 256+ bytes) is stepped over with struct,
    and the window's end rescans from the last boundary. Data that defeats this falls back to the plain loop.
    """
    import numpy as np

    if count < 512:
        return _skip_strings_py(buf, pos, count, end, path, unpack_u64)
    probe = 256  # the first strings give the mean length that sizes the scan window
    p0 = pos
    pos = _skip_strings_py(buf, pos, probe, end, path, unpack_u64)
    count -= probe
    per = (pos - p0) / probe
    arr = np.frombuffer(buf, dtype=np.uint8)
    windows = 0
    while count > 0:
        hi = min(end, pos + int(count * per * 1.05) + 4096)
        n = hi - pos
        if count < 256 or n < 64 or windows > 32:
            return _skip_strings_py(buf, pos, count, end, path, unpack_u64)
        windows += 1
        z = np.equal(arr[pos:hi], 0)
        np.logical_and(z[:-1], z[1:], out=z[:-1])  # z[i]: bytes i, i+1 zero
        np.logical_and(z[:-3], z[2:-1], out=z[:-3])  # bytes i..i+3
        np.logical_and(z[:-6], z[3:-3], out=z[:-6])  # bytes i..i+6
        cand = np.flatnonzero(z[1:n - 6])  # p <= n - 8 whose bytes p+1..p+7 are zero
        del z
        nxt = cand + 8 + arr[pos:hi][cand]
        breaks = np.flatnonzero(cand[1:] != nxt[:-1])  # run ends
        last = cand.size - 1
        b = 0  # the current true boundary, relative to pos
        covered = stepped = lookups = 0
        while True:
            k = int(np.searchsorted(cand, b))
            lookups += 1
            if k <= last and int(cand[k]) == b:
                t = int(np.searchsorted(breaks, k))
                j = int(breaks[t]) if t < breaks.size else last
                run = j - k + 1
                if run >= count:
                    new_pos = pos + int(nxt[k + count - 1])
                    if new_pos > end:
                        raise GGUFError(path, "string array runs past end of file", pos + int(cand[k + count - 1]))
                    return new_pos
                count -= run
                covered += run
                b = int(nxt[j])
            elif b + 8 <= n:  # a string of 256+ bytes: read its length
                ln = unpack_u64(buf, pos + b)[0]
                b += 8 + ln
                count -= 1
                stepped += 1
                if pos + b > end:
                    raise GGUFError(path, f"string length {ln} runs past end of file", pos + b - ln - 8)
                if count == 0:
                    return pos + b
            else:
                break  # past the window: scan the next one from here
            if lookups > 256 and covered < 16 * lookups:  # long strings or zero-filled data: the loop is cheaper
                return _skip_strings_py(buf, pos + b, count, end, path, unpack_u64)
        if pos + b > end:
            raise GGUFError(path, "string array runs past end of file", pos + b)
        if covered + stepped:
            per = b / (covered + stepped)
        pos += b
    return pos


def _parse(buf, size: int, path: str, skips: dict | None = None) -> _Header:
    if size < 4 or buf[0:4] != GGUF_MAGIC:
        raise GGUFError(path, "not a GGUF file (bad magic)")
    if size < 24:
        raise GGUFError(path, "truncated GGUF header", 0)
    version = struct.unpack_from("<I", buf, 4)[0]
    bo = "<"
    if version & 0xFFFF == 0 and version != 0:  # written on a big-endian host
        bo = ">"
        version = struct.unpack_from(">I", buf, 4)[0]
    if version not in SUPPORTED_VERSIONS:
        raise GGUFError(path, f"unsupported GGUF version {version} (supported: 2, 3)")
    u32 = struct.Struct(bo + "I").unpack_from
    u64 = struct.Struct(bo + "Q").unpack_from
    tensor_count, kv_count = struct.unpack_from(bo + "QQ", buf, 8)
    pos = 24
    # Each KV needs >= 13 bytes (key length, type, 1-byte value); each tensor info >= 24 bytes.
    if kv_count > (size - pos) // 13:
        raise GGUFError(path, f"KV count {kv_count} cannot fit in a {size}-byte file", 16)
    if tensor_count > (size - pos) // 24:
        raise GGUFError(path, f"tensor count {tensor_count} cannot fit in a {size}-byte file", 8)

    def read_str(p: int) -> tuple[str, int]:
        if p + 8 > size:
            raise GGUFError(path, "truncated (string length)", p)
        n = u64(buf, p)[0]
        p += 8
        if n > size - p:
            raise GGUFError(path, f"string length {n} runs past end of file", p - 8)
        return bytes(buf[p:p + n]).decode("utf-8", errors="replace"), p + n

    metadata: dict[str, KVField] = {}
    for _ in range(kv_count):
        kpos = pos
        key, pos = read_str(pos)
        if pos + 4 > size:
            raise GGUFError(path, f"truncated at key {key!r}", pos)
        vtype = u32(buf, pos)[0]
        pos += 4
        if key in metadata:
            raise GGUFError(path, f"duplicate key {key!r}", kpos)
        if vtype in _SCALAR:
            code, sz = _SCALAR[vtype]
            if pos + sz > size:
                raise GGUFError(path, f"truncated at key {key!r}", pos)
            val = struct.unpack_from(bo + code, buf, pos)[0]
            pos += sz
            metadata[key] = KVField(VALUE_TYPE_NAMES[vtype], val)
        elif vtype == _STRING:
            val, pos = read_str(pos)
            metadata[key] = KVField("STRING", val)
        elif vtype == _ARRAY:
            if pos + 12 > size:
                raise GGUFError(path, f"truncated at key {key!r}", pos)
            etype = u32(buf, pos)[0]
            count = u64(buf, pos + 4)[0]
            pos += 12
            if etype in _SCALAR:
                code, sz = _SCALAR[etype]
                if count > (size - pos) // sz:
                    raise GGUFError(path, f"array {key!r} of {count} elements runs past end of file", pos)
                vals = struct.unpack_from(f"{bo}{count}{code}", buf, pos) if count <= MAX_KEPT_ARRAY else None
                pos += count * sz
            elif etype == _STRING:
                if count > (size - pos) // 8:
                    raise GGUFError(path, f"array {key!r} of {count} strings runs past end of file", pos)
                if count <= MAX_KEPT_ARRAY:
                    out = []
                    for _ in range(count):
                        s, pos = read_str(pos)
                        out.append(s)
                    vals = tuple(out)
                else:
                    vals = None
                    from .skip_cache import known_end, remember_end
                    end = known_end(skips, buf, pos, count, size)  # this file walked before, same bytes
                    if end is None:
                        fast = count >= _FAST_SKIP_MIN and bo == "<" and (
                            "numpy" in sys.modules or count >= _IMPORT_NUMPY_MIN)
                        skip = _skip_strings_fast if fast else _skip_strings_py
                        end = skip(buf, pos, count, size, path, u64)
                        remember_end(skips, buf, pos, end)
                    pos = end
            else:
                raise GGUFError(path, f"array {key!r} has unsupported element type {etype}", pos - 12)
            metadata[key] = KVField("ARRAY", vals, VALUE_TYPE_NAMES[etype], count)
        else:
            raise GGUFError(path, f"key {key!r} has unknown value type {vtype}", pos - 4)

    alignment = 32
    al = metadata.get("general.alignment")
    if al is not None:
        if al.type != "UINT32" or al.value == 0 or al.value & (al.value - 1):
            raise GGUFError(path, f"general.alignment must be a power-of-two UINT32, got {al.value!r}")
        alignment = al.value

    raw_tensors = []
    names = set()
    for _ in range(tensor_count):
        tpos = pos
        name, pos = read_str(pos)
        if pos + 4 > size:
            raise GGUFError(path, f"truncated at tensor {name!r}", pos)
        n_dims = u32(buf, pos)[0]
        pos += 4
        if n_dims > GGML_MAX_DIMS:
            raise GGUFError(path, f"tensor {name!r} has {n_dims} dims (max {GGML_MAX_DIMS})", pos - 4)
        if pos + 8 * n_dims + 12 > size:
            raise GGUFError(path, f"truncated at tensor {name!r}", pos)
        dims = struct.unpack_from(f"{bo}{n_dims}Q", buf, pos)
        pos += 8 * n_dims
        ttype = u32(buf, pos)[0]
        offset = u64(buf, pos + 4)[0]
        pos += 12
        if name in names:
            raise GGUFError(path, f"duplicate tensor {name!r}", tpos)
        names.add(name)
        raw_tensors.append((name, dims, ttype, offset, tpos))

    h = _Header()
    h.version = version
    h.byte_order = "big" if bo == ">" else "little"
    h.metadata = metadata
    h.raw_tensors = raw_tensors
    h.alignment = alignment
    h.data_start = pos + (-pos % alignment)
    h.kv_count = kv_count
    h.tensor_count = tensor_count
    return h


def _tensor_infos(h: _Header, size: int, path: str, shard: int) -> tuple[list[TensorInfo], ShardInfo]:
    infos = []
    for name, dims, ttype, offset, tpos in h.raw_tensors:
        if ttype not in GGML_QUANT_SIZES:
            raise GGUFError(path, f"tensor {name!r} has unknown ggml type {ttype}", tpos)
        block, tsize = GGML_QUANT_SIZES[ttype]
        n = 1
        for d in dims:
            n *= d
            if n > INT64_MAX or d > INT64_MAX:  # ggml stores ne as int64: a huge dim is invalid even beside a 0
                raise GGUFError(path, f"tensor {name!r} dims {list(dims)} overflow int64", tpos)
        ne0 = dims[0] if dims else 1  # ggml: missing dims are 1
        if ne0 % block:
            raise GGUFError(path, f"tensor {name!r}: first dim {ne0} is not a multiple of block size {block}"
                            f" of {GGML_TYPE_NAMES[ttype]}", tpos)
        nbytes = n // block * tsize
        if offset % h.alignment:
            raise GGUFError(path, f"tensor {name!r} offset {offset} is not aligned to {h.alignment}", tpos)
        if h.data_start + offset + nbytes > size:
            raise GGUFError(path, f"tensor {name!r} data runs past end of file (truncated?)", h.data_start + offset)
        m = _LAYER_RE.match(name)
        infos.append(TensorInfo(name, ttype, GGML_TYPE_NAMES[ttype], tuple(dims), n, nbytes, offset,
                                h.data_start + offset, shard, int(m.group(1)) if m else None, tensor_role(name)))
    tensor_bytes = sum(t.n_bytes for t in infos)
    # Reconcile: every gap between consecutive tensors, and the tail, is alignment padding.
    reconciled = True
    end = 0
    last = None
    for t in sorted(infos, key=lambda t: t.offset):
        gap = t.offset - end
        if gap < 0 and t.n_bytes:  # llama.cpp would read one tensor's bytes as another's
            raise GGUFError(path, f"tensor {t.name!r} (offset {t.offset}) overlaps tensor {last.name!r}"
                            f" ({last.offset} + {last.n_bytes} bytes)", h.data_start + t.offset)
        if gap < 0 or gap >= h.alignment:
            reconciled = False
        if t.n_bytes:
            last = t
        end = max(end, t.offset + t.n_bytes)
    data_end = h.data_start + end if infos else min(h.data_start, size)
    if not (0 <= size - data_end < h.alignment):
        reconciled = False
    padding = size - (h.data_start if infos else data_end) - tensor_bytes
    header_bytes = h.data_start if infos else data_end
    shard_info = ShardInfo(path, size, h.version, h.byte_order, h.alignment, header_bytes, tensor_bytes, padding,
                           h.tensor_count, h.kv_count, reconciled and header_bytes + tensor_bytes + padding == size)
    return infos, shard_info


def _read_file(path: str, shard: int) -> tuple[_Header, list[TensorInfo], ShardInfo]:
    p = Path(path)
    try:
        st = os.stat(p)
        if stat.S_ISDIR(st.st_mode):
            raise ModelFileError(path, "is a directory, not a GGUF file")
        if not stat.S_ISREG(st.st_mode):  # opening a FIFO blocks until a writer comes; a device never ends
            kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
            raise ModelFileError(path, f"is {kind}, not a regular file (llama.cpp maps the model from a file)")
        f = open(p, "rb")
    except FileNotFoundError:
        raise ModelFileError(path, "no such file") from None
    except PermissionError:
        raise ModelFileError(path, "permission denied") from None
    except OSError as e:
        raise ModelFileError(path, f"cannot open ({e.strerror or e})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise GGUFError(path, "empty file, not a GGUF file")
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # not mmap-able (pipe, special file): read it
            mm = f.read()
        from .skip_cache import load_skips, save_skips
        skips = load_skips(st)
        before = dict(skips) if skips is not None else None
        try:
            h = _parse(mm, len(mm), path, skips)
            infos, shard_info = _tensor_infos(h, len(mm), path, shard)
            if skips is not None and skips != before:
                save_skips(st, skips)
        finally:
            if isinstance(mm, mmap.mmap):
                try:
                    mm.close()
                except BufferError:  # a numpy view is still alive in a traceback; GC closes it
                    pass
    return h, infos, shard_info


class HeaderIncomplete(GGUFError):
    """The bytes given end inside the GGUF header: fetch more (hub range reads)."""


def parse_header_bytes(buf: bytes, file_size: int, path: str, shard: int = 0) -> tuple[dict, list, ShardInfo]:
    """Parse a header from the first len(buf) bytes of a file of file_size bytes (a ranged download).

    Tensor extents and the reconciliation are checked against file_size. HeaderIncomplete when buf is shorter
    than the file and ends inside the header."""
    try:
        h = _parse(buf, len(buf), path)
    except GGUFError as e:
        if len(buf) < file_size and not isinstance(e, HeaderIncomplete):
            raise HeaderIncomplete(path, f"the header extends past the first {len(buf)} bytes", e.offset) from None
        raise
    infos, shard_info = _tensor_infos(h, file_size, path, shard)
    return h.metadata, infos, shard_info
